"""Choosing a prebuilt kernel cache by the CPU's level (`runtime.kernels.targets`). The build of a
real cache and a process loading every kernel from it is `tests/test_deploy.py`'s warm-up test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import warm
from runtime.errors import InvalidRequest
from runtime.kernels import targets
from runtime.kernels.targets import (
    LEVELS,
    SCRATCH_NAME,
    Level,
    best_level,
    choose_level,
    host_features,
    level_environment,
    usable_cache,
)

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
    # without regard to caches
    assert best_level(host_with(AVX512)) == AVX512 and best_level(almost) == V3 and best_level({}) is None


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
import runtime
from runtime.kernels import checks, cpu
import numpy as np
# a kernel compiles and caches where the choice says (a cache numba cannot use stops this)
assert checks.first_out_of_range(np.arange(5, dtype=np.int64), 3) == 3
print(json.dumps({
    "cache_dir": numba.config.CACHE_DIR,
    "cpu_name": numba.config.CPU_NAME,
    "env_cache_dir": os.environ.get("NUMBA_CACHE_DIR"),
    "threading_layer": numba.config.THREADING_LAYER,
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
    for level in LEVELS:
        (tmp_path / level.name).mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")} | {
        "EMBSERVE_NUMBA_CACHES": str(tmp_path),
        "TMPDIR": str(scratch),
    }
    expected = best_level(host_features())
    if expected is None:
        pytest.skip("this CPU runs no level (no AVX2)")
    chosen = _choice(env, order)
    assert chosen["cache_dir"] == chosen["env_cache_dir"] == str(tmp_path / expected.name)
    assert chosen["cpu_name"] == expected.cpu_name
    # numba re-read its variables after the choice, and runtime's threading layer survived it
    assert chosen["threading_layer"] == "threadsafe"
    assert list((tmp_path / expected.name).rglob("*.nbi")), "the kernel was not cached in the level's directory"
    # numba's variables set by hand win: nothing is chosen
    manual = _choice(env | {"NUMBA_CPU_NAME": "generic"}, order)
    assert manual["cpu_name"] == "generic" and manual["env_cache_dir"] is None
    own = _choice(env | {"NUMBA_CACHE_DIR": str(scratch / "own")}, order)
    assert own["cache_dir"] == str(scratch / "own") and own["cpu_name"] is None
    # no level's cache there: this CPU's own code, cached in the scratch directory
    empty = tmp_path / "empty"
    empty.mkdir()
    host_only = _choice(env | {"EMBSERVE_NUMBA_CACHES": str(empty)}, order)
    private = scratch / f"{SCRATCH_NAME}-{os.getuid()}"
    assert host_only["cpu_name"] is None and host_only["cache_dir"] == str(private / "host")
    assert private.stat().st_mode & 0o777 == 0o700
    assert host_only["threading_layer"] == "threadsafe"


def test_a_cache_numba_cannot_write_is_used_from_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prebuilt = tmp_path / "image" / V3.name
    (prebuilt / "sub").mkdir(parents=True)
    (prebuilt / "sub" / "kernel.nbi").write_bytes(b"index")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert usable_cache(prebuilt, scratch) == prebuilt  # writable: used in place
    monkeypatch.setattr(targets, "writable", lambda directory: directory != prebuilt)
    # a read-only source's modes are not carried over: numba must be able to write the copy
    (prebuilt / "sub").chmod(0o555)
    prebuilt.chmod(0o555)
    try:
        copy = usable_cache(prebuilt, scratch)
    finally:
        prebuilt.chmod(0o755)
        (prebuilt / "sub").chmod(0o755)
    assert copy.parent == scratch and copy.name.startswith(f"{V3.name}-")
    assert (copy / "sub" / "kernel.nbi").read_bytes() == b"index"
    assert copy.stat().st_mode & 0o700 == (copy / "sub").stat().st_mode & 0o700 == 0o700
    # a second process finds the copy made and leaves it as it is
    (copy / "sub" / "kernel.nbc").write_bytes(b"compiled since")
    assert usable_cache(prebuilt, scratch) == copy and (copy / "sub" / "kernel.nbc").exists()
    assert [p.name for p in scratch.iterdir()] == [copy.name]
    # another install's cache (a directory changed since) is copied afresh
    (prebuilt / "newer").mkdir()
    assert usable_cache(prebuilt, scratch) != copy


def test_a_failed_copy_leaves_no_half_copy_and_an_empty_cache_to_compile_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prebuilt = tmp_path / V3.name
    prebuilt.mkdir()
    (prebuilt / "kernel.nbi").write_bytes(b"index")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(targets, "writable", lambda directory: directory != prebuilt)

    def disk_full(source: object, target: object, dirs_exist_ok: bool) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(targets.shutil, "copytree", disk_full)
    fallback = usable_cache(prebuilt, scratch)
    assert fallback.parent == scratch and fallback.name.startswith(f"{V3.name}-compiled-")
    assert list(fallback.iterdir()) == [] and [p.name for p in scratch.iterdir()] == [fallback.name]
    assert "No space left on device" in capsys.readouterr().err


def test_a_scratch_directory_another_user_could_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets.tempfile, "tempdir", str(tmp_path))
    mine = targets.scratch_directory()
    assert mine == tmp_path / f"{SCRATCH_NAME}-{os.getuid()}" and mine.stat().st_mode & 0o777 == 0o700
    assert targets.scratch_directory() == mine
    mine.chmod(0o777)  # as if another user had made it first, open to all
    other = targets.scratch_directory()
    assert other != mine and other.parent == tmp_path and other.stat().st_mode & 0o777 == 0o700


def test_a_read_only_prebuilt_cache_serves_a_process_from_its_copy(tmp_path: Path) -> None:
    # as in a pod with a read-only root filesystem; root writes anywhere, so the directory is made
    # immutable instead (where chattr works)
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    level = best_level(host_features())
    if level is None:
        pytest.skip("this CPU runs no level (no AVX2)")
    caches, scratch = tmp_path / "caches", tmp_path / "tmp"
    (caches / level.name).mkdir(parents=True)
    scratch.mkdir()
    (caches / level.name / "marker").write_text("prebuilt")
    if subprocess.run(["chattr", "+i", str(caches / level.name)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not take chattr +i")
    try:
        assert not targets.writable(caches / level.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
        chosen = _choice(env | {"EMBSERVE_NUMBA_CACHES": str(caches), "TMPDIR": str(scratch)}, "kernels-first")
    finally:
        subprocess.run(["chattr", "-i", str(caches / level.name)], check=True)
    (copy,) = (scratch / f"{SCRATCH_NAME}-{os.getuid()}").glob(f"{level.name}-*")
    assert chosen["cache_dir"] == str(copy) and chosen["cpu_name"] == level.cpu_name
    assert (copy / "marker").read_text() == "prebuilt" and list(copy.rglob("*.nbi"))
    assert [p.name for p in (caches / level.name).iterdir()] == ["marker"]


def test_warming_levels_refuses_unknown_names_and_skips_what_the_cpu_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidRequest, match="unknown level avx9; the levels are avx512-server, x86-64-v3"):
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


def test_warming_levels_refuses_a_cache_directory_it_cannot_write_before_any_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llvmlite import binding

    calls: list[dict[str, str]] = []
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: host_with(V3))
    monkeypatch.setattr(warm.subprocess, "run", lambda args, env, check: calls.append(env))

    def refused(argv: list[str], message: str) -> None:
        assert warm.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    a_file = tmp_path / "caches"
    a_file.write_text("")
    refused(["--levels", str(a_file)], f"cache directory {str(a_file)!r} exists and is not a directory")
    refused(["--levels", str(a_file / "under")], f"cannot make cache directory {str(a_file / 'under')!r}")
    level_file = tmp_path / "levels" / "x86-64-v3"
    level_file.parent.mkdir()
    level_file.write_text("")
    refused(["--levels", str(level_file.parent)], f"{str(level_file)!r} exists and is not a directory")
    # root writes anywhere, so an unwritable directory is what targets.writable says of it
    monkeypatch.setattr(targets, "writable", lambda directory: False)
    refused(["--levels", str(tmp_path / "new")], f"cache directory {str(tmp_path / 'new')!r} is not writable")
    refused(["--levels", str(tmp_path / "new"), "avx9"], "unknown level avx9")
    refused(["--levels"], "usage: python -m runtime.warm")
    refused(["--level", str(tmp_path)], "usage: python -m runtime.warm")
    assert calls == []
