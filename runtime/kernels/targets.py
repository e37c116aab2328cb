"""Prebuilt kernel caches, one per x86-64 level, and the pick of one for the CPU a process starts on.

numba's on-disk cache is keyed by the CPU it compiled for, so an image ships kernels compiled for
fixed targets instead of the build host. One AVX2 target alone would leave the AVX-512 paths (the
8-bit fast scan's VBMI permutes, VPOPCNTDQ popcounts, sixteen-lane bags) unused on the AVX-512
servers many clusters run. So `python -m runtime.warm --levels DIR` compiles a cache for each level
the build host can run into DIR/<level>, and a process started with CACHES_VARIABLE=DIR takes the
highest level whose features its CPU has and whose cache exists, before numba compiles anything
(`runtime.kernels` calls `select_from_environment` on import). numba's own target or cache
variables, where the user sets them, win.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHES_VARIABLE = "EMBSERVE_NUMBA_CACHES"
"""A directory of per-level numba caches (`<dir>/<level name>/`) built by `runtime.warm --levels`."""

_X86_64_V3 = [
    "64bit",
    "cmov",
    "cx8",
    "cx16",
    "fxsr",
    "mmx",
    "sahf",
    "sse",
    "sse2",
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "bmi",
    "bmi2",
    "f16c",
    "fma",
    "lzcnt",
    "movbe",
    "xsave",
]
# x86-64-v4 (AVX-512 F, BW, CD, DQ, VL) and what every AVX-512 server core since Ice Lake and Zen 4
# adds and the kernels use: VBMI permutes, VNNI, VPOPCNTDQ and BITALG popcounts (only these, so a
# VM that hides an extension the kernels never use still gets this level)
_AVX512_SERVER = [
    *_X86_64_V3,
    *["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    *["avx512vbmi", "avx512vnni", "avx512vpopcntdq", "avx512bitalg"],
]

USER_VARIABLES = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_CACHE_DIR")
"""numba's target and cache variables: where any is set, the user has chosen and nothing is picked."""

SCRATCH_NAME = "embserve-numba-cache"
"""Under the temp directory, with the user id appended (`scratch_directory`): copies of prebuilt
caches numba cannot write in place, and the cache of a CPU no level fits."""


@dataclass(frozen=True)
class Level:
    """A compile target: LLVM CPU name and the features numba compiles for (`NUMBA_CPU_FEATURES`)."""

    name: str
    cpu_name: str
    features: tuple[str, ...]
    tuning: tuple[str, ...] = ()

    @property
    def feature_string(self) -> str:
        """NUMBA_CPU_FEATURES: the level's features on, then its tuning flags."""
        return ",".join([f"+{name}" for name in self.features] + list(self.tuning))

    def runs_on(self, host: dict[str, bool]) -> bool:
        """Whether a CPU with these LLVM features (name -> present) can run code for this level."""
        return all(host.get(name, False) for name in self.features)


LEVELS = (
    # 512-bit vectors even where LLVM's tuning prefers 256 (see runtime.kernels.cpu)
    Level("avx512-server", "x86-64-v4", tuple(_AVX512_SERVER), ("-prefer-256-bit",)),
    Level("x86-64-v3", "x86-64-v3", tuple(_X86_64_V3)),
)
"""Best first."""


def host_features() -> dict[str, bool]:
    """The host CPU's features as LLVM sees them (name -> present). llvmlite only: numba's
    configuration is not read, so this may run before the level is picked."""
    from llvmlite import binding

    return {name: bool(on) for name, on in binding.get_host_cpu_features().items()}


def best_level(host: dict[str, bool]) -> Level | None:
    """The first level of LEVELS that a CPU with these features runs, cache or not."""
    return next((level for level in LEVELS if level.runs_on(host)), None)


def choose_level(host: dict[str, bool], caches: Path) -> Level | None:
    """The first level of LEVELS that `host` runs and that has a cache directory under `caches`."""
    for level in LEVELS:
        if level.runs_on(host) and (caches / level.name).is_dir():
            return level
    return None


