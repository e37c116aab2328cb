# mypy: disable-error-code="call-arg,var-annotated"
# (numba intrinsics are called without the typing context their Python signature names)
"""The float32 vector intrinsics, one at a time, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.kernels.simd import (
    fmadd,
    high_nibbles,
    low_nibbles,
    store_affine,
    store_interleaved_affine,
    store_interleaved_fma,
    widen_bytes,
    zeros,
)


@njit
def _bytes_times(row: np.ndarray, offset: int, scale: np.float32, add: np.float32, out: np.ndarray) -> None:
    acc = fmadd(widen_bytes(zeros(16), row, offset), scale, zeros(16))
    store_affine(out, 3, acc, add, np.float32(0.5))


@njit
def _nibbles_times(row: np.ndarray, offset: int, scale: np.float32, out: np.ndarray) -> None:
    even = fmadd(low_nibbles(zeros(8), row, offset), scale, zeros(8))
    odd = fmadd(high_nibbles(zeros(8), row, offset), scale, zeros(8))
    store_interleaved_affine(out, 1, even, odd, np.float32(1.0), np.float32(2.0))


@njit
def _nibbles_decoded(row: np.ndarray, offset: int, scale: np.float32, add: np.float32, out: np.ndarray) -> None:
    store_interleaved_fma(out, 0, low_nibbles(zeros(16), row, offset), high_nibbles(zeros(16), row, offset), scale, add)


@njit
def _sum_rows(rows: np.ndarray, out: np.ndarray) -> None:
    acc = zeros(64)
    for r in range(rows.shape[0]):
        acc = fmadd(widen_bytes(acc, rows[r], 0), np.float32(r + 1), acc)
    store_affine(out, 0, acc, np.float32(0.0), np.float32(1.0))


@pytest.mark.parametrize("offset", [0, 1, 7])
def test_widened_bytes_scale_add_and_store_at_an_offset(offset: int) -> None:
    row = np.random.default_rng(offset).integers(0, 256, 32).astype(np.uint8)
    out = np.full(24, -1.0, np.float32)
    _bytes_times(row, offset, np.float32(0.25), np.float32(3.0), out)
    want = (row[offset : offset + 16].astype(np.float32) * np.float32(0.25) + np.float32(3.0)) * np.float32(0.5)
    np.testing.assert_array_equal(out[3:19], want)
    # nothing outside the 16 lanes is written
    assert (out[:3] == -1.0).all() and (out[19:] == -1.0).all()


def test_nibbles_are_the_even_and_odd_columns_back_in_order() -> None:
    row = np.arange(256, dtype=np.int64).astype(np.uint8)[37:57].copy()
    out = np.full(20, -1.0, np.float32)
    _nibbles_times(row, 2, np.float32(1.5), out)
    codes = np.stack([row[2:10] & 15, row[2:10] >> 4], axis=1).reshape(-1).astype(np.float32)
    np.testing.assert_array_equal(out[1:17], (codes * np.float32(1.5) + np.float32(1.0)) * np.float32(2.0))
    assert out[0] == -1.0 and (out[17:] == -1.0).all()


def test_nibbles_decode_as_scale_times_code_plus_bias() -> None:
    row = np.random.default_rng(2).integers(0, 256, 40).astype(np.uint8)
    out = np.zeros(32, np.float32)
    _nibbles_decoded(row, 5, np.float32(0.75), np.float32(-2.0), out)
    codes = np.stack([row[5:21] & 15, row[5:21] >> 4], axis=1).reshape(-1).astype(np.float32)
    np.testing.assert_array_equal(out, codes * np.float32(0.75) + np.float32(-2.0))


def test_a_vector_longer_than_a_register_carried_through_a_loop() -> None:
    rows = np.random.default_rng(1).integers(0, 256, (5, 70)).astype(np.uint8)
    out = np.zeros(64, np.float32)
    _sum_rows(rows, out)
    want = np.zeros(64, np.float32)
    for r in range(5):
        want += rows[r, :64].astype(np.float32) * np.float32(r + 1)
    np.testing.assert_array_equal(out, want)
