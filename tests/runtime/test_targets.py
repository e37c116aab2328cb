"""Choosing a prebuilt kernel cache by the CPU's level (`runtime.kernels.targets`). The build of a
real cache and a process loading every kernel from it is `tests/test_deploy.py`'s warm-up test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import warm
from runtime.kernels.targets import LEVELS, Level, choose_level, level_environment

ROOT = Path(__file__).resolve().parents[2]
AVX512, V3 = LEVELS


def host_with(*levels: Level) -> dict[str, bool]:
    features: dict[str, bool] = {"sse4a": True, "avx512fp16": False}
    for level in levels:
        features.update(dict.fromkeys(level.features, True))
    return features


def test_the_levels_go_best_first_and_nest() -> None:
    assert [level.name for level in LEVELS] == ["avx512-server", "x86-64-v3"]
    assert set(V3.features) < set(AVX512.features)
    assert {"avx2", "fma", "f16c"} <= set(V3.features)
    assert {"avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512vnni", "avx512vpopcntdq"} <= set(AVX512.features)
    # 512-bit loops on the AVX-512 level, as runtime.kernels.cpu asks for on the host
    assert AVX512.feature_string.endswith(",-prefer-256-bit")
    assert V3.feature_string.split(",") == [f"+{name}" for name in V3.features]


def test_the_best_level_with_a_cache_wins(tmp_path: Path) -> None:
    for level in LEVELS:
        (tmp_path / level.name).mkdir()
    assert choose_level(host_with(AVX512), tmp_path) == AVX512
    assert choose_level(host_with(V3), tmp_path) == V3
    # a CPU missing one feature of a level does not run it
    almost = host_with(AVX512) | {"avx512vbmi": False}
    assert choose_level(almost, tmp_path) == V3
    assert choose_level(host_with(V3) | {"avx2": False}, tmp_path) is None
    assert choose_level({}, tmp_path) is None


def test_a_level_without_a_cache_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / V3.name).mkdir()
    assert choose_level(host_with(AVX512), tmp_path) == V3
    (tmp_path / V3.name).rmdir()
    assert choose_level(host_with(AVX512), tmp_path) is None


def test_the_environment_names_the_level_and_its_cache(tmp_path: Path) -> None:
    env = level_environment(V3, tmp_path)
    assert env == {
        "NUMBA_CPU_NAME": "x86-64-v3",
        "NUMBA_CPU_FEATURES": V3.feature_string,
        "NUMBA_CACHE_DIR": str(tmp_path / "x86-64-v3"),
    }


SHOW_CHOICE = """
import json, os, sys
if sys.argv[1] == "numba-first":
    import numba  # numba's config is read before runtime.kernels picks the cache: it is reloaded
import numba
import runtime.kernels
from runtime.kernels import cpu
print(json.dumps({
    "cache_dir": numba.config.CACHE_DIR,
    "cpu_name": numba.config.CPU_NAME,
    "env_cache_dir": os.environ.get("NUMBA_CACHE_DIR"),
    "width": cpu.VECTOR_WIDTH,
}))
"""


def _choice(env: dict[str, str], order: str) -> dict[str, str]:
    run = subprocess.run(
        [sys.executable, "-c", SHOW_CHOICE, order], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("order", ["kernels-first", "numba-first"])
def test_a_process_started_with_the_caches_variable_loads_from_the_best_level(tmp_path: Path, order: str) -> None:
    from llvmlite import binding

    host = {name: bool(on) for name, on in binding.get_host_cpu_features().items()}
    for level in LEVELS:
        (tmp_path / level.name).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")} | {"EMBSERVE_NUMBA_CACHES": str(tmp_path)}
    expected = next((level for level in LEVELS if level.runs_on(host)), None)
    if expected is None:
        pytest.skip("this CPU runs no level (no AVX2)")
    chosen = _choice(env, order)
    assert chosen["cache_dir"] == chosen["env_cache_dir"] == str(tmp_path / expected.name)
    assert chosen["cpu_name"] == expected.cpu_name
    # NUMBA_CPU_NAME set by hand wins: nothing is chosen
    manual = _choice(env | {"NUMBA_CPU_NAME": "generic"}, order)
    assert manual["cpu_name"] == "generic" and manual["env_cache_dir"] is None


def test_warming_levels_refuses_unknown_names_and_skips_what_the_cpu_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match="unknown level avx9; the levels are avx512-server, x86-64-v3"):
        warm.warm_levels(tmp_path, ["avx9"])
    # a build host with AVX2 only: the AVX-512 level is skipped with a note, x86-64-v3 is built in
    # a process of its own with that level's variables (the build itself is run for real in
    # tests/test_deploy.py)
    from llvmlite import binding

    calls: list[dict[str, str]] = []
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: host_with(V3))
    monkeypatch.setattr(warm.subprocess, "run", lambda args, env, check: calls.append(env))
    assert warm.warm_levels(tmp_path) == ["x86-64-v3"]
    assert [call["NUMBA_CACHE_DIR"] for call in calls] == [str(tmp_path / "x86-64-v3")]
    assert calls[0]["NUMBA_CPU_NAME"] == "x86-64-v3" and "EMBSERVE_NUMBA_CACHES" not in calls[0]
    assert "avx512-server: skipped, this CPU lacks avx512f" in capsys.readouterr().err
