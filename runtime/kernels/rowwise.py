"""Row-wise uniform quantization kernels (int8 / int4 / int2), FBGEMM's fused row layout.

A row of `rows` (n, packed + 4) uint8 holds the packed codes of `dim` values, then the fp16 scale
and the fp16 bias (little-endian). value[j] = scale * code[j] + bias. Codes are packed low bits
first: for int4 column 2i sits in the low nibble of byte i, for int2 column 4i in bits 0-1.

numba has no float16 on the CPU, so fp16 bits are turned into float32 through `half_table`
(65536,) float32, indexed by the raw uint16 bits.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from runtime.kernels.hashmap import probe_into
from runtime.kernels.intrinsics import PREFETCH_DISTANCE, prefetch_row


def make_half_table() -> np.ndarray:
    """(65536,) float32: value of every fp16 bit pattern."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


HALF_TABLE = make_half_table()
PARALLEL_MIN_IDS = 4096
"""Size of the batch warm-up compiles the parallel kernels with (the largest threshold used)."""
DEFAULT_PARALLEL_MIN_IDS = 512
"""Batches of fewer ids gather on the calling thread. A library caller wants every core on one
batch; a server already runs requests concurrently and passes a higher threshold down through
`load_table(..., parallel_min_ids=...)` (EMBSERVE_PARALLEL_MIN_IDS)."""


def use_parallel(n_ids: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS) -> bool:
    # with one thread a parallel region is pure launch overhead
    return n_ids >= min_ids and numba.get_num_threads() > 1


def packed_bytes(dim: int, bits: int) -> int:
    per_byte = 8 // bits
    return (dim + per_byte - 1) // per_byte


@njit(inline="always", nogil=True, cache=True)
def _dequant_row(
    row: np.ndarray, dim: int, bits: int, half_table: np.ndarray, out: np.ndarray, accumulate: bool
) -> None:
    nbytes = row.shape[0] - 4
    scale = half_table[np.int64(row[nbytes]) | (np.int64(row[nbytes + 1]) << 8)]
    bias = half_table[np.int64(row[nbytes + 2]) | (np.int64(row[nbytes + 3]) << 8)]
    if bits == 8:
        if accumulate:
            for j in range(dim):
                out[j] += scale * np.float32(row[j]) + bias
        else:
            for j in range(dim):
                out[j] = scale * np.float32(row[j]) + bias
    elif bits == 4:
        for j in range(dim):
            code = (row[j >> 1] >> ((j & 1) << 2)) & 15
            v = scale * np.float32(code) + bias
            if accumulate:
                out[j] += v
            else:
                out[j] = v
    else:
        for j in range(dim):
            code = (row[j >> 2] >> ((j & 3) << 1)) & 3
            v = scale * np.float32(code) + bias
            if accumulate:
                out[j] += v
            else:
                out[j] = v


@njit(nogil=True, cache=True)
def _gather_into(
    rows: np.ndarray, ids: np.ndarray, lo: int, hi: int, dim: int, bits: int, half_table: np.ndarray, out: np.ndarray
) -> None:
    """Dequantize rows ids[lo:hi] into out[lo:hi], one after another on this thread."""
    row_bytes = rows.shape[1]
    for i in range(lo, hi):
        # random rows miss cache: ask for a later row's lines now so several misses overlap
        if i + PREFETCH_DISTANCE < hi:
            for offset in range(0, row_bytes, 64):
                prefetch_row(rows, ids[i + PREFETCH_DISTANCE], offset)
        _dequant_row(rows[ids[i]], dim, bits, half_table, out[i], False)


@njit(parallel=True, nogil=True, cache=True)
def gather(rows: np.ndarray, ids: np.ndarray, dim: int, bits: int, half_table: np.ndarray, nchunks: int) -> np.ndarray:
    """rows (n, P+4) uint8, ids (b,) int64 -> (b, dim) float32 dequantized rows. One contiguous
    run of ids a task (`nchunks`, one a thread), each a plain serial loop with its own prefetch
    stream: measured 15-20% faster than a prange over single ids."""
    n = ids.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    for c in prange(nchunks):
        _gather_into(rows, ids, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, half_table, out)
    return out


