"""fp16 bits -> float32 in kernels: the F16C instruction where the target has it, arithmetic where
it does not (a cache built for NUMBA_CPU_NAME=generic); both exact for every one of the 65,536 values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

from runtime.kernels.intrinsics import _half_bits_to_float, half_to_float

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import numba, numpy as np
from runtime.kernels.intrinsics import half_to_float
@numba.njit
def widen(bits):
    out = np.empty(bits.shape[0], np.float32)
    for i in range(bits.shape[0]):
        out[i] = half_to_float(bits[i])  # type: ignore[call-arg]
    return out
bits = np.arange(65536, dtype=np.uint16)
assert np.array_equal(widen(bits), bits.view(np.float16).astype(np.float32), equal_nan=True)
"""


@numba.njit
def _widen(bits: np.ndarray) -> np.ndarray:
    out = np.empty(bits.shape[0], np.float32)
    for i in range(bits.shape[0]):
        out[i] = half_to_float(bits[i])  # type: ignore[call-arg]
    return out


def test_every_half_value_widens_exactly() -> None:
    bits = np.arange(65536, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    assert np.array_equal(_widen(bits), expected, equal_nan=True)
    arithmetic = np.array([_half_bits_to_float(int(b)) for b in bits], dtype=np.float32)
    assert np.array_equal(arithmetic, expected, equal_nan=True)
    assert np.signbit(arithmetic[0x8000]) and np.isinf(arithmetic[0x7C00]) and np.isnan(arithmetic[0x7E00])


def test_a_generic_target_compiles_and_widens_exactly(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
