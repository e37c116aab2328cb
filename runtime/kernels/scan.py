"""Fused scan + top-k kernels over compressed codes: Hamming on packed bits, ADC on PQ codes.

Each kernel splits the rows into `nchunks` contiguous chunks; a task is one (query, chunk) pair
and keeps its own bounded heap (see `topk.py`); `topk.merge_partials` then merges the chunk heaps.
Keys follow the top-k convention: larger is better, so Hamming distances come out negated.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from runtime.kernels.intrinsics import (
    STREAM_PREFETCH_BYTES,
    load_word,
    popcount64,
    prefetch_row,
    target_has_vector_popcount,
    thread_count,
)
from runtime.kernels.topk import heap_push, merge_partials, partial_heaps

WORD_LOADS = sys.byteorder == "little"
"""Whether the ADC scan may read 8-bit codes eight to a word (`intrinsics.load_word`)."""

ROW_BLOCK = 512
"""Rows scanned for every query before moving on: their codes stay in L1/L2 across queries."""


CHUNK_ROWS = 32768
"""Rows a scan chunk holds at least (`chunk_count`)."""


@njit(nogil=True, cache=True)
def chunk_count(rows: int) -> int:
    """How many chunks a scan of `rows` rows splits into: one a thread (numba's thread count for
    the calling thread), at most one per CHUNK_ROWS rows, at least one. A kernel call, not
    `numba.get_num_threads()`: that took ~25 µs of a search whose code was out of cache, this ~6."""
    return max(1, min(thread_count(), (rows + CHUNK_ROWS - 1) // CHUNK_ROWS))


@njit(nogil=True, cache=True)
def _chunk_bounds(n: int, nchunks: int, c: int) -> tuple[int, int]:
    size = (n + nchunks - 1) // nchunks
    start = min(n, c * size)
    return start, min(n, start + size)


HAMMING_BLOCK = 256
"""Rows whose distances one query computes at a time: a branch-free pass, then a heap pass only
when the block's best can enter."""


@njit(inline="always", nogil=True, cache=True)
def _block_distances(
    flat: np.ndarray, words: int, start: int, stop: int, query: np.ndarray, dist: np.ndarray, prefetch: bool
) -> int:
    """dist[i] = Hamming distance of row start + i to query (W,) uint64, for rows start..stop-1 of
    codes flattened to (n * W,) uint64; returns the smallest. Offsets are unsigned so no index
    wrap-around code keeps the loop from vectorizing; `prefetch` (a literal at each call site)
    prefetches each row's line `STREAM_PREFETCH_BYTES` ahead, which stops the vectorizer."""
    best = np.int64(words * 64 + 1)
    count = np.uint64(stop - start)
    w = np.uint64(words)
    base = np.uint64(start) * w
    ahead = np.uint64(STREAM_PREFETCH_BYTES // 8)
    if words == 4:
        q0, q1, q2, q3 = query[0], query[1], query[2], query[3]
        for i in range(count):
            o = base + i * w
            if prefetch:
                prefetch_row(flat, np.int64(o + ahead), 0)
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
            if prefetch:
                prefetch_row(flat, np.int64(o + ahead), 0)
            d = np.int64(popcount64(flat[o] ^ q0) + popcount64(flat[o + np.uint64(1)] ^ q1))
            dist[i] = d
            best = min(best, d)
    else:
        for i in range(count):
            o = base + i * w
            if prefetch:
                prefetch_row(flat, np.int64(o + ahead), 0)
            d = np.int64(0)
            for j in range(w):
                d += np.int64(popcount64(flat[o + j] ^ query[j]))
            dist[i] = d
            best = min(best, d)
    return int(best)


@njit(nogil=True, cache=True)
def _hamming_block_distances(
    flat: np.ndarray, words: int, start: int, stop: int, query: np.ndarray, dist: np.ndarray, stream: bool
) -> int:
    """`_block_distances` for the first query to read a block (`stream`: its rows come from
    memory) or a later one (they are in cache).

    With a vector popcount (AVX-512 VPOPCNTDQ) the compiler vectorizes the loop. Without one its
    vectorized popcount (byte shuffles) waits on memory, and scalar popcounts with each row's line
    prefetched ahead are faster for the streaming query: 256-bit codes, one query, 1M rows, one
    thread on an AMD EPYC, 2.55-2.64 -> 2.15-2.17 ms. For the queries after it the rows are in
    cache and the vectorized loop is the faster one (64 queries: 0.76-0.96x Faiss with scalar
    popcounts for all, against 1.2x). Prefetching a few lines a group of rows instead did not help."""
    if stream and not target_has_vector_popcount():
        return _block_distances(flat, words, start, stop, query, dist, True)
    return _block_distances(flat, words, start, stop, query, dist, False)


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
            if _hamming_block_distances(flat, words, block, block_stop, queries[qi], dist, qi == 0) >= worst[qi]:
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
    part_keys, part_ids, part_sizes = partial_heaps(nq, nchunks, kk)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, np.int64(c))
        _hamming_scan_chunk(codes, queries, start, stop, part_keys, part_ids, part_sizes, np.int64(c))
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


