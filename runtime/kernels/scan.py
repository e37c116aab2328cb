"""Fused scan + top-k kernels over compressed codes: Hamming on packed bits, ADC on PQ codes.

Each kernel splits the rows into `nchunks` contiguous chunks; a task is one (query, chunk) pair
and keeps its own bounded heap (see `topk.py`); `topk.merge_partials` then merges the chunk heaps.
Keys follow the top-k convention: larger is better, so Hamming distances come out negated.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.intrinsics import popcount64
from runtime.kernels.topk import heap_push, merge_partials

ROW_BLOCK = 512
"""Rows scanned for every query before moving on: their codes stay in L1/L2 across queries."""


@njit(nogil=True, cache=True)
def _chunk_bounds(n: int, nchunks: int, c: int) -> tuple[int, int]:
    size = (n + nchunks - 1) // nchunks
    start = min(n, c * size)
    return start, min(n, start + size)


@njit(nogil=True, cache=True)
def _hamming_scan_block(
    codes: np.ndarray,
    query: np.ndarray,
    start: int,
    stop: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
) -> int:
    """Offer rows start..stop-1 to one query's heap; returns its new size. query (W,) uint64."""
    kk = heap_keys.shape[0]
    words = codes.shape[1]
    # ids ascend, so a row that only ties the worst kept one loses: one integer compare
    # rejects almost every row without touching the heap
    worst = np.int64(-heap_keys[0]) if size == kk else np.int64(words * 64 + 1)
    q0 = query[0]
    q1 = query[1] if words > 1 else np.uint64(0)
    q2 = query[2] if words > 3 else np.uint64(0)
    q3 = query[3] if words > 3 else np.uint64(0)
    for i in range(start, stop):
        # 128- and 256-bit codes unrolled: independent popcounts, no inner loop
        if words == 4:
            dist = np.int64(
                popcount64(codes[i, 0] ^ q0)
                + popcount64(codes[i, 1] ^ q1)
                + popcount64(codes[i, 2] ^ q2)
                + popcount64(codes[i, 3] ^ q3)
            )
        elif words == 2:
            dist = np.int64(popcount64(codes[i, 0] ^ q0) + popcount64(codes[i, 1] ^ q1))
        else:
            dist = np.int64(0)
            for w in range(words):
                dist += np.int64(popcount64(codes[i, w] ^ query[w]))
        if dist < worst:
            size = heap_push(heap_keys, heap_ids, size, -np.float32(dist), i)
            if size == kk:
                worst = np.int64(-heap_keys[0])
    return size


@njit(nogil=True, cache=True)
def _hamming_scan_chunk(
    codes: np.ndarray,
    queries: np.ndarray,
    start: int,
    stop: int,
    part_keys: np.ndarray,
    part_ids: np.ndarray,
    part_sizes: np.ndarray,
    chunk: int,
) -> None:
    for block in range(start, stop, ROW_BLOCK):
        block_stop = min(stop, block + ROW_BLOCK)
        for qi in range(queries.shape[0]):
            part_sizes[qi, chunk] = _hamming_scan_block(
                codes, queries[qi], block, block_stop, part_keys[qi, chunk], part_ids[qi, chunk], part_sizes[qi, chunk]
            )


@njit(parallel=True, nogil=True, cache=True)
def hamming_topk(codes: np.ndarray, queries: np.ndarray, k: int, nchunks: int):
    """codes (n, W) uint64, queries (q, W) uint64 -> keys (q, k') float32 (= -distance),
    ids (q, k') int64, best first; k' = min(k, n). Blocked over queries as `adc_topk` is."""
    n = codes.shape[0]
    nq = queries.shape[0]
    kk = min(k, n)
    part_keys = np.empty((nq, nchunks, kk), dtype=np.float32)
    part_ids = np.empty((nq, nchunks, kk), dtype=np.int64)
    part_sizes = np.zeros((nq, nchunks), dtype=np.int64)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, c)
        _hamming_scan_chunk(codes, queries, start, stop, part_keys, part_ids, part_sizes, c)
    return merge_partials(part_keys, part_ids, part_sizes, kk)


