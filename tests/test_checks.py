"""The repository's static checks (scripts/check: ruff format, ruff lint, mypy) are part of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_static_checks_pass() -> None:
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


@pytest.mark.slow
def test_not_slow_leaves_out_the_long_tests() -> None:
    # `pytest -m "not slow"` is the fast loop: the tests that start load generators, fuzzers,
    # benchmark runs, cache builds or drain timers must not be in it
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    kept = run.stdout
    for long_test in (
        "test_openapi_fuzz.py::test_schemathesis_finds_no_server_error",
        "test_benchmarks_smoke.py::test_perf_suite_smoke",
        "test_benchmarks_smoke.py::test_service_bench_smoke",
        "test_loadtests_smoke.py::test_load_smoke",
        "test_deploy.py::test_build_time_warmup_fills_the_cache_a_server_starts_from",
        "test_lifecycle.py::test_sigterm_drains_in_flight_requests",
        "test_metrics.py::test_prometheus_scrapes_requests_total",
        "test_quality.py::test_pq_with_int8_rerank_recovers_recall",
    ):
        assert long_test not in kept, long_test
    assert "test_rest.py::test_lookup_json_and_octet_match_runtime" in kept
