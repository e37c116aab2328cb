"""Kernels over dense rows: fp16 gather and pooling, and EmbeddingBag pooling of decoded rows."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.checks import first_out_of_range
from runtime.kernels.intrinsics import PREFETCH_DISTANCE, half_to_float, prefetch_row
from runtime.kernels.rowwise import (
    DEFAULT_PARALLEL_MIN_IDS,
    bag_bounds,
    bag_input_fault,
    bag_tasks,
    bags_numpy,
    kernel_bag_tasks,
    kernel_tasks,
)


@njit(nogil=True, cache=True)
def _fp16_gather_into(bits16: np.ndarray, ids: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Convert rows ids[lo:hi] into out[lo:hi], one after another on this thread."""
    dim = bits16.shape[1]
    for i in range(lo, hi):
        if i + PREFETCH_DISTANCE < hi:
            for offset in range(0, dim * 2, 64):
                prefetch_row(bits16, ids[i + PREFETCH_DISTANCE], offset)
        src = bits16[ids[i]]
        for j in range(dim):
            out[i, j] = half_to_float(src[j])


@njit(parallel=True, nogil=True, cache=True)
def _fp16_gather_chunks_into(bits16: np.ndarray, ids: np.ndarray, nchunks: int, out: np.ndarray) -> None:
    """Convert rows ids (b,) int64 of bits16 (n, d) uint16 into out (b, d) float32 in `nchunks`
    parallel tasks, one contiguous run of ids each, as `rowwise._gather_chunks_into` does."""
    n = ids.shape[0]
    for c in prange(nchunks):
        _fp16_gather_into(bits16, ids, c * n // nchunks, (c + 1) * n // nchunks, out)


@njit(nogil=True, cache=True)
def fp16_gather_checked_into(bits16: np.ndarray, min_ids: int, ids: np.ndarray, out: np.ndarray) -> int:
    """Rows ids (b,) int64 of bits16 (n, d) uint16 (raw fp16 bits) into out (b, d) float32, with
    the ids' bounds checked and the threads chosen in the same call, as
    `rowwise.gather_checked_into`: -> the position of the first id outside [0, n), out left as it
    was, or -1 when all were gathered."""
    bad = first_out_of_range(ids, bits16.shape[0])
    if bad < 0:
        tasks = kernel_tasks(ids.shape[0], min_ids)
        if tasks > 1:
            _fp16_gather_chunks_into(bits16, ids, tasks, out)
        else:
            _fp16_gather_into(bits16, ids, np.int64(0), ids.shape[0], out)
    return bad


def fp16_gather_numpy(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Twin of `fp16_gather_checked_into`: values (n, d) float16 -> (b, d) float32."""
    return values[ids].astype(np.float32)


@njit(nogil=True, cache=True)
def _fp16_bags_into(
    bits16: np.ndarray, ids: np.ndarray, offsets: np.ndarray, lo: int, hi: int, mean: bool, out: np.ndarray
) -> None:
    """Pool bags lo..hi-1 into out[lo:hi] on this thread, widening each half in registers as it is
    added (no decoded copy of the rows); ids are prefetched ahead across bag boundaries."""
    total = ids.shape[0]
    dim = bits16.shape[1]
    for b in range(lo, hi):
        start, stop, inv = bag_bounds(offsets, b, total, mean)
        out[b, :] = 0.0
        for t in range(start, stop):
            if t + PREFETCH_DISTANCE < total:
                for offset in range(0, dim * 2, 64):
                    prefetch_row(bits16, ids[t + PREFETCH_DISTANCE], offset)
            src = bits16[ids[t]]
            for j in range(dim):
                out[b, j] += half_to_float(src[j])
        if mean:
            for j in range(dim):
                out[b, j] *= inv


@njit(parallel=True, nogil=True, cache=True)
def _fp16_bags_chunks_into(
    bits16: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool, nchunks: int, out: np.ndarray
) -> None:
    """`_fp16_bags_into` of every bag, one contiguous run of bags a task (`nchunks`)."""
    nbags = offsets.shape[0]
    for c in prange(nchunks):
        _fp16_bags_into(bits16, ids, offsets, c * nbags // nchunks, (c + 1) * nbags // nchunks, mean, out)


@njit(nogil=True, cache=True)
def fp16_bags_chunked(bits16: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool, nchunks: int) -> np.ndarray:
    """EmbeddingBag pooling straight from fp16 rows: bits16 (n, d) uint16 (raw fp16 bits), ids (m,)
    int64, offsets (B,) int64 -> (B, d) float32, one contiguous run of bags a task (`nchunks`)."""
    out = np.empty((offsets.shape[0], bits16.shape[1]), dtype=np.float32)
    _fp16_bags_chunks_into(bits16, ids, offsets, mean, nchunks, out)
    return out


@njit(nogil=True, cache=True)
def fp16_bags_checked_into(
    bits16: np.ndarray, min_ids: int, ids: np.ndarray, offsets: np.ndarray, mean: bool, out: np.ndarray
) -> int:
    """`rowwise.bags_checked_into` of fp16 rows: ids and offsets checked, threads chosen and bags
    pooled into out (B, d) float32 in one call -> -1, or `bag_input_fault`'s answer."""
    fault = bag_input_fault(ids, offsets, bits16.shape[0])
    if fault >= 0:
        return fault
    tasks = kernel_bag_tasks(ids.shape[0], offsets.shape[0], min_ids)
    if tasks > 1:
        _fp16_bags_chunks_into(bits16, ids, offsets, mean, tasks, out)
    else:
        _fp16_bags_into(bits16, ids, offsets, np.int64(0), offsets.shape[0], mean, out)
    return -1


@njit(nogil=True, cache=True)
def fp16_bags_serial(bits16: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
    """`fp16_bags_chunked` on the calling thread, for small batches."""
    out = np.empty((offsets.shape[0], bits16.shape[1]), dtype=np.float32)
    _fp16_bags_into(bits16, ids, offsets, np.int64(0), offsets.shape[0], mean, out)
    return out


def fp16_bags_numpy(values: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
    """Twin of `fp16_bags_chunked`: values (n, d) float16 -> (B, d) float32."""
    return bags_numpy(fp16_gather_numpy(values, ids), offsets, mean)


@njit(nogil=True, cache=True)
def _pool_into(decoded: np.ndarray, offsets: np.ndarray, lo: int, hi: int, mean: bool, out: np.ndarray) -> None:
    dim = decoded.shape[1]
    for b in range(lo, hi):
        start, stop, inv = bag_bounds(offsets, b, decoded.shape[0], mean)
        out[b, :] = 0.0
        for t in range(start, stop):
            for j in range(dim):
                out[b, j] += decoded[t, j]
        if mean:
            for j in range(dim):
                out[b, j] *= inv


@njit(parallel=True, nogil=True, cache=True)
def pool_chunked(decoded: np.ndarray, offsets: np.ndarray, mean: bool, nchunks: int) -> np.ndarray:
    """EmbeddingBag pooling. decoded (m, d) float32, offsets (B,) int64 -> (B, d) float32, one
    contiguous run of bags a task (`nchunks`).

    Bag b is rows offsets[b]..offsets[b+1]-1 (the last bag runs to m); empty bags are zeros."""
    nbags = offsets.shape[0]
    out = np.empty((nbags, decoded.shape[1]), dtype=np.float32)
    for c in prange(nchunks):
        _pool_into(decoded, offsets, c * nbags // nchunks, (c + 1) * nbags // nchunks, mean, out)
    return out


@njit(nogil=True, cache=True)
def pool_serial(decoded: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
    """`pool_chunked` on the calling thread, for small batches."""
    out = np.empty((offsets.shape[0], decoded.shape[1]), dtype=np.float32)
    _pool_into(decoded, offsets, np.int64(0), offsets.shape[0], mean, out)
    return out


def pool(decoded: np.ndarray, offsets: np.ndarray, mean: bool, min_ids: int = DEFAULT_PARALLEL_MIN_IDS) -> np.ndarray:
    """EmbeddingBag pooling of decoded rows (m, d) float32 by offsets (B,) int64 -> (B, d) float32;
    parallel over runs of bags only for batches of at least `min_ids` rows."""
    tasks = bag_tasks(decoded.shape[0], offsets.shape[0], min_ids)
    if tasks == 1:
        return pool_serial(decoded, offsets, mean)
    return pool_chunked(decoded, offsets, mean, tasks)


def fp16_bags(
    bits16: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool, min_ids: int = DEFAULT_PARALLEL_MIN_IDS
) -> np.ndarray:
    """`fp16_bags_chunked`, parallel only for batches of at least `min_ids` ids."""
    tasks = bag_tasks(ids.shape[0], offsets.shape[0], min_ids)
    if tasks == 1:
        return fp16_bags_serial(bits16, ids, offsets, mean)
    return fp16_bags_chunked(bits16, ids, offsets, mean, tasks)
