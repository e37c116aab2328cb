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


HAMMING_BLOCK = 256
"""Rows whose distances one query computes at a time: a branch-free pass the compiler vectorizes
(vector popcount where the CPU has one), then a heap pass only when the block's best can enter."""


@njit(nogil=True, cache=True)
def _hamming_block_distances(
    flat: np.ndarray, words: int, start: int, stop: int, query: np.ndarray, dist: np.ndarray
) -> int:
    """dist[i] = Hamming distance of row start + i to query (W,) uint64, for rows start..stop-1 of
    codes flattened to (n * W,) uint64; returns the smallest. Offsets are unsigned so no index
    wrap-around code keeps the loop from vectorizing."""
    best = np.int64(words * 64 + 1)
    count = np.uint64(stop - start)
    w = np.uint64(words)
    base = np.uint64(start) * w
    if words == 4:
        q0, q1, q2, q3 = query[0], query[1], query[2], query[3]
        for i in range(count):
            o = base + i * w
            d = np.int64(
                popcount64(flat[o] ^ q0)
                + popcount64(flat[o + np.uint64(1)] ^ q1)
                + popcount64(flat[o + np.uint64(2)] ^ q2)
                + popcount64(flat[o + np.uint64(3)] ^ q3)
            )
            dist[i] = d
            best = min(best, d)
    elif words == 2:
        q0, q1 = query[0], query[1]
        for i in range(count):
            o = base + i * w
            d = np.int64(popcount64(flat[o] ^ q0) + popcount64(flat[o + np.uint64(1)] ^ q1))
            dist[i] = d
            best = min(best, d)
    else:
        for i in range(count):
            o = base + i * w
            d = np.int64(0)
            for j in range(w):
                d += np.int64(popcount64(flat[o + j] ^ query[j]))
            dist[i] = d
            best = min(best, d)
    return int(best)


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
    words = codes.shape[1]
    flat = codes.reshape(codes.size)
    kk = part_keys.shape[2]
    dist = np.empty(HAMMING_BLOCK, dtype=np.int64)
    # a row must be strictly closer than the worst kept one: ids ascend, so a tie loses
    worst = np.full(queries.shape[0], np.int64(words * 64 + 1))
    for block in range(start, stop, HAMMING_BLOCK):
        block_stop = min(stop, block + HAMMING_BLOCK)
        for qi in range(queries.shape[0]):
            if _hamming_block_distances(flat, words, block, block_stop, queries[qi], dist) >= worst[qi]:
                continue
            heap_keys = part_keys[qi, chunk]
            heap_ids = part_ids[qi, chunk]
            size = part_sizes[qi, chunk]
            limit = worst[qi]
            for i in range(block_stop - block):
                if dist[i] < limit:
                    size = heap_push(heap_keys, heap_ids, size, -np.float32(dist[i]), block + i)
                    if size == kk:
                        limit = np.int64(-heap_keys[0])
            part_sizes[qi, chunk] = size
            worst[qi] = limit


@njit(parallel=True, nogil=True, cache=True)
def hamming_topk(codes: np.ndarray, queries: np.ndarray, k: int, nchunks: int):
    """codes (n, W) uint64 C-contiguous, queries (q, W) uint64 -> keys (q, k') float32
    (= -distance), ids (q, k') int64, best first; k' = min(k, n). A task is a chunk of rows,
    scanned block by block for every query, so codes are read from memory once."""
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
def _adc_block_sums(
    codes: np.ndarray, lut: np.ndarray, start: int, stop: int, sums: np.ndarray, four_bit: bool
) -> None:
    """sums[i] = sum of LUT entries of row start + i, for rows start..stop-1 and one query."""
    for i in range(stop - start):
        sums[i] = _adc_row(codes, start + i, lut, 16 if four_bit else 256, four_bit)


@njit(inline="always", nogil=True, cache=True)
def _byte_lut_sums(
    flat: np.ndarray, offset: np.uint64, width: int, lut_a: np.ndarray, lut_b: np.ndarray, pair: bool
) -> tuple[np.float32, np.float32]:
    """Sums over one row of 8-bit codes at `offset` of the flattened codes, for one LUT or two.
    Offsets are unsigned (no index wrap-around code), and callers pass `width` as a literal where
    they can, so the loop unrolls."""
    sa = np.float32(0.0)
    sb = np.float32(0.0)
    for m in range(np.uint64(width)):
        at = m * np.uint64(256) + np.uint64(flat[offset + m])
        sa += lut_a[at]
        if pair:
            sb += lut_b[at]
    return sa, sb