def level_environment(level: Level, caches: Path) -> dict[str, str]:
    """The numba variables that compile for `level` into (or load from) caches/<level name>."""
    return {
        "NUMBA_CPU_NAME": level.cpu_name,
        "NUMBA_CPU_FEATURES": level.feature_string,
        "NUMBA_CACHE_DIR": str(caches / level.name),
    }


def writable(directory: Path) -> bool:
    """Whether a file can be made in `directory`, the test numba applies to a cache directory."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def scratch_directory() -> Path:
    """This user's scratch directory under the temp directory, made private (0700) if new. numba
    unpickles its cache index files, so a directory another user made or can write is never used:
    a fresh private one then takes its place."""
    scratch = Path(tempfile.gettempdir()) / f"{SCRATCH_NAME}-{os.getuid()}"
    try:
        scratch.mkdir(mode=0o700, exist_ok=True)
        info = scratch.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022:
            return scratch
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_NAME}-"))


def _copy_into_place(prebuilt: Path, copy: Path) -> bool:
    """Copy prebuilt to copy, aside then renamed into place (worker processes starting together
    never see half a copy), owner-writable whatever the source's modes; False where it failed."""
    partial = Path(tempfile.mkdtemp(dir=copy.parent, prefix=f".{copy.name}-"))
    try:
        shutil.copytree(prebuilt, partial, dirs_exist_ok=True)
        for root, dirs, files in os.walk(partial):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
            for name in files:
                os.chmod(os.path.join(root, name), 0o600)
        os.chmod(partial, 0o700)
        partial.rename(copy)
        return True
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if copy.is_dir() and writable(copy):  # another process put its copy there first
            return True
        print(f"cannot copy the kernel cache {prebuilt} to {copy}: {error}", file=sys.stderr)
        return False


def usable_cache(prebuilt: Path, scratch: Path | None = None) -> Path:
    """`prebuilt` where it is writable, else a copy of it under `scratch`, made once and then reused.
    numba passes over a cache directory it cannot write, and with none left it refuses to define
    the kernels at all: a container with a read-only root filesystem (the Kubernetes manifests
    run so) must load its prebuilt kernels from a writable copy. The copy's name carries the
    prebuilt directory's path and modification time, so another image's or install's cache is copied
    afresh. Where copying fails, an empty directory of scratch's: the kernels compile there.
    scratch is `scratch_directory()` unless given, made only where a copy is needed."""
    if writable(prebuilt):
        return prebuilt
    if scratch is None:
        scratch = scratch_directory()
    info = prebuilt.stat()
    stamp = hashlib.sha256(f"{prebuilt.resolve()}:{info.st_mtime_ns}".encode()).hexdigest()
    copy = scratch / f"{prebuilt.name}-{stamp[:12]}"
    if copy.is_dir() or _copy_into_place(prebuilt, copy):
        return copy
    return Path(tempfile.mkdtemp(dir=scratch, prefix=f"{prebuilt.name}-compiled-"))


def select_from_environment() -> Level | None:
    """Where CACHES_VARIABLE names a directory and none of USER_VARIABLES is set, point numba at the
    best cache for this CPU (in os.environ, so worker processes inherit the choice). Returns the
    level, or None where nothing was chosen: then numba compiles for this CPU as usual, into a
    scratch cache where CACHES_VARIABLE is set (the image's own directories may be read-only)."""
    caches = os.environ.get(CACHES_VARIABLE)
    if not caches or any(name in os.environ for name in USER_VARIABLES):
        return None
    level = choose_level(host_features(), Path(caches))
    if level is None:
        print(f"{CACHES_VARIABLE}={caches}: no cache there runs on this CPU; compiling for it", file=sys.stderr)
        os.environ["NUMBA_CACHE_DIR"] = str(scratch_directory() / "host")
    else:
        chosen = level_environment(level, Path(caches))
        chosen["NUMBA_CACHE_DIR"] = str(usable_cache(Path(chosen["NUMBA_CACHE_DIR"])))
        os.environ.update(chosen)
    if "numba" in sys.modules:
        # numba re-reads every NUMBA_ variable once one changes, resetting values set in code:
        # `runtime` sets its threading layer after this runs (see runtime/__init__.py)
        from numba.core import config

        config.reload_config()
    return level
