"""Which vector width the kernels are compiled for, chosen at run time from the CPU's features.

LLVM tunes Intel server cores (Skylake-SP and later) to prefer 256-bit vectors even where
AVX-512 exists, so numba's code never touches zmm registers there. Where the CPU has AVX-512
(F, BW, VL) we lift that preference, so loops vectorize 512 bits wide (half-precision converts,
byte-to-float widening, popcounts and FMAs on zmm). Never assumed: a CPU without AVX-512 keeps
its own widths, and NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set by the user (e.g. `generic` for a
cache built elsewhere) are left alone.
"""

from __future__ import annotations

import os

import numba
from llvmlite import binding

from runtime.kernels.targets import host_features

WIDE = ("avx512f", "avx512bw", "avx512vl")
REPORTED = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512vnni", "avx512vpopcntdq")


def choose_vector_width() -> str:
    """Configure numba (before its first compile) and describe the choice."""
    if "NUMBA_CPU_NAME" in os.environ or "NUMBA_CPU_FEATURES" in os.environ:
        return "as NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set"
    features = host_features()
    if all(features.get(name) for name in WIDE):
        numba.config.CPU_FEATURES = binding.get_host_cpu_features().flatten() + ",-prefer-256-bit"  # type: ignore[attr-defined]
        return "512-bit"
    return "256-bit" if features.get("avx2") else "128-bit"


def target_features() -> set[str]:
    """Features numba compiles kernels for: NUMBA_CPU_FEATURES or the choice above where set,
    else the host's as numba reads them (NUMBA_ENABLE_AVX=0, which numba also implies for some
    NUMBA_CPU_NAMEs, drops every AVX feature). A bare NUMBA_CPU_NAME such as `generic` has none."""
    features = numba.config.CPU_FEATURES  # type: ignore[attr-defined]
    if features is None:
        from numba.core.codegen import get_host_cpu_features

        features = get_host_cpu_features()
    return {name[1:] for name in str(features).split(",") if name.startswith("+")}


def kernels_can_use(*names: str) -> bool:
    """Whether code with these features may be emitted and run: the host has them and numba
    compiles for them (an intrinsic the target lacks stops LLVM with a fatal error)."""
    host = host_features()
    target = target_features()
    return all(host.get(name, False) and name in target for name in names)


def describe() -> dict[str, object]:
    """For benchmarks and `inspect`: the CPU name numba compiles for, the features kernels may use
    (`kernels_can_use`: on the host and in numba's target), the width."""
    return {
        "llvm_cpu": numba.config.CPU_NAME or binding.get_host_cpu_name(),  # type: ignore[attr-defined]
        "features": [name for name in REPORTED if kernels_can_use(name)],
        "vector_width": VECTOR_WIDTH,
    }


VECTOR_WIDTH = choose_vector_width()