@njit(nogil=True, cache=True)
def _gather_keys_into(
    rows: np.ndarray,
    slots: np.ndarray,
    keys: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    half_table: np.ndarray,
    ids: np.ndarray,
    out: np.ndarray,
) -> int:
    """Rows of keys[lo:hi] into ids[lo:hi] and, dequantized, out[lo:hi]; returns how many keys are
    absent (out is left unfinished when any is). Two tight loops, every key probed and then every
    row gathered, each with its own prefetch stream: on an AMD EPYC 5-15% faster than one loop that
    probed key i + 8, prefetched its row and dequantized row i in step."""
    absent = probe_into(slots, keys, lo, hi, ids)
    if absent == 0:
        _gather_into(rows, ids, lo, hi, dim, bits, half_table, out)
    return absent


@njit(parallel=True, nogil=True, cache=True)
def gather_keys(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int, half_table: np.ndarray, nchunks: int
) -> tuple[np.ndarray, int]:
    """`gather` of keyed rows: keys (b,) int64 go through a key map's slot table (hashmap.build)
    and the rows found are dequantized, each of `nchunks` tasks probing and gathering its own run
    of keys. Returns ((b, dim) float32, keys absent); the rows are only filled when none is."""
    n = keys.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    absent = np.zeros(nchunks, dtype=np.int64)
    for c in prange(nchunks):
        absent[c] = _gather_keys_into(
            rows, slots, keys, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, half_table, ids, out
        )
    return out, absent.sum()


@njit(nogil=True, cache=True)
def gather_keys_serial(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int, half_table: np.ndarray
) -> tuple[np.ndarray, int]:
    """`gather_keys` on the calling thread only."""
    n = keys.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    absent = _gather_keys_into(rows, slots, keys, 0, n, dim, bits, half_table, ids, out)
    return out, absent


@njit(nogil=True, cache=True)
def gather_serial(rows: np.ndarray, ids: np.ndarray, dim: int, bits: int, half_table: np.ndarray) -> np.ndarray:
    """`gather` on the calling thread only: for small batches waking a thread team
    costs more than the work (and a server calls kernels from several threads at once)."""
    out = np.empty((ids.shape[0], dim), dtype=np.float32)
    _gather_into(rows, ids, 0, ids.shape[0], dim, bits, half_table, out)
    return out


@njit(nogil=True, cache=True)
def _gather_merged_into(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    half_table: np.ndarray,
    out: np.ndarray,
) -> None:
    """`gather_merged` of positions lo..hi-1 on this thread."""
    row_bytes = base.shape[1]
    for i in range(lo, hi):
        ahead = i + PREFETCH_DISTANCE
        if ahead < hi:
            if slots[ahead] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row(delta, slots[ahead], offset)
            elif rows[ahead] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row(base, rows[ahead], offset)
        if slots[i] >= 0:
            _dequant_row(delta[slots[i]], dim, bits, half_table, out[i], False)
        elif rows[i] >= 0:
            _dequant_row(base[rows[i]], dim, bits, half_table, out[i], False)
        else:
            out[i, :] = 0.0


@njit(parallel=True, nogil=True, cache=True)
def gather_merged(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    dim: int,
    bits: int,
    half_table: np.ndarray,
    nchunks: int,
) -> np.ndarray:
    """Rows from a table's base and its delta in one gather: base (n, P+4) and delta (s, P+4)
    uint8 fused rows; rows (b,) int64 base rows, slots (b,) int64 delta slots. Position i takes
    delta[slots[i]] where slots[i] >= 0, else base[rows[i]] where rows[i] >= 0, else a zero row.
    -> (b, dim) float32, each of `nchunks` tasks gathering its own run."""
    n = rows.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    for c in prange(nchunks):
        _gather_merged_into(
            base, delta, rows, slots, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, half_table, out
        )
    return out


@njit(nogil=True, cache=True)
def gather_merged_serial(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    dim: int,
    bits: int,
    half_table: np.ndarray,
) -> np.ndarray:
    """`gather_merged` on the calling thread only."""
    out = np.empty((rows.shape[0], dim), dtype=np.float32)
    _gather_merged_into(base, delta, rows, slots, 0, rows.shape[0], dim, bits, half_table, out)
    return out


def gather_merged_rows(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    dim: int,
    bits: int,
    min_ids: int = DEFAULT_PARALLEL_MIN_IDS,
) -> np.ndarray:
    """`gather_merged`, parallel only for batches of at least `min_ids` ids."""
    if use_parallel(rows.shape[0], min_ids):
        return gather_merged(base, delta, rows, slots, dim, bits, HALF_TABLE, numba.get_num_threads())
    return gather_merged_serial(base, delta, rows, slots, dim, bits, HALF_TABLE)


