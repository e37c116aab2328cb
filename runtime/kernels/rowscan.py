"""Exact search on row-wise quantized and fp16 rows: an asymmetric scan with a fused top-k.

The query stays float32 and each stored row is read once, as it is stored:
- int8 / int4 rows (FBGEMM fused layout, see `rowwise.py`): value = scale · code + bias, so
  <q, x> = scale · <q, codes> + bias · sum(q); the codes enter the dot product as small integers
  converted to float32, never dequantized into a float copy of the row;
- fp16 rows: the half bits are widened in registers (`half_to_float`).
For l2 the key is 2 <q, x> - |x|^2, with |x|^2 of each decoded row computed per block of rows
(once for all queries) while the block is in cache, so nothing extra is stored; the squared
distance is |q|^2 - key.

Tasks are row chunks (as in `scan.py`): every chunk keeps a heap per query and scans its rows block
by block for every query, so a block's codes stay in L2 while all queries pass over them.
The dot products are float reductions that the compiler may reorder (vectorized), so the kernel
agrees with the numpy twin to float32 rounding, and exactly where sums are exact in float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.intrinsics import STREAM_PREFETCH_BYTES, half_from_bytes, half_to_float, prefetch_row
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
def _int4_dots(
    rows: np.ndarray, q_even: np.ndarray, q_odd: np.ndarray, start: int, stop: int, stream: bool, out: np.ndarray
) -> None:
    """out[i] = <q, codes of row start + i> for int4 rows (n, ceil(d/2) + 4) uint8; q_even / q_odd
    (ceil(d/2),) float32 are the query's even and odd columns (zero-padded), matching the low and
    high nibbles of each byte."""
    width = q_even.shape[0]
    for i in range(stop - start):
        _prefetch_stream(rows, start + i, stream)
        row = rows[start + i]
        acc = np.float32(0.0)
        for b in range(width):
            byte = row[b]
            acc += q_even[b] * np.float32(byte & 15) + q_odd[b] * np.float32(byte >> 4)
        out[i] = acc


@njit(nogil=True, cache=True, fastmath=REORDERABLE)
def _fp16_dots(values: np.ndarray, q: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """out[i] = <q, row start + i> for fp16 rows given as their bits, (n, d) uint16. No prefetch:
    these rows stream at the memory's bandwidth already, and prefetching them ahead made one thread
    5-8 % slower (1M x 128 on an AMD EPYC, Zen 4), where it made int8 rows ~10 % faster."""
    dim = q.shape[0]
    for i in range(stop - start):
        row = values[start + i]
        acc = np.float32(0.0)
        for j in range(dim):
            acc += q[j] * half_to_float(row[j])
        out[i] = acc


@njit(nogil=True, cache=True)
def _block_keys(
    rows: np.ndarray,
    bits: int,
    q: np.ndarray,
    q_even: np.ndarray,
    q_odd: np.ndarray,
    q_sum: np.float32,
    block_norms: np.ndarray,
    l2: bool,
    start: int,
    stop: int,
    stream: bool,
    keys: np.ndarray,
) -> None:
    """keys[i] for rows start..stop-1: <q, x> (ip), or 2 <q, x> - |x|^2 with |x|^2 of row
    start + i in block_norms[i] (l2); `stream`: this query reads the block from memory."""
    if bits == 16:
        _fp16_dots(rows, q, start, stop, keys)
    else:
        if bits == 8:
            _int8_dots(rows, q, start, stop, stream, keys)
        else:
            _int4_dots(rows, q_even, q_odd, start, stop, stream, keys)
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

    rows: int8 / int4 fused rows (n, P + 4) uint8 (bits 8 / 4), or fp16 bits (n, d) uint16
    (bits 16); queries (q, d) float32. -> keys (q, k') float32, ids (q, k') int64, best first,
    k' = min(k, n); keys are <q, x> for ip and 2 <q, x> - |x|^2 for l2.
    """
    n = rows.shape[0]
    nq, dim = queries.shape
    half = (dim + 1) // 2
    q_even = np.zeros((nq, half), dtype=np.float32)
    q_odd = np.zeros((nq, half), dtype=np.float32)
    q_sums = np.zeros(nq, dtype=np.float32)
    for qi in range(nq):
        for j in range(dim):
            q_sums[qi] += queries[qi, j]
            if j % 2 == 0:
                q_even[qi, j // 2] = queries[qi, j]
            else:
                q_odd[qi, j // 2] = queries[qi, j]
    kk = min(k, n)
    part_keys, part_ids, part_sizes = partial_heaps(nq, nchunks, kk)
    no_rows = np.empty(0, dtype=np.float32)
    block_rows = scan_block_rows(rows.shape[1] * rows.itemsize)
    for c in prange(nchunks):
        start, stop = _chunk_bounds(n, nchunks, c)
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
                    q_even[qi],
                    q_odd[qi],
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


@njit(nogil=True, cache=True)
def decoded_norm(rows: np.ndarray, bits: int, dim: int, r: int) -> np.float32:
    """|x|^2 of decoded row r: fused rows (bits 8 / 4 / 2) or fp16 bits (bits 16)."""
    acc = np.float32(0.0)
    if bits == 16:
        for j in range(dim):
            half: float = half_to_float(rows[r, j])
            acc += half * half
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
    if bits == 16:
        decoded = rows.view(np.float16).astype(np.float64)
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
    if bits == 16:
        decoded = rows.view(np.float16).astype(np.float32)
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