PARTIAL_SUMS = 4
"""ADC adds a row's LUT entries in four partial sums: subspace m goes to partial m % 4, each
partial adds in ascending m from 0, and the key is (p0 + p1) + (p2 + p3). Four short add chains
instead of one M long let the out-of-order core overlap a row's adds; with the word loads of
`_word_sums` that took 20 % off an M = 16 scan on an AMD EPYC. Every ADC kernel and the numpy
twin add in exactly this order, so keys agree bit for bit wherever they are computed."""


@njit(inline="always", nogil=True, cache=True)
def _code_row_sum(row: np.ndarray, lut: np.ndarray, four_bit: bool) -> np.float32:
    """Sum of one query's LUT entries, (M * K,) float32 flattened, for one row of codes: (M,)
    uint8, or (M/2,) uint8 with two 4-bit codes a byte (low nibble = even m) when four_bit; any
    stride. In the `PARTIAL_SUMS` order."""
    p0 = np.float32(0.0)
    p1 = np.float32(0.0)
    p2 = np.float32(0.0)
    p3 = np.float32(0.0)
    width = row.shape[0]
    if four_bit:
        # byte b holds subspaces 2b and 2b + 1: an even byte feeds p0, p1, an odd one p2, p3
        for b in range(0, width - width % 2, 2):
            p0 += lut[(2 * b) * 16 + (row[b] & 15)]
            p1 += lut[(2 * b + 1) * 16 + (row[b] >> 4)]
            p2 += lut[(2 * b + 2) * 16 + (row[b + 1] & 15)]
            p3 += lut[(2 * b + 3) * 16 + (row[b + 1] >> 4)]
        if width % 2:
            b = width - 1
            p0 += lut[(2 * b) * 16 + (row[b] & 15)]
            p1 += lut[(2 * b + 1) * 16 + (row[b] >> 4)]
    else:
        whole = width - width % 4
        for m in range(0, whole, 4):
            p0 += lut[m * 256 + row[m]]
            p1 += lut[(m + 1) * 256 + row[m + 1]]
            p2 += lut[(m + 2) * 256 + row[m + 2]]
            p3 += lut[(m + 3) * 256 + row[m + 3]]
        if whole < width:
            p0 += lut[whole * 256 + row[whole]]
        if whole + 1 < width:
            p1 += lut[(whole + 1) * 256 + row[whole + 1]]
        if whole + 2 < width:
            p2 += lut[(whole + 2) * 256 + row[whole + 2]]
    return (p0 + p1) + (p2 + p3)


@njit(nogil=True, cache=True)
def _adc_block_sums(
    codes: np.ndarray, lut: np.ndarray, start: int, stop: int, sums: np.ndarray, four_bit: bool
) -> None:
    """sums[i] = sum of LUT entries of row start + i, for rows start..stop-1 and one query."""
    for i in range(stop - start):
        sums[i] = _code_row_sum(codes[start + i], lut, four_bit)