def gather_merged_numpy(
    base: np.ndarray, delta: np.ndarray, rows: np.ndarray, slots: np.ndarray, dim: int, bits: int
) -> np.ndarray:
    """The plain twin of `gather_merged`."""
    out = np.zeros((rows.shape[0], dim), dtype=np.float32)
    from_delta = slots >= 0
    from_base = ~from_delta & (rows >= 0)
    if from_delta.any():
        out[from_delta] = dequantize_numpy(delta, slots[from_delta], dim, bits)
    if from_base.any():
        out[from_base] = dequantize_numpy(base, rows[from_base], dim, bits)
    return out


@njit(parallel=True, nogil=True, cache=True)
def gather_range(rows: np.ndarray, start: int, stop: int, dim: int, bits: int, half_table: np.ndarray) -> np.ndarray:
    """rows (n, P+4) uint8 -> (stop - start, dim) float32 rows start..stop-1 dequantized."""
    out = np.empty((stop - start, dim), dtype=np.float32)
    for i in prange(stop - start):
        _dequant_row(rows[start + i], dim, bits, half_table, out[i], False)
    return out


@njit(nogil=True, cache=True)
def _bags_into(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    mean: bool,
    half_table: np.ndarray,
    out: np.ndarray,
) -> None:
    """Pool bags lo..hi-1 into out[lo:hi] on this thread. Per bag, sum(scale · codes) goes into a
    float32 accumulator (for int4 one for even and one for odd columns, so nibbles need no
    shuffle) and sum(bias) into a scalar, added once at the end; ids are prefetched ahead across
    bag boundaries, as in the gather."""
    total = ids.shape[0]
    nbags = offsets.shape[0]
    row_bytes = rows.shape[1]
    width = row_bytes - 4
    half = (dim + 1) // 2
    acc = np.empty(dim if bits != 4 else 2 * half, dtype=np.float32)
    acc_even = acc[:half]
    acc_odd = acc[half:]
    for b in range(lo, hi):
        start = offsets[b]
        stop = offsets[b + 1] if b + 1 < nbags else total
        acc[:] = 0.0
        bias_sum = np.float32(0.0)
        for t in range(start, stop):
            if t + PREFETCH_DISTANCE < total:
                for offset in range(0, row_bytes, 64):
                    prefetch_row(rows, ids[t + PREFETCH_DISTANCE], offset)
            row = rows[ids[t]]
            scale = half_table[np.int64(row[width]) | (np.int64(row[width + 1]) << 8)]
            bias_sum += half_table[np.int64(row[width + 2]) | (np.int64(row[width + 3]) << 8)]
            if bits == 8:
                for j in range(dim):
                    acc[j] += scale * np.float32(row[j])
            elif bits == 4:
                for j in range(half):
                    byte = row[j]
                    acc_even[j] += scale * np.float32(byte & 15)
                    acc_odd[j] += scale * np.float32(byte >> 4)
            else:
                for j in range(dim):
                    acc[j] += scale * np.float32((row[j >> 2] >> ((j & 3) << 1)) & 3)
        inv = np.float32(1.0) / np.float32(stop - start) if mean and stop > start else np.float32(1.0)
        if bits == 4:
            for j in range(dim):
                value = acc_even[j >> 1] if j % 2 == 0 else acc_odd[j >> 1]
                out[b, j] = (value + bias_sum) * inv
        else:
            for j in range(dim):
                out[b, j] = (acc[j] + bias_sum) * inv


@njit(parallel=True, nogil=True, cache=True)
def bags_chunked(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    dim: int,
    bits: int,
    mean: bool,
    half_table: np.ndarray,
    nchunks: int,
) -> np.ndarray:
    """`bags` with one contiguous run of bags a task (`nchunks`, one a thread)."""
    nbags = offsets.shape[0]
    out = np.empty((nbags, dim), dtype=np.float32)
    for c in prange(nchunks):
        _bags_into(
            rows, ids, offsets, c * nbags // nchunks, (c + 1) * nbags // nchunks, dim, bits, mean, half_table, out
        )
    return out


@njit(nogil=True, cache=True)
def bags_serial(
    rows: np.ndarray, ids: np.ndarray, offsets: np.ndarray, dim: int, bits: int, mean: bool, half_table: np.ndarray
) -> np.ndarray:
    """`bags` on the calling thread, for small batches."""
    out = np.empty((offsets.shape[0], dim), dtype=np.float32)
    _bags_into(rows, ids, offsets, 0, offsets.shape[0], dim, bits, mean, half_table, out)
    return out


