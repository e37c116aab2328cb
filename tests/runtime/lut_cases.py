"""Lookup tables that stress the fast scans' quantization, shared by the 4-bit and 8-bit tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from runtime.kernels import fastscan

LUT_KINDS = ("normal", "ties", "constant", "offset", "wide", "top codes")


def draw_luts(draw: st.DrawFn, rng: np.random.Generator, nq: int, m: int, entries: int) -> np.ndarray:
    """-> (nq, m, entries) float32 tables of a drawn kind: ordinary, tied, constant, offset far
    from zero, one subspace much wider, or the upper half of every table winning."""
    kind = draw(st.sampled_from(LUT_KINDS))
    shape = (nq, m, entries)
    if kind == "ties":  # few distinct sums: ids break the ties
        return rng.integers(0, 3, shape).astype(np.float32) / 4
    if kind == "constant":  # zero span: every row sums alike
        return np.full(shape, 0.5, dtype=np.float32)
    if kind == "offset":  # large magnitude, small spread: float32 rounding dominates
        return (1e4 + rng.standard_normal(shape)).astype(np.float32)
    luts = rng.standard_normal(shape).astype(np.float32)
    if kind == "wide":  # one subspace spans far more than the others
        luts[:, 0] *= 1000
    elif kind == "top codes":  # the upper codes win (for 8 bits: the second pair of table quarters)
        luts[:, :, entries // 2 :] += 3
    return luts


def assert_quantized_sums_within_slack(codes: np.ndarray, luts: np.ndarray, float_sums: np.ndarray) -> None:
    """The uint16 sums of `fastscan.quantize_luts` tables for codes (n, M) int64 (one code a
    subspace) stay within the slack of the float sums (q, n), mapped by the tables' bias and scale."""
    tables, bias, scale, slack = fastscan.quantize_luts(luts)
    m = np.arange(luts.shape[1])
    for qi in range(luts.shape[0]):
        quantized = tables[qi, m[None, :], codes].sum(axis=1) if codes.shape[0] else np.zeros(0)
        assert quantized.max(initial=0) <= 65535
        gap = np.abs(quantized - (float_sums[qi].astype(np.float64) - bias[qi]) * scale[qi])
        assert np.all(gap <= slack[qi])
