"""A 10-second smoke of the load-test runner on each transport against a local demo server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_load_smoke(transport: str, tmp_path: Path) -> None:
    out = tmp_path / transport
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "run.py"),
            "--duration",
            "10",
            "--users",
            "2",
            "--transport",
            transport,
            "--out",
            str(out),
            "--demo-rows",
            "5000",
            "--max-p99-ms",
            "5000",
            # searches go through the batcher (users search by vector and by id side by side)
            "--server-env",
            "EMBSERVE_SEARCH_BATCH_MAX_QUERIES=8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["operations"]["all"]["requests"] > 0
    assert summary["operations"]["all"]["failures"] == 0
    names = set(summary["operations"])
    expected = (
        {"json lookup", "octet lookup", "oip infer (binary)"}
        if transport == "http"
        else {"grpc lookup", "grpc oip infer"}
    )
    assert expected <= names
    for artifact in ("locust_stats.csv", "report.html", "summary.json", "latency.png"):
        assert (out / artifact).is_file(), artifact
    assert (out / "locust.json").is_file() or (out / "locust").is_file()
    # a breached threshold fails the run; a relative --out is the caller's directory, not the
    # repository root Locust runs from
    strict = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "run.py"),
            "--duration",
            "3",
            "--users",
            "1",
            "--transport",
            transport,
            "--out",
            "strict",
            "--demo-rows",
            "5000",
            "--min-rps",
            "1e9",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert strict.returncode == 1 and "throughput" in (tmp_path / "strict" / "summary.json").read_text()


def test_the_grpc_target_defaults_to_port_8001_of_the_http_targets_host() -> None:
    # found by a review: with --target on another port than 8000, every gRPC call went to the HTTP port
    from loadtests.run import grpc_beside

    assert grpc_beside("http://127.0.0.1:18300") == "127.0.0.1:8001"
    assert grpc_beside("http://10.0.0.5:8000/") == "10.0.0.5:8001"
    assert grpc_beside("http://[::1]:9000") == "[::1]:8001"
