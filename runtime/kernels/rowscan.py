"""Exact search on row-wise quantized, fp16 and float32 rows: an asymmetric scan with a fused top-k.

The query stays float32 and each stored row is read once, as it is stored:
- int8 / int4 rows (FBGEMM fused layout, see `rowwise.py`): value = scale · code + bias, so
  <q, x> = scale · <q, codes> + bias · sum(q); the codes enter the dot product as small integers
  converted to float32, never dequantized into a float copy of the row;
- fp16 rows: the half bits are widened in registers (`half_to_float`); float32 rows are read as
  their bits (uint32), so one compiled kernel serves them beside the integer codes.
For l2 the key is 2 <q, x> - |x|^2, with |x|^2 of each decoded row computed per block of rows
(once for all queries) while the block is in cache, so nothing extra is stored; the squared
distance is |q|^2 - key.

Tasks are row chunks (as in `scan.py`): every chunk keeps a heap per query and scans its rows block
by block for every query, so a block's codes stay in L2 while all queries pass over them.

With TILED_MIN_QUERIES queries or more, the dot products are computed TILE rows by TILE queries at
a time (`_tile_dots`): one pass over the columns reads four rows and four queries and keeps sixteen
independent sums in registers, so each code is loaded and converted once for four queries instead
of once for each, and the multiply-adds of one pass do not wait on each other. int4 and int2 codes
are widened to float32 once a block first (reading nibbles inside the tile cost more from 16
queries).
The dot products are float reductions that the compiler may reorder (vectorized), so the kernel
agrees with the numpy twin to float32 rounding, and exactly where sums are exact in float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from runtime.kernels.intrinsics import (
    STREAM_PREFETCH_BYTES,
    float_from_bits,
    half_from_bytes,
    half_to_float,
    prefetch_row,
)
from runtime.kernels.scan import _chunk_bounds, _offer_block
from runtime.kernels.topk import merge_partials, partial_heaps

SCAN_BLOCK_ROWS = 1024
"""Rows whose keys one query computes before they are offered to its heap. Each block costs a
call, a heap check and a restart of the row loop: on 1M x 128 rows on an AMD EPYC (Zen 4), 1,024
rows a block instead of 256 took nq = 1 from 11.4 to 10.3 ms for fp16 and 9.9 to 9.1 ms for int8 at
one thread (7.1 to 6.5 and 7.1 to 6.0 ms at two), and int8 at nq = 64 from 567 to 534 ms."""

SCAN_BLOCK_BYTES = 256 * 1024
"""The most code bytes a block holds, so every query after the first finds the block in L2."""


@njit(inline="always", nogil=True, cache=True)
def scan_block_rows(row_bytes: int) -> int:
    """Rows a block of the scan holds for rows of `row_bytes` bytes: SCAN_BLOCK_ROWS, fewer for
    rows so wide that SCAN_BLOCK_BYTES would not hold them (at least 16)."""
    return max(16, min(SCAN_BLOCK_ROWS, SCAN_BLOCK_BYTES // max(1, row_bytes)))


REORDERABLE = {"reassoc", "contract"}
"""Float flags for the dot products: reassociation lets a sum vectorize, contraction makes FMAs."""


@njit(inline="always", nogil=True, cache=True)
def _scale_bias(rows: np.ndarray, r: int, width: int) -> tuple[np.float32, np.float32]:
    """The fp16 scale and bias stored after the `width` code bytes of fused row r."""
    return half_from_bytes(rows[r, width], rows[r, width + 1]), half_from_bytes(rows[r, width + 2], rows[r, width + 3])


@njit(inline="always", nogil=True, cache=True)
def _prefetch_stream(rows: np.ndarray, r: int, stream: bool) -> None:
    """For the query that reads a block from memory (`stream`), ask for the row STREAM_PREFETCH_BYTES
    ahead of row r now: the hardware's stream prefetcher alone leaves one thread waiting on DRAM.
    Later queries find the block in cache and skip it."""
    if stream:
        row_bytes = rows.shape[1] * rows.itemsize
        ahead = r + max(1, STREAM_PREFETCH_BYTES // row_bytes)
        for line in range(0, row_bytes, 64):
            prefetch_row(rows, ahead, line)


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _int8_dots(rows: np.ndarray, q: np.ndarray, start: int, stop: int, stream: bool, out: np.ndarray) -> None:
    """out[i] = <q, codes of row start + i> for int8 rows (n, d + 4) uint8, q (d,) float32."""
    dim = q.shape[0]
    for i in range(stop - start):
        _prefetch_stream(rows, start + i, stream)
        row = rows[start + i]
        acc = np.float32(0.0)
        for j in range(dim):
            acc += q[j] * np.float32(row[j])
        out[i] = acc


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _int4_dots(rows: np.ndarray, q_split: np.ndarray, start: int, stop: int, stream: bool, out: np.ndarray) -> None:
    """out[i] = <q, codes of row start + i> for int4 rows (n, ceil(d/2) + 4) uint8; q_split
    (2, ceil(d/2)) float32: the query's even and odd columns (zero-padded), matching the low and
    high nibbles of each byte."""
    q_even, q_odd = q_split[0], q_split[1]
    for i in range(stop - start):
        _prefetch_stream(rows, start + i, stream)
        row = rows[start + i]
        acc = np.float32(0.0)
        for b in range(q_split.shape[1]):
            byte = row[b]
            acc += q_even[b] * np.float32(byte & 15) + q_odd[b] * np.float32(byte >> 4)
        out[i] = acc


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _int2_dots(rows: np.ndarray, q_split: np.ndarray, start: int, stop: int, stream: bool, out: np.ndarray) -> None:
    """out[i] = <q, codes of row start + i> for int2 rows (n, ceil(d/4) + 4) uint8; q_split
    (4, ceil(d/4)) float32: row s holds the query's columns 4b + s (zero-padded), matching bits
    2s and 2s + 1 of byte b."""
    q0, q1, q2, q3 = q_split[0], q_split[1], q_split[2], q_split[3]
    for i in range(stop - start):
        _prefetch_stream(rows, start + i, stream)
        row = rows[start + i]
        acc = np.float32(0.0)
        for b in range(q_split.shape[1]):
            byte = row[b]
            acc += (
                q0[b] * np.float32(byte & 3)
                + q1[b] * np.float32((byte >> 2) & 3)
                + q2[b] * np.float32((byte >> 4) & 3)
                + q3[b] * np.float32(byte >> 6)
            )
        out[i] = acc


def _column_value(row: np.ndarray, j: int) -> np.float32:
    """Column j of a row as float32 (compiled per row dtype, below): fp16 or float32 bits, int4 /
    int2 codes widened to float32 (the tiled scan), or int8 codes."""
    raise NotImplementedError("only called from compiled kernels")


@overload(_column_value, inline="always")
def _column_value_typed(row, j):  # type: ignore[no-untyped-def]
    """uint16 rows hold fp16 bits, uint32 rows float32 bits; uint8 rows int8 codes; float32 rows
    int4 / int2 codes widened (the tiled scan)."""
    if row.dtype == types.uint16:
        return lambda row, j: half_to_float(row[j])
    if row.dtype == types.uint32:
        return lambda row, j: float_from_bits(row[j])
    return lambda row, j: np.float32(row[j])


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _float_dots(values: np.ndarray, q: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """out[i] = <q, row start + i> for fp16 or float32 rows given as their bits, (n, d) uint16 or
    uint32. No prefetch: these rows stream at the memory's bandwidth already, and prefetching
    fp16 rows ahead made one thread 5-8 % slower (1M x 128 on an AMD EPYC, Zen 4), where it made
    int8 rows ~10 % faster."""
    dim = q.shape[0]
    for i in range(stop - start):
        row = values[start + i]
        acc = np.float32(0.0)
        for j in range(dim):
            acc += q[j] * _column_value(row, j)
        out[i] = acc


TILE = 4
"""Rows, and queries, that one tile of the tiled scan holds: 16 dot products whose partial sums
stay in registers while one pass over the columns reads each of the 4 rows and 4 queries once."""

TILED_MIN_QUERIES = 4
"""Queries from which the tiled scan is used. Fewer would be padded to a tile of 4 with zero
queries, which costs more than the scan one query at a time saves; from 4 on the tiles took 1.4-1.9x less
time for int8, 1.7-3.5x for int4 and 1.1-1.4x for fp16 (50,000 and 1M rows x 128, nq 4 to 64, one
and two threads, AMD EPYC Zen 4), where at 3 queries the two were even."""

TILED_BLOCK_ROWS = 256
"""Rows whose dot products with every query the tiled scan computes before offering them to the
heaps: the (queries, 256) float32 sums stay in L2 up to several hundred queries (256 KiB at 256)."""


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _tile_dots(
    rows: np.ndarray, first: int, last: int, queries: np.ndarray, q0: int, dots: np.ndarray, d0: int
) -> None:
    """dots[q0 + a, d0 + b] = <queries[q0 + a], rows[min(first + b, last)]> for a, b < TILE (= 4).

    rows (n, >= C) uint8 (fused int8 rows, of which the C code bytes are read), uint16 (fp16 bits),
    uint32 (float32 bits) or float32 (int4 / int2 codes widened), read as `_column_value`; queries
    (Q, C) float32, zero past the table's d columns; dots (Q, R) float32. Past `last` the last row repeats, so a block's
    final tile reads no row it does not hold. The sixteen sums are scalars the compiler vectorizes
    over the columns, one register each; written out, because a local array of sums would live in
    memory."""
    columns = queries.shape[1]
    x0 = rows[first]
    x1 = rows[min(first + 1, last)]
    x2 = rows[min(first + 2, last)]
    x3 = rows[min(first + 3, last)]
    y0 = queries[q0]
    y1 = queries[q0 + 1]
    y2 = queries[q0 + 2]
    y3 = queries[q0 + 3]
    s00 = s01 = s02 = s03 = np.float32(0.0)
    s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = np.float32(0.0)
    s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(columns):
        c0 = _column_value(x0, j)
        c1 = _column_value(x1, j)
        c2 = _column_value(x2, j)
        c3 = _column_value(x3, j)
        e = y0[j]
        s00 += e * c0
        s01 += e * c1
        s02 += e * c2
        s03 += e * c3
        e = y1[j]
        s10 += e * c0
        s11 += e * c1
        s12 += e * c2
        s13 += e * c3
        e = y2[j]
        s20 += e * c0
        s21 += e * c1
        s22 += e * c2
        s23 += e * c3
        e = y3[j]
        s30 += e * c0
        s31 += e * c1
        s32 += e * c2
        s33 += e * c3
    dots[q0, d0] = s00
    dots[q0, d0 + 1] = s01
    dots[q0, d0 + 2] = s02
    dots[q0, d0 + 3] = s03
    dots[q0 + 1, d0] = s10
    dots[q0 + 1, d0 + 1] = s11
    dots[q0 + 1, d0 + 2] = s12
    dots[q0 + 1, d0 + 3] = s13
    dots[q0 + 2, d0] = s20
    dots[q0 + 2, d0 + 1] = s21
    dots[q0 + 2, d0 + 2] = s22
    dots[q0 + 2, d0 + 3] = s23
    dots[q0 + 3, d0] = s30
    dots[q0 + 3, d0 + 1] = s31
    dots[q0 + 3, d0 + 2] = s32
    dots[q0 + 3, d0 + 3] = s33


@njit(nogil=True, cache=True)
def _widen_codes(rows: np.ndarray, bits: int, start: int, stop: int, out: np.ndarray) -> None:
    """out[i, c] = code c of int4 or int2 row start + i as float32 (byte b holds codes
    b·(8/bits) .. from its low bits up); out (R, P·8/bits) float32 for rows (n, P + 4) uint8. The
    codes are widened once a block for all queries: reading nibbles inside `_tile_dots` took longer
    from 16 queries on."""
    if bits == 4:  # written out: a loop over the nibbles took int4 at nq = 64 from 34 to 44 ms (200k rows)
        for i in range(stop - start):
            row = rows[start + i]
            for b in range(out.shape[1] // 2):
                byte = row[b]
                out[i, 2 * b] = np.float32(byte & 15)
                out[i, 2 * b + 1] = np.float32(byte >> 4)
        return
    for i in range(stop - start):
        row = rows[start + i]
        for b in range(out.shape[1] // 4):
            byte = row[b]
            out[i, 4 * b] = np.float32(byte & 3)
            out[i, 4 * b + 1] = np.float32((byte >> 2) & 3)
            out[i, 4 * b + 2] = np.float32((byte >> 4) & 3)
            out[i, 4 * b + 3] = np.float32(byte >> 6)


@njit(nogil=True, cache=True)
def _scan_chunk_tiled(
    rows: np.ndarray,
    bits: int,
    queries: np.ndarray,
    q_sums: np.ndarray,
    dim: int,
    l2: bool,
    start: int,
    stop: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """The tiled scan of rows start..stop-1 for all queries, into one heap per query.

    queries (Q, C) float32: the nq = len(q_sums) queries of d = `dim` columns, zero-padded to the
    columns the tiles read (int8: the code bytes; int4 / int2: two / four a code byte; fp16 and
    float32: d) and to Q rows, a multiple of TILE; q_sums (nq,) float32; heap_keys / heap_ids
    (nq, k'), sizes (nq,) int64: this chunk's heaps."""
    nq = q_sums.shape[0]
    padded_queries, columns = queries.shape
    fused = bits < 16
    width = rows.shape[1] - 4
    block_rows = TILED_BLOCK_ROWS
    if bits < 8:  # widened codes take 4 bytes a column: wide rows get fewer a block
        fit = max(TILE, SCAN_BLOCK_BYTES // max(1, 4 * columns))
        block_rows = min(block_rows, fit - fit % TILE)
    widened = np.empty((block_rows if bits < 8 else 0, columns), dtype=np.float32)
    dots = np.empty((padded_queries, block_rows), dtype=np.float32)
    keys = np.empty(block_rows, dtype=np.float32)
    norms = np.zeros(block_rows, dtype=np.float32)
    scales = np.empty(block_rows, dtype=np.float32)
    biases = np.empty(block_rows, dtype=np.float32)
    no_rows = np.empty(0, dtype=np.float32)
    for block in range(start, stop, block_rows):
        block_stop = min(stop, block + block_rows)
        count = block_stop - block
        if bits < 8:
            _widen_codes(rows, bits, block, block_stop, widened)
            for r0 in range(0, count, TILE):
                for q0 in range(0, padded_queries, TILE):
                    _tile_dots(widened, r0, count - 1, queries, q0, dots, r0)
        else:
            for r0 in range(block, block_stop, TILE):
                for q0 in range(0, padded_queries, TILE):
                    _tile_dots(rows, r0, block_stop - 1, queries, q0, dots, r0 - block)
        if fused:
            for i in range(count):
                scales[i], biases[i] = _scale_bias(rows, block + i, width)
        if l2:
            for i in range(count):
                norms[i] = decoded_norm(rows, bits, dim, block + i)
        for qi in range(nq):
            for i in range(count):
                key = dots[qi, i]
                if fused:  # fp16 keys are the dot products as they are, as in `_block_keys`
                    key = scales[i] * key + biases[i] * q_sums[qi]
                keys[i] = np.float32(2.0) * key - norms[i] if l2 else key
            sizes[qi] = _offer_block(keys, no_rows, no_rows, block, block_stop, heap_keys[qi], heap_ids[qi], sizes[qi])


@njit(nogil=True, cache=True)
def _block_keys(
    rows: np.ndarray,
    bits: int,
    q: np.ndarray,
    q_split: np.ndarray,
    q_sum: np.float32,
    block_norms: np.ndarray,
    l2: bool,
    start: int,
    stop: int,
    stream: bool,
    keys: np.ndarray,
) -> None:
    """keys[i] for rows start..stop-1: <q, x> (ip), or 2 <q, x> - |x|^2 with |x|^2 of row
    start + i in block_norms[i] (l2); q_split: q's columns split by their place in a code byte
    (int4, int2: `_int4_dots`, `_int2_dots`); `stream`: this query reads the block from memory."""
    if bits >= 16:
        _float_dots(rows, q, start, stop, keys)
    else:
        if bits == 8:
            _int8_dots(rows, q, start, stop, stream, keys)
        elif bits == 4:
            _int4_dots(rows, q_split, start, stop, stream, keys)
        else:
            _int2_dots(rows, q_split, start, stop, stream, keys)
        width = rows.shape[1] - 4
        for i in range(stop - start):
            scale, bias = _scale_bias(rows, start + i, width)
            keys[i] = scale * keys[i] + bias * q_sum
    if l2:
        for i in range(stop - start):
            keys[i] = np.float32(2.0) * keys[i] - block_norms[i]


@njit(parallel=True, nogil=True, cache=True)
def quantized_topk(
    rows: np.ndarray,
    bits: int,
    queries: np.ndarray,
    l2: bool,
    k: int,
    nchunks: int,
):
    """Top-k by inner product (or, when l2, by 2 <q, x> - |x|^2) over stored rows.

    rows: int8 / int4 / int2 fused rows (n, P + 4) uint8 (bits 8 / 4 / 2), fp16 bits (n, d) uint16
    (bits 16), or float32 bits (n, d) uint32 (bits 32, `rows.view(np.uint32)`); queries (q, d)
    float32. -> keys (q, k') float32, ids (q, k') int64, best first, k' = min(k, n); keys are
    <q, x> for ip and 2 <q, x> - |x|^2 for l2. From TILED_MIN_QUERIES queries on the tiled scan
    sums each dot product in another order, so a query's keys may differ in the last float32 bits
    with the number of queries it came with.
    """
    n = rows.shape[0]
    nq, dim = queries.shape
    tiled = nq >= TILED_MIN_QUERIES
    # the one-query kernels of int4 / int2 codes read a query's columns split by their place in a byte
    parts = 8 // bits if bits < 8 and not tiled else 1
    q_split = np.zeros((nq, parts, (dim + parts - 1) // parts if parts > 1 else 0), dtype=np.float32)
    q_sums = np.zeros(nq, dtype=np.float32)
    for qi in range(nq):
        for j in range(dim):
            q_sums[qi] += queries[qi, j]
            if parts > 1:
                q_split[qi, j % parts, j // parts] = queries[qi, j]
    kk = min(k, n)
    part_keys, part_ids, part_sizes = partial_heaps(nq, nchunks, kk)
    if tiled:
        columns = rows.shape[1] if bits >= 16 else (rows.shape[1] - 4) * (8 // bits)
        padded = np.zeros(((nq + TILE - 1) // TILE * TILE, columns), dtype=np.float32)
        padded[:nq, :dim] = queries
        for c in prange(nchunks):
            start, stop = _chunk_bounds(n, nchunks, np.int64(c))
            _scan_chunk_tiled(
                rows, bits, padded, q_sums, dim, l2, start, stop, part_keys[:, c], part_ids[:, c], part_sizes[:, c]
            )
        return merge_partials(part_keys, part_ids, part_sizes, kk)
    no_rows = np.empty(0, dtype=np.float32)
    block_rows = scan_block_rows(rows.shape[1] * rows.itemsize)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, np.int64(c))
        keys = np.empty(block_rows, dtype=np.float32)
        norms = np.empty(block_rows, dtype=np.float32)
        for block in range(start, stop, block_rows):
            block_stop = min(stop, block + block_rows)
            if l2:
                for i in range(block_stop - block):
                    norms[i] = decoded_norm(rows, bits, dim, block + i)
            for qi in range(nq):
                # the first query reads the block from memory; for l2 the norms' pass above did,
                # without a prefetch (l2 scans were left as they were)
                stream = qi == 0 and not l2
                _block_keys(
                    rows,
                    bits,
                    queries[qi],
                    q_split[qi],
                    q_sums[qi],
                    norms,
                    l2,
                    block,
                    block_stop,
                    stream,
                    keys,
                )
                part_sizes[qi, c] = _offer_block(
                    keys, no_rows, no_rows, block, block_stop, part_keys[qi, c], part_ids[qi, c], part_sizes[qi, c]
                )
    return merge_partials(part_keys, part_ids, part_sizes, kk)


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def decoded_norm(rows: np.ndarray, bits: int, dim: int, r: int) -> np.float32:
    """|x|^2 of decoded row r: fused rows (bits 8 / 4 / 2), fp16 bits (bits 16) or float32 bits
    (bits 32)."""
    acc = np.float32(0.0)
    if bits >= 16:
        row = rows[r]
        for j in range(dim):
            value = _column_value(row, j)
            acc += value * value
        return acc
    scale, bias = _scale_bias(rows, r, rows.shape[1] - 4)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    for j in range(dim):
        code = (rows[r, j // per_byte] >> ((j % per_byte) * bits)) & mask
        v = scale * np.float32(code) + bias
        acc += v * v
    return acc


# ---- numpy twins ------------------------------------------------------------------------------
def quantized_keys_numpy(rows: np.ndarray, bits: int, queries: np.ndarray, dim: int, l2: bool) -> np.ndarray:
    """Twin of the scan's keys: -> (q, n) float32, scale · <q, codes> + bias · sum(q) for fused rows
    (fp16: <q, x>), then 2 · key - |x|^2 for l2, in float64 and rounded once."""
    q = queries.astype(np.float64)
    if bits >= 16:
        decoded = rows.view(np.float16 if bits == 16 else np.float32).astype(np.float64)
        keys = q @ decoded.T
    else:
        pbytes = rows.shape[1] - 4
        scale = rows[:, pbytes : pbytes + 2].copy().view(np.float16).astype(np.float64)[:, 0]
        bias = rows[:, pbytes + 2 :].copy().view(np.float16).astype(np.float64)[:, 0]
        per_byte = 8 // bits
        codes = np.empty((rows.shape[0], pbytes * per_byte), dtype=np.float64)
        for s in range(per_byte):
            codes[:, s::per_byte] = (rows[:, :pbytes] >> (s * bits)) & ((1 << bits) - 1)
        codes = codes[:, :dim]
        keys = (q @ codes.T) * scale[None, :] + q.sum(axis=1)[:, None] * bias[None, :]
        decoded = codes * scale[:, None] + bias[:, None]
    if l2:
        keys = 2 * keys - np.einsum("nd,nd->n", decoded, decoded)[None, :]
    return keys.astype(np.float32)


def decoded_norms_numpy(rows: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Twin of `decoded_norm` for every row -> (n,) float32."""
    if bits >= 16:
        decoded = rows.view(np.float16 if bits == 16 else np.float32).astype(np.float32)
    else:
        pbytes = rows.shape[1] - 4
        scale = rows[:, pbytes : pbytes + 2].copy().view(np.float16).astype(np.float32)
        bias = rows[:, pbytes + 2 :].copy().view(np.float16).astype(np.float32)
        per_byte = 8 // bits
        codes = np.empty((rows.shape[0], pbytes * per_byte), dtype=np.float32)
        for s in range(per_byte):
            codes[:, s::per_byte] = (rows[:, :pbytes] >> (s * bits)) & ((1 << bits) - 1)
        decoded = scale * codes[:, :dim] + bias
    return np.einsum("nd,nd->n", decoded, decoded).astype(np.float32)