@njit(nogil=True, cache=True)
def _byte_block_sums(
    flat: np.ndarray,
    width: int,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    start: int,
    stop: int,
    sums_a: np.ndarray,
    sums_b: np.ndarray,
    pair: bool,
) -> None:
    """`_adc_block_sums` over 8-bit codes flattened to (n * M,) uint8, for one query (lut_a) or,
    when `pair`, two (each code byte read once for both: two independent add chains a row).
    M = 16 and 32 (and 8-bit binary LUT widths) get unrolled bodies."""
    w = np.uint64(width)
    base = np.uint64(start) * w
    count = np.uint64(stop - start)
    if width == 16:
        for i in range(count):
            sums_a[i], sums_b[i] = _byte_lut_sums(flat, base + i * w, 16, lut_a, lut_b, pair)
    elif width == 32:
        for i in range(count):
            sums_a[i], sums_b[i] = _byte_lut_sums(flat, base + i * w, 32, lut_a, lut_b, pair)
    else:
        for i in range(count):
            sums_a[i], sums_b[i] = _byte_lut_sums(flat, base + i * w, width, lut_a, lut_b, pair)


@njit(nogil=True, cache=True)
def _offer_block(
    sums: np.ndarray,
    row_mul: np.ndarray,
    row_add: np.ndarray,
    start: int,
    stop: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
) -> int:
    """Offer keys row_mul[r] * sums[r - start] + row_add[r] of rows start..stop-1 to one heap
    (empty row_mul / row_add mean 1 / 0); returns its new size."""
    kk = heap_keys.shape[0]
    has_mul = row_mul.shape[0] > 0
    has_add = row_add.shape[0] > 0
    # ids ascend, so a key equal to the worst kept one loses: reject with one compare
    worst = heap_keys[0] if size == kk else -np.inf
    if size == kk and not has_mul and not has_add:
        # once the heap is full most blocks hold no key that enters: a branch-free count, which
        # vectorizes, skips them instead of a compare and branch a row (8-11 % of a PQ scan on an
        # AMD EPYC). PQ keys are the sums themselves; with a row_mul or row_add (binary ADC) the
        # count's loop did not vectorize and gained nothing
        above = 0
        for i in range(stop - start):
            above += sums[i] > worst
        if above == 0:
            return size
    for i in range(stop - start):
        key = sums[i]
        if has_mul:
            key = key * row_mul[start + i]
        if has_add:
            key = key + row_add[start + i]
        if key > worst:
            size = heap_push(heap_keys, heap_ids, size, key, start + i)
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
    nq = flat_luts.shape[0]
    width = codes.shape[1]
    flat_codes = codes.reshape(codes.size)
    sums_a = np.empty(ROW_BLOCK, dtype=np.float32)
    sums_b = np.empty(ROW_BLOCK, dtype=np.float32)
    for block in range(start, stop, ROW_BLOCK):
        block_stop = min(stop, block + ROW_BLOCK)
        qa = 0
        while qa < nq:
            pair = qa + 1 < nq and not four_bit
            qb = qa + 1 if pair else qa
            if four_bit:
                _adc_block_sums(codes, flat_luts[qa], block, block_stop, sums_a, True)
            else:
                _byte_block_sums(
                    flat_codes, width, flat_luts[qa], flat_luts[qb], block, block_stop, sums_a, sums_b, pair
                )
            part_sizes[qa, chunk] = _offer_block(
                sums_a,
                row_mul,
                row_add,
                block,
                block_stop,
                part_keys[qa, chunk],
                part_ids[qa, chunk],
                part_sizes[qa, chunk],
            )
            if pair:
                part_sizes[qb, chunk] = _offer_block(
                    sums_b,
                    row_mul,
                    row_add,
                    block,
                    block_stop,
                    part_keys[qb, chunk],
                    part_ids[qb, chunk],
                    part_sizes[qb, chunk],
                )
            qa += 2 if pair else 1


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