@njit(parallel=True, nogil=True, cache=True)
def hamming_distances(codes: np.ndarray, candidates: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """codes (n, W) uint64, candidates (q, c) int64, queries (q, W) uint64 -> (q, c) float32."""
    nq, nc = candidates.shape
    out = np.empty((nq, nc), dtype=np.float32)
    for qi in prange(nq):
        for j in range(nc):
            row = codes[candidates[qi, j]]
            dist = np.uint64(0)
            for w in range(codes.shape[1]):
                dist += popcount64(row[w] ^ queries[qi, w])
            out[qi, j] = np.float32(dist)
    return out


def hamming_distances_numpy(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Twin: codes (n, W) uint64, queries (q, W) uint64 -> (q, n) int64 Hamming distances."""
    x = codes[None, :, :] ^ queries[:, None, :]
    return np.bitwise_count(x).sum(axis=2).astype(np.int64)


@njit(inline="always", nogil=True, cache=True)
def _adc_row(codes: np.ndarray, i: int, lut: np.ndarray, ksub: int, four_bit: bool) -> np.float32:
    """Sum of LUT entries for row i; lut is one query's (M * ksub,) float32, flattened."""
    s = np.float32(0.0)
    if four_bit:
        for b in range(codes.shape[1]):
            byte = codes[i, b]
            s += lut[(2 * b) * 16 + (byte & 15)]
            s += lut[(2 * b + 1) * 16 + (byte >> 4)]
    else:
        for m in range(codes.shape[1]):
            s += lut[m * ksub + codes[i, m]]
    return s


@njit(nogil=True, cache=True)
def _adc_scan_block(
    codes: np.ndarray,
    lut: np.ndarray,
    row_mul: np.ndarray,
    row_add: np.ndarray,
    start: int,
    stop: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
    four_bit: bool,
) -> int:
    """Offer rows start..stop-1 to one query's heap (holding `size`); returns its new size.
    lut (M * K,) float32 for that query."""
    kk = heap_keys.shape[0]
    width = codes.shape[1]
    has_mul = row_mul.shape[0] > 0
    has_add = row_add.shape[0] > 0
    # ids ascend, so a key equal to the worst kept one loses: reject with one compare
    worst = heap_keys[0] if size == kk else -np.inf
    if four_bit:
        for i in range(start, stop):
            s = np.float32(0.0)
            for b in range(width):
                byte = codes[i, b]
                s += lut[(2 * b) * 16 + (byte & 15)]
                s += lut[(2 * b + 1) * 16 + (byte >> 4)]
            if has_mul:
                s = s * row_mul[i]
            if has_add:
                s = s + row_add[i]
            if s > worst:
                size = heap_push(heap_keys, heap_ids, size, s, i)
                if size == kk:
                    worst = heap_keys[0]
    else:
        for i in range(start, stop):
            s = np.float32(0.0)
            for m in range(width):
                s += lut[m * 256 + codes[i, m]]
            if has_mul:
                s = s * row_mul[i]
            if has_add:
                s = s + row_add[i]
            if s > worst:
                size = heap_push(heap_keys, heap_ids, size, s, i)
                if size == kk:
                    worst = heap_keys[0]
    return size


@njit(nogil=True, cache=True)
def _adc_scan_chunk(
    codes: np.ndarray,
    flat_luts: np.ndarray,
    row_mul: np.ndarray,
    row_add: np.ndarray,
    start: int,
    stop: int,
    part_keys: np.ndarray,
    part_ids: np.ndarray,
    part_sizes: np.ndarray,
    chunk: int,
    four_bit: bool,
) -> None:
    for block in range(start, stop, ROW_BLOCK):
        block_stop = min(stop, block + ROW_BLOCK)
        for qi in range(flat_luts.shape[0]):
            part_sizes[qi, chunk] = _adc_scan_block(
                codes,
                flat_luts[qi],
                row_mul,
                row_add,
                block,
                block_stop,
                part_keys[qi, chunk],
                part_ids[qi, chunk],
                part_sizes[qi, chunk],
                four_bit,
            )


@njit(parallel=True, nogil=True, cache=True)
def adc_topk(
    codes: np.ndarray,
    luts: np.ndarray,
    row_mul: np.ndarray,
    row_add: np.ndarray,
    k: int,
    nchunks: int,
    four_bit: bool,
):
    """Asymmetric distance computation with a fused top-k.

    codes (n, M) uint8 — or (n, M/2) uint8 with two 4-bit codes a byte (low nibble = even m) when
    four_bit — luts (q, M, K) float32. key[i] = row_mul[i] * sum_m luts[q, m, code[i, m]] + row_add[i];
    an empty row_mul / row_add means 1 / 0. A task is a chunk of rows, scanned block by block for
    every query, so codes are read from memory once whatever the number of queries.
    -> keys (q, k') float32, ids (q, k') int64, best first; k' = min(k, n).
    """
    n = codes.shape[0]
    nq = luts.shape[0]
    flat = np.ascontiguousarray(luts).reshape(nq, luts.shape[1] * luts.shape[2])
    kk = min(k, n)
    part_keys = np.empty((nq, nchunks, kk), dtype=np.float32)
    part_ids = np.empty((nq, nchunks, kk), dtype=np.int64)
    part_sizes = np.zeros((nq, nchunks), dtype=np.int64)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, c)
        _adc_scan_chunk(codes, flat, row_mul, row_add, start, stop, part_keys, part_ids, part_sizes, c, four_bit)
    return merge_partials(part_keys, part_ids, part_sizes, kk)


@njit(parallel=True, nogil=True, cache=True)
def adc_candidates(codes: np.ndarray, candidates: np.ndarray, luts: np.ndarray, four_bit: bool) -> np.ndarray:
    """Sums of LUT entries for given rows: candidates (q, c) int64, luts (q, M, K) float32
    -> (q, c) float32."""
    nq, nc = candidates.shape
    ksub = luts.shape[2]
    flat = luts.reshape(nq, luts.shape[1] * ksub)
    out = np.empty((nq, nc), dtype=np.float32)
    for qi in prange(nq):
        for j in range(nc):
            out[qi, j] = _adc_row(codes, candidates[qi, j], flat[qi], ksub, four_bit)
    return out


def unpack_codes_numpy(codes: np.ndarray, four_bit: bool) -> np.ndarray:
    """(n, M) or (n, M/2) packed uint8 -> (n, M) int64 codes."""
    if not four_bit:
        return codes.astype(np.int64)
    out = np.empty((codes.shape[0], codes.shape[1] * 2), dtype=np.int64)
    out[:, 0::2] = codes & 15
    out[:, 1::2] = codes >> 4
    return out


def adc_sums_numpy(codes: np.ndarray, luts: np.ndarray, four_bit: bool) -> np.ndarray:
    """Twin of the ADC scan: -> (q, n) float32 sums of LUT entries, exactly as the kernel
    accumulates them (float32, in subspace order)."""
    unpacked = unpack_codes_numpy(codes, four_bit)
    nq, nm = luts.shape[0], luts.shape[1]
    out = np.zeros((nq, codes.shape[0]), dtype=np.float32)
    for m in range(nm):
        out += luts[:, m, :][:, unpacked[:, m]]
    return out


@njit(parallel=True, nogil=True, cache=True)
def nearest_centroid(points: np.ndarray, centroids: np.ndarray):
    """points (n, s) float32, centroids (K, s) float32 -> assign (n,) int64 (lowest index among
    ties), squared distance (n,) float32."""
    n, dim = points.shape
    nc = centroids.shape[0]
    assign = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    for i in prange(n):
        best = np.inf
        best_c = 0
        for c in range(nc):
            d = np.float32(0.0)
            for j in range(dim):
                t = points[i, j] - centroids[c, j]
                d += t * t
            if d < best:
                best = d
                best_c = c
        assign[i] = best_c
        dist[i] = best
    return assign, dist


def nearest_centroid_numpy(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twin of `nearest_centroid` -> assign (n,) int64, squared distance (n,) float32."""
    diff = points[:, None, :] - centroids[None, :, :]
    d = np.einsum("ncs,ncs->nc", diff, diff).astype(np.float32)
    if d.shape[1] == 0:
        return np.zeros(points.shape[0], np.int64), np.full(points.shape[0], np.inf, np.float32)
    assign = d.argmin(axis=1).astype(np.int64)
    return assign, d[np.arange(points.shape[0]), assign]