@njit(inline="always", nogil=True, cache=True)
def _word_sums(
    flat: np.ndarray, offset_0: np.uint64, offset_1: np.uint64, width: int, lut_0: np.ndarray, lut_1: np.ndarray
) -> tuple[np.float32, np.float32]:
    """Sums of the 8-bit code row at `offset_0` of the flattened codes under lut_0 and of the row
    at `offset_1` under lut_1: two rows under one LUT, or one row under two (equal offsets; the
    compiler then loads each word once). width is a multiple of 8. In the `PARTIAL_SUMS` order.

    The scan is bound by load ports (a code byte and a LUT entry a subspace): reading the codes
    eight at a time in one word load and shifting the bytes out in ALU ports leaves the loads to
    the LUT. With the four partial sums of two streams interleaved the scan is as fast wherever the
    compiler places the loop; with one add chain a row its speed moved by up to 40 % with that."""
    w = np.uint64(width)
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    b0 = np.float32(0.0)
    b1 = np.float32(0.0)
    b2 = np.float32(0.0)
    b3 = np.float32(0.0)
    for j in range(w // np.uint64(8)):
        x: np.uint64 = load_word(flat, offset_0 + np.uint64(8) * j)
        y: np.uint64 = load_word(flat, offset_1 + np.uint64(8) * j)
        for half in range(np.uint64(2)):
            at = (np.uint64(8) * j + np.uint64(4) * half) * np.uint64(256)
            shift = np.uint64(32) * half
            a0 += lut_0[at + ((x >> shift) & np.uint64(255))]
            b0 += lut_1[at + ((y >> shift) & np.uint64(255))]
            a1 += lut_0[at + np.uint64(256) + ((x >> (shift + np.uint64(8))) & np.uint64(255))]
            b1 += lut_1[at + np.uint64(256) + ((y >> (shift + np.uint64(8))) & np.uint64(255))]
            a2 += lut_0[at + np.uint64(512) + ((x >> (shift + np.uint64(16))) & np.uint64(255))]
            b2 += lut_1[at + np.uint64(512) + ((y >> (shift + np.uint64(16))) & np.uint64(255))]
            a3 += lut_0[at + np.uint64(768) + ((x >> (shift + np.uint64(24))) & np.uint64(255))]
            b3 += lut_1[at + np.uint64(768) + ((y >> (shift + np.uint64(24))) & np.uint64(255))]
    return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@njit(inline="always", nogil=True, cache=True)
def _word_row_pairs(
    flat: np.ndarray, width: int, lut: np.ndarray, base: np.uint64, count: np.uint64, sums: np.ndarray
) -> np.uint64:
    """sums[i] for the `count` rows from byte `base` of the flattened codes, two rows at a time;
    returns the rows done (count rounded down to even). Callers pass `width` as a literal where
    they can: the row offsets then fold into the loads' displacements."""
    w = np.uint64(width)
    i = np.uint64(0)
    while i + np.uint64(2) <= count:
        offset = base + i * w
        sums[i], sums[i + np.uint64(1)] = _word_sums(flat, offset, offset + w, width, lut, lut)
        i += np.uint64(2)
    return i


@njit(inline="always", nogil=True, cache=True)
def _word_block_one(
    flat: np.ndarray, width: int, lut: np.ndarray, base: np.uint64, count: np.uint64, sums: np.ndarray
) -> None:
    """`_byte_block_sums` for one query and a width that is a multiple of 8: two rows at a time,
    which the out-of-order core overlaps (one at a time ran 1.5x slower)."""
    done = _word_row_pairs(flat, width, lut, base, count, sums)
    if done < count:
        # the byte path adds in the same order; a copy of the word path here made the compiler
        # spill registers in the loop above
        offset = base + done * np.uint64(width)
        sums[done] = _code_row_sum(flat[offset : offset + np.uint64(width)], lut, False)


@njit(inline="always", nogil=True, cache=True)
def _word_block_pair(
    flat: np.ndarray,
    width: int,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    base: np.uint64,
    count: np.uint64,
    sums_a: np.ndarray,
    sums_b: np.ndarray,
) -> None:
    """`_byte_block_sums` for two queries and a width that is a multiple of 8: each row's words
    are read once for both."""
    for i in range(count):
        offset = base + i * np.uint64(width)
        sums_a[i], sums_b[i] = _word_sums(flat, offset, offset, width, lut_a, lut_b)


# One compiled function a (width, one or two queries): compiled together, each loop kept its own
# constants in registers across the function, and the M = 16 loop spilled and ran 15 % slower.


@njit(nogil=True, cache=True)
def _word_block_one_16(flat: np.ndarray, lut: np.ndarray, base: np.uint64, count: np.uint64, sums: np.ndarray) -> None:
    _word_block_one(flat, 16, lut, base, count, sums)


@njit(nogil=True, cache=True)
def _word_block_one_32(flat: np.ndarray, lut: np.ndarray, base: np.uint64, count: np.uint64, sums: np.ndarray) -> None:
    _word_block_one(flat, 32, lut, base, count, sums)


@njit(nogil=True, cache=True)
def _word_block_one_any(
    flat: np.ndarray, width: int, lut: np.ndarray, base: np.uint64, count: np.uint64, sums: np.ndarray
) -> None:
    _word_block_one(flat, width, lut, base, count, sums)


@njit(nogil=True, cache=True)
def _word_block_pair_16(
    flat: np.ndarray,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    base: np.uint64,
    count: np.uint64,
    sums_a: np.ndarray,
    sums_b: np.ndarray,
) -> None:
    _word_block_pair(flat, 16, lut_a, lut_b, base, count, sums_a, sums_b)


@njit(nogil=True, cache=True)
def _word_block_pair_32(
    flat: np.ndarray,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    base: np.uint64,
    count: np.uint64,
    sums_a: np.ndarray,
    sums_b: np.ndarray,
) -> None:
    _word_block_pair(flat, 32, lut_a, lut_b, base, count, sums_a, sums_b)


@njit(nogil=True, cache=True)
def _word_block_pair_any(
    flat: np.ndarray,
    width: int,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    base: np.uint64,
    count: np.uint64,
    sums_a,
    sums_b,
) -> None:
    _word_block_pair(flat, width, lut_a, lut_b, base, count, sums_a, sums_b)


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
    when `pair`, two. Widths that are a multiple of 8 take the word path, M = 16 and 32 (and the
    binary codec's 8-bit LUT widths) with unrolled bodies; the rest a row at a time."""
    w = np.uint64(width)
    base = np.uint64(start) * w
    count = np.uint64(stop - start)
    if WORD_LOADS and width % 8 == 0:
        if width == 16 and pair:
            _word_block_pair_16(flat, lut_a, lut_b, base, count, sums_a, sums_b)
        elif width == 32 and pair:
            _word_block_pair_32(flat, lut_a, lut_b, base, count, sums_a, sums_b)
        elif pair:
            _word_block_pair_any(flat, width, lut_a, lut_b, base, count, sums_a, sums_b)
        elif width == 16:
            _word_block_one_16(flat, lut_a, base, count, sums_a)
        elif width == 32:
            _word_block_one_32(flat, lut_a, base, count, sums_a)
        else:
            _word_block_one_any(flat, width, lut_a, base, count, sums_a)
    else:
        for i in range(count):
            row = flat[base + i * w : base + i * w + w]
            sums_a[i] = _code_row_sum(row, lut_a, False)
            if pair:
                sums_b[i] = _code_row_sum(row, lut_b, False)


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
    part_keys, part_ids, part_sizes = partial_heaps(nq, nchunks, kk)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, np.int64(c))
        _adc_scan_chunk(
            codes, flat, row_mul, row_add, start, stop, part_keys, part_ids, part_sizes, np.int64(c), four_bit
        )
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
            out[qi, j] = _code_row_sum(codes[candidates[qi, j]], flat[qi], four_bit)
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
    """Twin of the ADC scan: -> (q, n) float32 sums of LUT entries, exactly as the kernels
    accumulate them (float32, in the `PARTIAL_SUMS` order)."""
    unpacked = unpack_codes_numpy(codes, four_bit)
    nq, nm = luts.shape[0], luts.shape[1]
    partial = np.zeros((PARTIAL_SUMS, nq, codes.shape[0]), dtype=np.float32)
    for m in range(nm):
        partial[m % PARTIAL_SUMS] += luts[:, m, :][:, unpacked[:, m]]
    return (partial[0] + partial[1]) + (partial[2] + partial[3])


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