def bags(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    dim: int,
    bits: int,
    mean: bool,
    half_table: np.ndarray,
    min_ids: int = DEFAULT_PARALLEL_MIN_IDS,
) -> np.ndarray:
    """Pooled lookup as torch EmbeddingBag: bag b sums ids[offsets[b]:offsets[b+1]] (the last bag
    runs to the end). rows (n, P+4) uint8, ids (m,) int64, offsets (B,) int64 -> (B, dim) float32.
    An empty bag is zeros; mode mean divides by the bag's size. Parallel over runs of bags where
    the batch is large enough to pay for waking threads."""
    if use_parallel(ids.shape[0], min_ids) and offsets.shape[0] > 1:
        nchunks = min(numba.get_num_threads(), offsets.shape[0])
        return bags_chunked(rows, ids, offsets, dim, bits, mean, half_table, nchunks)
    return bags_serial(rows, ids, offsets, dim, bits, mean, half_table)


def gather_key_rows(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS
) -> tuple[np.ndarray | None, int]:
    """keys (b,) int64 -> their dequantized rows (b, dim) float32 (None when some key is absent),
    and how many keys are absent."""
    if use_parallel(keys.shape[0], min_ids):
        out, absent = gather_keys(rows, slots, keys, dim, bits, HALF_TABLE, numba.get_num_threads())
        return (out if absent == 0 else None), int(absent)
    out, absent = gather_keys_serial(rows, slots, keys, dim, bits, HALF_TABLE)
    return (out if absent == 0 else None), int(absent)


def gather_rows(
    rows: np.ndarray, ids: np.ndarray, dim: int, bits: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS
) -> np.ndarray:
    """Dequantizing gather, parallel only for batches of at least `min_ids` ids."""
    if use_parallel(ids.shape[0], min_ids):
        return gather(rows, ids, dim, bits, HALF_TABLE, numba.get_num_threads())
    return gather_serial(rows, ids, dim, bits, HALF_TABLE)


def quantize_numpy(x: np.ndarray, bits: int) -> np.ndarray:
    """x (n, d) float32 -> fused rows (n, P+4) uint8. Scale and bias are rounded to fp16 first and
    the codes computed against the rounded values, so decode matches what is stored."""
    n, dim = x.shape
    levels = (1 << bits) - 1
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale16 = ((hi - lo) / levels).astype(np.float16)
    bias16 = lo.astype(np.float16)
    scale = scale16.astype(np.float32)
    bias = bias16.astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    codes = np.rint((x - bias[:, None]) / safe[:, None])
    codes = np.clip(codes, 0, levels).astype(np.uint8)
    codes[scale == 0] = 0
    per_byte = 8 // bits
    pbytes = packed_bytes(dim, bits)
    padded = np.zeros((n, pbytes * per_byte), dtype=np.uint8)
    padded[:, :dim] = codes
    packed = np.zeros((n, pbytes), dtype=np.uint8)
    for s in range(per_byte):
        packed |= (padded[:, s::per_byte] << (s * bits)).astype(np.uint8)
    out = np.empty((n, pbytes + 4), dtype=np.uint8)
    out[:, :pbytes] = packed
    out[:, pbytes : pbytes + 2] = scale16.view(np.uint8).reshape(n, 2)
    out[:, pbytes + 2 :] = bias16.view(np.uint8).reshape(n, 2)
    return out


def dequantize_numpy(rows: np.ndarray, ids: np.ndarray, dim: int, bits: int) -> np.ndarray:
    """Twin of `gather`: rows (n, P+4) uint8, ids (b,) int64 -> (b, dim) float32."""
    sel = rows[ids]
    pbytes = sel.shape[1] - 4
    scale = sel[:, pbytes : pbytes + 2].copy().view(np.float16).astype(np.float32)
    bias = sel[:, pbytes + 2 :].copy().view(np.float16).astype(np.float32)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    codes = np.empty((sel.shape[0], pbytes * per_byte), dtype=np.float32)
    for s in range(per_byte):
        codes[:, s::per_byte] = (sel[:, :pbytes] >> (s * bits)) & mask
    return (scale * codes[:, :dim] + bias).astype(np.float32)


def bags_numpy(decoded: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
    """Twin of the pooling: decoded (m, d) float32 rows, offsets (B,) -> (B, d) float32."""
    nbags = offsets.shape[0]
    out = np.zeros((nbags, decoded.shape[1]), dtype=np.float32)
    bounds = [*offsets.tolist(), decoded.shape[0]]
    for b in range(nbags):
        part = decoded[bounds[b] : bounds[b + 1]]
        if part.shape[0]:
            out[b] = part.sum(axis=0, dtype=np.float32)
            if mean:
                out[b] /= np.float32(part.shape[0])
    return out
