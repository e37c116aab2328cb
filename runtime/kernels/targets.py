"""Prebuilt kernel caches, one per x86-64 level, and the pick of one for the CPU a process starts on.

numba's on-disk cache is keyed by the CPU it compiled for, so an image ships kernels compiled for
fixed targets instead of the build host. One AVX2 target alone would leave the AVX-512 paths (the
8-bit fast scan's VBMI permutes, VPOPCNTDQ popcounts, sixteen-lane bags) unused on the AVX-512
servers many clusters run. So `python -m runtime.warm --levels DIR` compiles a cache for each level
the build host can run into DIR/<level>, and a process started with CACHES_VARIABLE=DIR takes the
highest level whose features its CPU has and whose cache exists, before numba compiles anything
(`runtime.kernels` calls `select_from_environment` on import). NUMBA_CPU_NAME set by the user wins.
"""

from __future__ import annotations

import os
import sys
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
# adds, which the kernels use: VBMI permutes, VNNI, VPOPCNTDQ and BITALG popcounts
_AVX512_SERVER = [
    *_X86_64_V3,
    *[
        "avx512f",
        "avx512bw",
        "avx512cd",
        "avx512dq",
        "avx512vl",
        "avx512vbmi",
        "avx512vbmi2",
        "avx512vnni",
        "avx512bitalg",
    ],
    *["avx512vpopcntdq", "avx512ifma", "gfni", "vaes", "vpclmulqdq"],
]


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


def select_from_environment() -> Level | None:
    """Where CACHES_VARIABLE names a directory and NUMBA_CPU_NAME is unset, point numba at the best
    cache for this CPU (in os.environ, so worker processes inherit the choice). Returns the level,
    or None where nothing was chosen (numba then compiles for this CPU as usual)."""
    caches = os.environ.get(CACHES_VARIABLE)
    if not caches or "NUMBA_CPU_NAME" in os.environ:
        return None
    from llvmlite import binding

    host = {name: bool(on) for name, on in binding.get_host_cpu_features().items()}
    level = choose_level(host, Path(caches))
    if level is None:
        print(f"{CACHES_VARIABLE}={caches}: no cache there runs on this CPU; compiling for it", file=sys.stderr)
        return None
    os.environ.update(level_environment(level, Path(caches)))
    if "numba" in sys.modules:
        from numba.core import config

        config.reload_config()
    return level
