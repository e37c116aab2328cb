"""Kernels over dense rows: fp16 gather and EmbeddingBag pooling of decoded rows."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.intrinsics import PREFETCH_DISTANCE, prefetch_row


@njit(nogil=True, cache=True)
def _fp16_gather_into(
    bits16: np.ndarray, ids: np.ndarray, lo: int, hi: int, half_table: np.ndarray, out: np.ndarray
) -> None:
    """Convert rows ids[lo:hi] into out[lo:hi], one after another on this thread."""
    dim = bits16.shape[1]
    for i in range(lo, hi):
        if i + PREFETCH_DISTANCE < hi:
            for offset in range(0, dim * 2, 64):
                prefetch_row(bits16, ids[i + PREFETCH_DISTANCE], offset)
        src = bits16[ids[i]]
        for j in range(dim):
            out[i, j] = half_table[src[j]]


@njit(parallel=True, nogil=True, cache=True)
def fp16_gather(bits16: np.ndarray, ids: np.ndarray, half_table: np.ndarray, nchunks: int) -> np.ndarray:
    """bits16 (n, d) uint16 (raw fp16 bits), ids (b,) int64 -> (b, d) float32; one contiguous
    run of ids a task (`nchunks`, one a thread), as `rowwise.gather` does."""
    n = ids.shape[0]
    out = np.empty((n, bits16.shape[1]), dtype=np.float32)
    for c in prange(nchunks):
        _fp16_gather_into(bits16, ids, c * n // nchunks, (c + 1) * n // nchunks, half_table, out)
    return out


@njit(nogil=True, cache=True)
def fp16_gather_serial(bits16: np.ndarray, ids: np.ndarray, half_table: np.ndarray) -> np.ndarray:
    """`fp16_gather` on the calling thread, for small batches."""
    out = np.empty((ids.shape[0], bits16.shape[1]), dtype=np.float32)
    _fp16_gather_into(bits16, ids, 0, ids.shape[0], half_table, out)
    return out


def fp16_gather_numpy(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Twin of `fp16_gather`: values (n, d) float16 -> (b, d) float32."""
    return values[ids].astype(np.float32)


@njit(parallel=True, nogil=True, cache=True)
def pool(decoded: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
    """EmbeddingBag pooling. decoded (m, d) float32, offsets (B,) int64 -> (B, d) float32.

    Bag b is rows offsets[b]..offsets[b+1]-1 (the last bag runs to m); empty bags are zeros."""
    nbags = offsets.shape[0]
    dim = decoded.shape[1]
    out = np.zeros((nbags, dim), dtype=np.float32)
    for b in prange(nbags):
        start = offsets[b]
        stop = offsets[b + 1] if b + 1 < nbags else decoded.shape[0]
        for t in range(start, stop):
            for j in range(dim):
                out[b, j] += decoded[t, j]
        if mean and stop > start:
            inv = np.float32(1.0) / np.float32(stop - start)
            for j in range(dim):
                out[b, j] *= inv
    return out
