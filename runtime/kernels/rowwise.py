"""Row-wise uniform quantization kernels (int8 / int4 / int2), FBGEMM's fused row layout.

A row of `rows` (n, packed + 4) uint8 holds the packed codes of `dim` values, then the fp16 scale
and the fp16 bias (little-endian). value[j] = scale * code[j] + bias. Codes are packed low bits
first: for int4 column 2i sits in the low nibble of byte i, for int2 column 4i in bits 0-1.

numba has no float16 on the CPU: scale and bias are widened from their fp16 bits in registers
(`half_from_bytes`, the CPU's F16C instruction where it has one). A 256 KiB table indexed by the bits
did the same, but a cold batch missed cache on it twice a row.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from runtime.kernels.checks import first_bad_offset, first_out_of_range
from runtime.kernels.hashmap import probe_into
from runtime.kernels.intrinsics import half_from_bytes, prefetch_row_into, thread_count
from runtime.kernels.simd import (
    REGISTER_LANES,
    F32Vector,
    fmadd,
    high_nibbles,
    low_nibbles,
    store_affine,
    store_interleaved_affine,
    store_interleaved_fma,
    widen_bytes,
    zeros,
)

PARALLEL_MIN_IDS = 4096
"""Size of the batch warm-up compiles the parallel kernels with (the largest threshold used)."""
DEFAULT_PARALLEL_MIN_IDS = 512
"""Batches of fewer ids gather on the calling thread. A library caller wants every core on one
batch; a server already runs requests concurrently and passes a higher threshold down through
`load_table(..., parallel_min_ids=...)` (EMBSERVE_PARALLEL_MIN_IDS)."""


def use_parallel(n_ids: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS) -> bool:
    # with one thread a parallel region is pure launch overhead
    return n_ids >= min_ids and numba.get_num_threads() > 1


@njit(inline="always", nogil=True, cache=True)
def kernel_tasks(n_ids: int, min_ids: int) -> int:
    """`use_parallel`'s rule read inside a kernel: numba's thread count for the calling thread
    where a batch of n_ids is to be shared out, else 1."""
    threads: int = thread_count()
    return threads if n_ids >= min_ids and threads > 1 else 1


def bag_tasks(n_ids: int, nbags: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS) -> int:
    """How many tasks pool a batch of bags (one contiguous run of bags each): 1, the calling
    thread, unless the batch is large enough for `use_parallel` and has more than one bag."""
    if nbags < 2:
        return 1
    threads: int = numba.get_num_threads()  # ~0.7 µs a call: read once
    return min(threads, nbags) if n_ids >= min_ids and threads > 1 else 1


@njit(inline="always", nogil=True, cache=True)
def kernel_bag_tasks(n_ids: int, nbags: int, min_ids: int) -> int:
    """`bag_tasks`'s rule read inside a kernel."""
    return min(kernel_tasks(n_ids, min_ids), nbags) if nbags > 1 else 1


@njit(inline="always", nogil=True, cache=True)
def bag_input_fault(ids: np.ndarray, offsets: np.ndarray, rows: int) -> int:
    """-1 when ids (m,) int64 all lie in [0, rows) and offsets (B,) int64 are EmbeddingBag offsets
    of m ids; else the position of the first id out of range, or 0 for bad offsets (a one-call
    bag kernel's test: the general path then names what is wrong)."""
    bad = first_out_of_range(ids, rows)
    if bad < 0 and first_bad_offset(offsets, ids.shape[0]) >= 0:
        return 0
    return bad


def packed_bytes(dim: int, bits: int) -> int:
    per_byte = 8 // bits
    return (dim + per_byte - 1) // per_byte


FLOAT_FLAGS = {"contract"}
"""Float flags of every kernel that dequantizes: scale · code + bias becomes one FMA. All of them
(gathers, bags, ranges) use the same flags, so a row decodes to the same bits whichever path reads it."""


@njit(inline="always", nogil=True, cache=True)
def _code(row: np.ndarray, column: int, bits: int) -> np.uint8:
    """The code of one column of a packed int4 / int2 row (the tail that fills no whole byte)."""
    per_byte = 8 // bits
    shift = np.uint8((column % per_byte) * bits)
    return np.uint8((row[column // per_byte] >> shift) & np.uint8((1 << bits) - 1))


@njit(inline="always", nogil=True, cache=True)
def _low(byte: np.uint8) -> np.float32:
    """The low nibble of a byte as a float; uint8 all the way, see `_dequant_row`."""
    return np.float32(np.uint8(byte & np.uint8(15)))


@njit(inline="always", nogil=True, cache=True)
def _high(byte: np.uint8) -> np.float32:
    return np.float32(np.uint8(byte >> np.uint8(4)))


@njit(inline="always", nogil=True, cache=True)
def _row_scale(row: np.ndarray) -> np.float32:
    """A fused row's (P+4,) uint8 scale, from its fp16 bytes."""
    width = row.shape[0] - 4
    return half_from_bytes(row[width], row[width + 1])


@njit(inline="always", nogil=True, cache=True)
def _row_bias(row: np.ndarray) -> np.float32:
    """A fused row's (P+4,) uint8 bias, from its fp16 bytes."""
    width = row.shape[0] - 4
    return half_from_bytes(row[width + 2], row[width + 3])


ROW_BLOCK4 = 8 * REGISTER_LANES
"""int4 columns a row is decoded in at once: eight vector registers (64 columns with AVX2)."""
ROW_LANES4 = ROW_BLOCK4 // 2


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _dequant_row(row: np.ndarray, dim: int, bits: int, out: np.ndarray) -> None:
    """One fused row (P+4,) uint8 -> out (dim,) float32; every column is scale * code + bias, one
    FMA. int8 and int2 codes are widened as uint8 in plain loops (masks and shifts typed uint8
    too: numba's default int64 would keep the loops from vectorizing). int4 codes are widened in
    explicit vectors, the even and odd columns apart, then interleaved: 1.0-1.25x the speed of the
    plain loop over 64 to 16,384 random rows on an AMD EPYC. The same change made int8 rows
    0.76-0.99x as fast, so they keep their loop."""
    scale = _row_scale(row)
    bias = _row_bias(row)
    if bits == 8:
        for j in range(dim):
            out[j] = scale * np.float32(row[j]) + bias
        return
    if bits == 4:
        column = 0
        while column + ROW_BLOCK4 <= dim:
            _decode_nibbles(row, column, zeros(ROW_LANES4), scale, bias, out)
            column += ROW_BLOCK4
        if column + 64 <= dim:
            _decode_nibbles(row, column, zeros(32), scale, bias, out)
            column += 64
        if column + 32 <= dim:
            _decode_nibbles(row, column, zeros(16), scale, bias, out)
            column += 32
        if column + 16 <= dim:
            _decode_nibbles(row, column, zeros(8), scale, bias, out)
            column += 16
        for j in range(column >> 1, dim // 2):
            byte = row[j]
            out[2 * j] = scale * _low(byte) + bias
            out[2 * j + 1] = scale * _high(byte) + bias
        if dim % 2:
            out[dim - 1] = scale * np.float32(_code(row, dim - 1, 4)) + bias
        return
    whole = dim // 4
    for j in range(whole):
        byte = row[j]
        out[4 * j] = scale * np.float32(np.uint8(byte & np.uint8(3))) + bias
        out[4 * j + 1] = scale * np.float32(np.uint8((byte >> np.uint8(2)) & np.uint8(3))) + bias
        out[4 * j + 2] = scale * np.float32(np.uint8((byte >> np.uint8(4)) & np.uint8(3))) + bias
        out[4 * j + 3] = scale * np.float32(np.uint8(byte >> np.uint8(6))) + bias
    for column in range(whole * 4, dim):
        out[column] = scale * np.float32(_code(row, column, 2)) + bias


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _decode_nibbles(
    row: np.ndarray, column: int, zero: F32Vector, scale: np.float32, bias: np.float32, out: np.ndarray
) -> None:
    """Columns [column, column + 2 * lanes) of an int4 row decoded into out (column even)."""
    byte = column >> 1
    store_interleaved_fma(out, column, low_nibbles(zero, row, byte), high_nibbles(zero, row, byte), scale, bias)


ROW_PREFETCH_DISTANCE = 32
"""Ids ahead the gathers and bag kernels ask for a row into L2 (`prefetch_row_into`)."""

ROW_PREFETCH_NEAR = 16
"""Ids ahead they ask for it again, into L1, by then mostly from L2.

Random int8 and int4 rows on an AMD EPYC (Zen 4), one thread, each call right after numpy had
read 8 MiB elsewhere (as in the benchmark), against the one L1 prefetch of before (8 ids ahead in
gathers, 16 in bags): 16,384 ids in bags 0.57-0.83x the time (Zipf ids 0.75-0.83x), gathered
0.82-0.97x; 64 and 1,024 ids 0.74-1.04x. Into L2 alone, 32 ahead, did as well for 16,384 ids but
took up to 1.8x as long for 1,024 (every demand load then waits on L2); 16, 24 and 48 ahead did
no better than 32; 8 and 12 for the L1 prefetch a little worse than 16. With the rows already in
cache the extra prefetches cost up to 15 % (1,024 int8 ids; 25 % for the merged gather). fp16
rows (`dense`) measured slower fetched into L2 and keep their one L1 prefetch."""


@njit(inline="always", nogil=True, cache=True)
def _prefetch_lines(rows: np.ndarray, row: int, into_l1: bool) -> None:
    """Ask for every line of one row, into L1 or L2 (`into_l1` a constant at each call). The first
    two lines and the last byte are asked for without a loop: with a loop around all of them bags
    took 0.98-1.09x as long (a row of 132 bytes spans three lines, wherever it starts; one of 68
    bytes, two)."""
    stride = rows.shape[1]
    prefetch_row_into(rows, row, 0, into_l1)
    prefetch_row_into(rows, row, 64, into_l1)
    for offset in range(128, stride - 1, 64):
        prefetch_row_into(rows, row, offset, into_l1)
    prefetch_row_into(rows, row, stride - 1, into_l1)


@njit(inline="always", nogil=True, cache=True)
def _prefetch_first(rows: np.ndarray, ids: np.ndarray, first: int, stop: int) -> None:
    """Ask for rows ids[first:stop] (at most ROW_PREFETCH_DISTANCE of them) as the loops below would
    have, had they started earlier: the rows they reach before their own prefetches do, asked for at
    once so that a small batch's misses overlap too."""
    for t in range(first, stop):
        _prefetch_lines(rows, ids[t], False)
    for t in range(first, min(stop, first + ROW_PREFETCH_NEAR)):
        _prefetch_lines(rows, ids[t], True)


@njit(inline="always", nogil=True, cache=True)
def _prefetch_ahead(rows: np.ndarray, ids: np.ndarray, t: int) -> None:
    """Ask for the rows ROW_PREFETCH_DISTANCE (into L2) and ROW_PREFETCH_NEAR (into L1) ids after
    position t of ids, across bag boundaries, where ids has them."""
    if t + ROW_PREFETCH_DISTANCE < ids.shape[0]:
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_DISTANCE], False)
    if t + ROW_PREFETCH_NEAR < ids.shape[0]:
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_NEAR], True)


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _gather_into(rows: np.ndarray, ids: np.ndarray, lo: int, hi: int, dim: int, bits: int, out: np.ndarray) -> None:
    """Dequantize rows ids[lo:hi] into out[lo:hi], one after another on this thread."""
    # one loop a code width: with the width's branches inside the loop, the compiler kept two
    # reference count updates (a call and an atomic add each) for each row's two views; 1,024
    # cached int8 rows of 128 columns took 17.2 us that way, 11.1 us this way (AMD EPYC, Zen 4)
    if bits == 8:
        _gather_rows(rows, ids, lo, hi, dim, 8, out)
    elif bits == 4:
        _gather_rows(rows, ids, lo, hi, dim, 4, out)
    else:
        _gather_rows(rows, ids, lo, hi, dim, 2, out)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _gather_rows(rows: np.ndarray, ids: np.ndarray, lo: int, hi: int, dim: int, bits: int, out: np.ndarray) -> None:
    """The loop of `_gather_into` for one code width (`bits` a constant at each call)."""
    # random rows miss cache: ask for later rows' lines early so that several misses overlap
    _prefetch_first(rows, ids, lo, min(hi, lo + ROW_PREFETCH_DISTANCE))
    for i in range(lo, hi):
        # written out rather than `_prefetch_ahead`: through that call numba kept reference count
        # updates in this loop (1.15-1.4x the time)
        if i + ROW_PREFETCH_DISTANCE < hi:
            _prefetch_lines(rows, ids[i + ROW_PREFETCH_DISTANCE], False)
        if i + ROW_PREFETCH_NEAR < hi:
            _prefetch_lines(rows, ids[i + ROW_PREFETCH_NEAR], True)
        _dequant_row(rows[ids[i]], dim, bits, out[i])


@njit(parallel=True, nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _gather_chunks_into(rows: np.ndarray, ids: np.ndarray, dim: int, bits: int, nchunks: int, out: np.ndarray) -> None:
    """Dequantize rows ids into out (b, dim) float32 in `nchunks` tasks of one contiguous run of
    ids each (one a thread), each a plain serial loop with its own prefetch stream: measured
    15-20% faster than a prange over single ids."""
    n = ids.shape[0]
    for c in prange(nchunks):
        _gather_into(rows, ids, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, out)


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _gather_keys_into(
    rows: np.ndarray,
    slots: np.ndarray,
    keys: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    ids: np.ndarray,
    out: np.ndarray,
) -> int:
    """Rows of keys[lo:hi] into ids[lo:hi] and, dequantized, out[lo:hi]; returns how many keys are
    absent (out is left unfinished when any is). Two tight loops, every key probed and then every
    row gathered, each with its own prefetch stream: on an AMD EPYC 5-15% faster than one loop that
    probed key i + 8, prefetched its row and dequantized row i in step."""
    absent = probe_into(slots, keys, lo, hi, ids)
    if absent == 0:
        _gather_into(rows, ids, lo, hi, dim, bits, out)
    return absent


@njit(parallel=True, nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_keys(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int, nchunks: int
) -> tuple[np.ndarray, int]:
    """`gather_checked_into` of keyed rows: keys (b,) int64 go through a key map's slot table (hashmap.build)
    and the rows found are dequantized, each of `nchunks` tasks probing and gathering its own run
    of keys. Returns ((b, dim) float32, keys absent); the rows are only filled when none is."""
    n = keys.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    absent = np.zeros(nchunks, dtype=np.int64)
    for c in prange(nchunks):
        absent[c] = _gather_keys_into(rows, slots, keys, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, ids, out)
    return out, absent.sum()


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_keys_serial(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int
) -> tuple[np.ndarray, int]:
    """`gather_keys` on the calling thread only."""
    n = keys.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    absent = _gather_keys_into(rows, slots, keys, np.int64(0), n, dim, bits, ids, out)
    return out, absent


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_checked_into(rows: np.ndarray, dim: int, bits: int, min_ids: int, ids: np.ndarray, out: np.ndarray) -> int:
    """Dequantize ids (b,) int64 into out (b, dim) float32, with the ids' bounds checked and the
    threads chosen in the same call (`use_parallel`'s rule, read inside the kernel): -> the
    position of the first id outside [0, n), out left as it was, or -1 when every row was
    gathered. A lookup of any size pays this one call: as separate Python steps (check, thread
    count, kernel) they cost 3-4 us more, a quarter of a warm 1,024-id lookup. The table's own
    arguments come first, so a codec binds them once (`Codec.direct_gather`)."""
    bad = first_out_of_range(ids, rows.shape[0])
    if bad < 0:
        tasks = kernel_tasks(ids.shape[0], min_ids)
        if tasks > 1:
            _gather_chunks_into(rows, ids, dim, bits, tasks, out)
        else:
            _gather_into(rows, ids, np.int64(0), ids.shape[0], dim, bits, out)
    return bad


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _gather_merged_into(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    out: np.ndarray,
) -> None:
    """`gather_merged` of positions lo..hi-1 on this thread (one loop a code width, as in
    `_gather_into`)."""
    if bits == 8:
        _merged_rows(base, delta, rows, slots, lo, hi, dim, 8, out)
    elif bits == 4:
        _merged_rows(base, delta, rows, slots, lo, hi, dim, 4, out)
    else:
        _merged_rows(base, delta, rows, slots, lo, hi, dim, 2, out)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _merged_rows(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    lo: int,
    hi: int,
    dim: int,
    bits: int,
    out: np.ndarray,
) -> None:
    """The loop of `_gather_merged_into` for one code width (`bits` a constant at each call)."""
    # the two prefetches of `_gather_rows` (one a 64 bytes of the row, as this loop always did),
    # each id's row in the delta or the base; the loop starts
    # ROW_PREFETCH_DISTANCE ids early to ask for the first rows. The prefetch intrinsics are called
    # here directly: through inline helpers taking these arrays numba kept reference count updates
    # in this loop (with one taking all four, 1,024 cached rows took twice as long)
    row_bytes = base.shape[1]
    for i in range(lo - ROW_PREFETCH_DISTANCE, hi):
        far = i + ROW_PREFETCH_DISTANCE
        if far < hi:
            if slots[far] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row_into(delta, slots[far], offset, False)
            elif rows[far] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row_into(base, rows[far], offset, False)
        near = i + ROW_PREFETCH_NEAR
        if lo <= near < hi:
            if slots[near] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row_into(delta, slots[near], offset, True)
            elif rows[near] >= 0:
                for offset in range(0, row_bytes, 64):
                    prefetch_row_into(base, rows[near], offset, True)
        if i < lo:
            continue
        if slots[i] >= 0:
            _dequant_row(delta[slots[i]], dim, bits, out[i])
        elif rows[i] >= 0:
            _dequant_row(base[rows[i]], dim, bits, out[i])
        else:
            out[i, :] = 0.0


@njit(parallel=True, nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_merged(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    dim: int,
    bits: int,
    nchunks: int,
) -> np.ndarray:
    """Rows from a table's base and its delta in one gather: base (n, P+4) and delta (s, P+4)
    uint8 fused rows; rows (b,) int64 base rows, slots (b,) int64 delta slots. Position i takes
    delta[slots[i]] where slots[i] >= 0, else base[rows[i]] where rows[i] >= 0, else a zero row.
    -> (b, dim) float32, each of `nchunks` tasks gathering its own run."""
    n = rows.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    for c in prange(nchunks):
        _gather_merged_into(base, delta, rows, slots, c * n // nchunks, (c + 1) * n // nchunks, dim, bits, out)
    return out


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_merged_serial(
    base: np.ndarray,
    delta: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    dim: int,
    bits: int,
) -> np.ndarray:
    """`gather_merged` on the calling thread only."""
    out = np.empty((rows.shape[0], dim), dtype=np.float32)
    _gather_merged_into(base, delta, rows, slots, np.int64(0), rows.shape[0], dim, bits, out)
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
        return gather_merged(base, delta, rows, slots, dim, bits, numba.get_num_threads())
    return gather_merged_serial(base, delta, rows, slots, dim, bits)


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


@njit(parallel=True, nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def gather_range(rows: np.ndarray, start: int, stop: int, dim: int, bits: int) -> np.ndarray:
    """rows (n, P+4) uint8 -> (stop - start, dim) float32 rows start..stop-1 dequantized."""
    out = np.empty((stop - start, dim), dtype=np.float32)
    if bits == 8:  # one loop a code width, as in `_gather_into`
        for i in prange(stop - start):
            _dequant_row(rows[start + i], dim, 8, out[i])
    elif bits == 4:
        for i in prange(stop - start):
            _dequant_row(rows[start + i], dim, 4, out[i])
    else:
        for i in prange(stop - start):
            _dequant_row(rows[start + i], dim, 2, out[i])
    return out


@njit(inline="always", nogil=True, cache=True)
def bag_bounds(offsets: np.ndarray, b: int, total: int, mean: bool) -> tuple[int, int, np.float32]:
    """Bag b's first and past-the-last id positions (EmbeddingBag offsets (B,) int64: the last bag
    runs to total), and the factor its sum is scaled by (1 unless mean and the bag has ids)."""
    start = offsets[b]
    stop = offsets[b + 1] if b + 1 < offsets.shape[0] else total
    inv = np.float32(1.0) / np.float32(stop - start) if mean and stop > start else np.float32(1.0)
    return start, stop, inv


FOLD_ROWS = 64
"""Rows of a bag summed into one set of accumulators before they are added to the bag's sum. A
row's value is scale * code + bias with codes 0..255 (or 0..15) and bias about the row's minimum,
and the two parts are summed apart (the biases as one scalar), so both grow with the bag and
cancel: summed whole, a bag of 90,000 int8 rows was off by 4.7 (about 1 %) where summing the
decoded rows is off by 0.015. Folded every 64 rows, a bag is as exact as the decoded rows' sum,
and bags up to 64 ids (the bags of 32 the benchmarks pool) take the one pass they took before."""

BAG_BLOCK8 = 16 * REGISTER_LANES
"""int8 columns a bag pass sums at once: sixteen vector registers of accumulators (128 columns with
AVX2). A longer row is summed in several passes over the bag's rows; all but the first find them in
cache. On an AMD EPYC (one table copy a variant, alternated) eight registers took 0.96-1.25x as
long: more passes, though the compiler spills a few of the sixteen."""

BAG_BLOCK4 = 16 * REGISTER_LANES
"""int4 columns a bag pass sums at once: sixteen vector registers, half for the even columns and
half for the odd (128 columns with AVX2); eight registers took 1.0-1.07x as long."""
BAG_LANES4 = BAG_BLOCK4 // 2
BAG_HALF8 = BAG_BLOCK8 // 2
BAG_QUARTER8 = BAG_BLOCK8 // 4
BAG_HALF_LANES4 = BAG_BLOCK4 // 4
BAG_QUARTER_LANES4 = BAG_BLOCK4 // 8
"""Rows narrower than a block, and what is left of a row after its blocks, are summed half a block,
a quarter block, then eight lanes at a time, then column by column. Not every power of two from
the block down: each width is a loop the compiler builds for every kernel that pools bags. On an
AMD EPYC the first compile of the two bag entry points took 28 s with six widths, 21-22 s with
these four, 17 s without the half block (which cost rows of 64 and 200 columns 2-15 %); the kernels
that added four rows at a time took 12 s. Writing each row's body once, as the helpers above that
the compiler inlines, added 2-3 s. int8 rows of 16 columns take two eight-lane passes, 5-17 %
slower than one of sixteen lanes."""


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bias_pass(rows: np.ndarray, ids: np.ndarray, start: int, stop: int) -> np.float32:
    """The sum of the biases of rows ids[start:stop], prefetching the rows further ahead: a bag's
    first pass where its rows are too short for a vector pass."""
    bias = np.float32(0.0)
    for t in range(start, stop):
        _prefetch_ahead(rows, ids, t)
        bias += _row_bias(rows[ids[t]])
    return bias


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _add_row8(row: np.ndarray, column: int, acc: F32Vector) -> F32Vector:
    """acc + scale * codes[column : column + lanes] of one int8 row."""
    return fmadd(widen_bytes(acc, row, column), _row_scale(row), acc)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _add_row4(row: np.ndarray, column: int, even: F32Vector, odd: F32Vector) -> tuple[F32Vector, F32Vector]:
    """even and odd + scale * the int4 codes of columns [column, column + 2 * lanes) of one row,
    the low nibbles (even columns) and the high (odd); column is even."""
    scale = _row_scale(row)
    byte = column >> 1
    return fmadd(low_nibbles(even, row, byte), scale, even), fmadd(high_nibbles(even, row, byte), scale, odd)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _first_pass8(
    rows: np.ndarray, ids: np.ndarray, start: int, stop: int, zero: F32Vector, inv: np.float32, out_row: np.ndarray
) -> np.float32:
    """Columns [0, lanes) of a bag of int8 rows ids[start:stop] into out_row (F32Vector zero sets
    the lanes), prefetching rows further ahead; returns the bag's sum of biases. Only a bag's first
    pass prefetches: its later passes find the same rows in cache."""
    acc = zero
    bias = np.float32(0.0)
    # two loops rather than a branch on every row: the ids ahead run out only in a batch's last bags
    ahead = min(stop, ids.shape[0] - ROW_PREFETCH_DISTANCE)
    for t in range(start, ahead):
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_DISTANCE], False)
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_NEAR], True)
        row = rows[ids[t]]
        bias += _row_bias(row)
        acc = _add_row8(row, 0, acc)
    for t in range(max(start, ahead), stop):
        row = rows[ids[t]]
        bias += _row_bias(row)
        acc = _add_row8(row, 0, acc)
    store_affine(out_row, 0, acc, bias, inv)
    return bias


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _next_pass8(
    rows: np.ndarray,
    ids: np.ndarray,
    start: int,
    stop: int,
    column: int,
    zero: F32Vector,
    bias: np.float32,
    inv: np.float32,
    out_row: np.ndarray,
) -> None:
    """Columns [column, column + lanes) of the bag's int8 rows into out_row."""
    acc = zero
    for t in range(start, stop):
        acc = _add_row8(rows[ids[t]], column, acc)
    store_affine(out_row, column, acc, bias, inv)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _tail_columns(
    rows: np.ndarray,
    ids: np.ndarray,
    start: int,
    stop: int,
    column: int,
    dim: int,
    bits: int,
    bias: np.float32,
    inv: np.float32,
    out_row: np.ndarray,
) -> None:
    """Columns [column, dim) of the bag's int8 / int4 rows one at a time: the few that fill no vector."""
    for j in range(column, dim):
        total = np.float32(0.0)
        for t in range(start, stop):
            row = rows[ids[t]]
            total += _row_scale(row) * np.float32(_code(row, j, bits) if bits == 4 else row[j])
        out_row[j] = (total + bias) * inv


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bag8(
    rows: np.ndarray, ids: np.ndarray, start: int, stop: int, dim: int, inv: np.float32, out_row: np.ndarray
) -> None:
    """The sum of int8 rows ids[start:stop], times inv, into out_row (dim,) float32. Its columns are
    summed in vector registers, one pass over the rows per block of columns, widest first (FBGEMM's
    bag kernels work the same way); every column sums scale * code over the rows in order, one FMA
    each, so the result does not depend on the blocks. On an AMD EPYC this was 1.0-1.2x the speed
    of adding four rows at a time into an accumulator array, which the compiler loaded and stored
    around every four rows (1,024 and 16,384 ids, uniform and Zipf, 1 and 2 threads, each version on
    a table of its own)."""
    # the widest block that fits goes first, as it waits on memory for every row
    if dim >= BAG_BLOCK8:
        bias = _first_pass8(rows, ids, start, stop, zeros(BAG_BLOCK8), inv, out_row)
        column = BAG_BLOCK8
    elif dim >= BAG_HALF8:
        bias = _first_pass8(rows, ids, start, stop, zeros(BAG_HALF8), inv, out_row)
        column = BAG_HALF8
    elif dim >= BAG_QUARTER8:
        bias = _first_pass8(rows, ids, start, stop, zeros(BAG_QUARTER8), inv, out_row)
        column = BAG_QUARTER8
    elif dim >= 8:
        bias = _first_pass8(rows, ids, start, stop, zeros(8), inv, out_row)
        column = 8
    else:
        bias = _bias_pass(rows, ids, start, stop)
        column = 0
    while column + BAG_BLOCK8 <= dim:
        _next_pass8(rows, ids, start, stop, column, zeros(BAG_BLOCK8), bias, inv, out_row)
        column += BAG_BLOCK8
    while column + BAG_HALF8 <= dim:
        _next_pass8(rows, ids, start, stop, column, zeros(BAG_HALF8), bias, inv, out_row)
        column += BAG_HALF8
    while column + BAG_QUARTER8 <= dim:
        _next_pass8(rows, ids, start, stop, column, zeros(BAG_QUARTER8), bias, inv, out_row)
        column += BAG_QUARTER8
    while column + 8 <= dim:
        _next_pass8(rows, ids, start, stop, column, zeros(8), bias, inv, out_row)
        column += 8
    _tail_columns(rows, ids, start, stop, column, dim, 8, bias, inv, out_row)


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bags8_into(
    rows: np.ndarray, ids: np.ndarray, offsets: np.ndarray, lo: int, hi: int, dim: int, mean: bool, out: np.ndarray
) -> None:
    """`_bags_into` of int8 rows, FOLD_ROWS rows of a bag at a time (`_bag8`)."""
    scratch = np.empty(0, np.float32)
    for b in range(lo, hi):
        start, stop, inv = bag_bounds(offsets, b, ids.shape[0], mean)
        whole = stop - start <= FOLD_ROWS
        part_inv = inv if whole else np.float32(1.0)
        first = start
        while True:
            last = min(stop, first + FOLD_ROWS)
            head = first == start
            if not head and scratch.shape[0] == 0:
                scratch = np.empty(dim, np.float32)
            # one call of the inlined body, not one a branch: each call is compiled in full
            _bag8(rows, ids, first, last, dim, part_inv, out[b] if head else scratch)
            if not head:
                out[b] += scratch
            first = last
            if first >= stop:
                break
        if not whole:
            out[b] *= inv


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _first_pass4(
    rows: np.ndarray, ids: np.ndarray, start: int, stop: int, zero: F32Vector, inv: np.float32, out_row: np.ndarray
) -> np.float32:
    """`_first_pass8` of int4 rows: columns [0, 2 * lanes), even and odd columns in vectors of their
    own, interleaved once at the store."""
    even = zero
    odd = zero
    bias = np.float32(0.0)
    ahead = min(stop, ids.shape[0] - ROW_PREFETCH_DISTANCE)
    for t in range(start, ahead):
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_DISTANCE], False)
        _prefetch_lines(rows, ids[t + ROW_PREFETCH_NEAR], True)
        row = rows[ids[t]]
        bias += _row_bias(row)
        even, odd = _add_row4(row, 0, even, odd)
    for t in range(max(start, ahead), stop):
        row = rows[ids[t]]
        bias += _row_bias(row)
        even, odd = _add_row4(row, 0, even, odd)
    store_interleaved_affine(out_row, 0, even, odd, bias, inv)
    return bias


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _next_pass4(
    rows: np.ndarray,
    ids: np.ndarray,
    start: int,
    stop: int,
    column: int,
    zero: F32Vector,
    bias: np.float32,
    inv: np.float32,
    out_row: np.ndarray,
) -> None:
    """Columns [column, column + 2 * lanes) of the bag's int4 rows into out_row (column even)."""
    even = zero
    odd = zero
    for t in range(start, stop):
        even, odd = _add_row4(rows[ids[t]], column, even, odd)
    store_interleaved_affine(out_row, column, even, odd, bias, inv)


@njit(inline="always", nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bag4(
    rows: np.ndarray, ids: np.ndarray, start: int, stop: int, dim: int, inv: np.float32, out_row: np.ndarray
) -> None:
    """`_bag8` of int4 rows (1.02-1.2x the speed of four rows at a time on an AMD EPYC)."""
    if dim >= BAG_BLOCK4:
        bias = _first_pass4(rows, ids, start, stop, zeros(BAG_LANES4), inv, out_row)
        column = BAG_BLOCK4
    elif dim >= 2 * BAG_HALF_LANES4:
        bias = _first_pass4(rows, ids, start, stop, zeros(BAG_HALF_LANES4), inv, out_row)
        column = 2 * BAG_HALF_LANES4
    elif dim >= 2 * BAG_QUARTER_LANES4:
        bias = _first_pass4(rows, ids, start, stop, zeros(BAG_QUARTER_LANES4), inv, out_row)
        column = 2 * BAG_QUARTER_LANES4
    elif dim >= 16:
        bias = _first_pass4(rows, ids, start, stop, zeros(8), inv, out_row)
        column = 16
    else:
        bias = _bias_pass(rows, ids, start, stop)
        column = 0
    while column + BAG_BLOCK4 <= dim:
        _next_pass4(rows, ids, start, stop, column, zeros(BAG_LANES4), bias, inv, out_row)
        column += BAG_BLOCK4
    while column + 2 * BAG_HALF_LANES4 <= dim:
        _next_pass4(rows, ids, start, stop, column, zeros(BAG_HALF_LANES4), bias, inv, out_row)
        column += 2 * BAG_HALF_LANES4
    while column + 2 * BAG_QUARTER_LANES4 <= dim:
        _next_pass4(rows, ids, start, stop, column, zeros(BAG_QUARTER_LANES4), bias, inv, out_row)
        column += 2 * BAG_QUARTER_LANES4
    while column + 16 <= dim:
        _next_pass4(rows, ids, start, stop, column, zeros(8), bias, inv, out_row)
        column += 16
    _tail_columns(rows, ids, start, stop, column, dim, 4, bias, inv, out_row)


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bags4_into(
    rows: np.ndarray, ids: np.ndarray, offsets: np.ndarray, lo: int, hi: int, dim: int, mean: bool, out: np.ndarray
) -> None:
    """`_bags8_into` of int4 rows."""
    scratch = np.empty(0, np.float32)
    for b in range(lo, hi):
        start, stop, inv = bag_bounds(offsets, b, ids.shape[0], mean)
        whole = stop - start <= FOLD_ROWS
        part_inv = inv if whole else np.float32(1.0)
        first = start
        while True:
            last = min(stop, first + FOLD_ROWS)
            head = first == start
            if not head and scratch.shape[0] == 0:
                scratch = np.empty(dim, np.float32)
            _bag4(rows, ids, first, last, dim, part_inv, out[b] if head else scratch)
            if not head:
                out[b] += scratch
            first = last
            if first >= stop:
                break
        if not whole:
            out[b] *= inv


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bags2_into(
    rows: np.ndarray, ids: np.ndarray, offsets: np.ndarray, lo: int, hi: int, dim: int, mean: bool, out: np.ndarray
) -> None:
    """`_bags_into` of int2 rows: each row dequantized whole, then added."""
    decoded = np.empty(dim, dtype=np.float32)
    for b in range(lo, hi):
        start, stop, inv = bag_bounds(offsets, b, ids.shape[0], mean)
        out[b, :] = 0.0
        for t in range(start, stop):
            _prefetch_ahead(rows, ids, t)
            _dequant_row(rows[ids[t]], dim, 2, decoded)
            for j in range(dim):
                out[b, j] += decoded[j]
        if mean:
            for j in range(dim):
                out[b, j] *= inv


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
    out: np.ndarray,
) -> None:
    """Pool bags lo..hi-1 into out[lo:hi] on this thread. Per bag and FOLD_ROWS rows,
    sum(scale · codes) goes into float32 accumulators and sum(bias) into a scalar, added at the
    end of the rows (int2: whole decoded rows are added). One kernel a code width: with all three
    in one loop nest the compiler kept the int8 and int4 sums out of vector registers (measured 2x
    slower)."""
    if lo < hi:
        _prefetch_first(rows, ids, offsets[lo], min(ids.shape[0], offsets[lo] + ROW_PREFETCH_DISTANCE))
    if bits == 8:
        _bags8_into(rows, ids, offsets, lo, hi, dim, mean, out)
    elif bits == 4:
        _bags4_into(rows, ids, offsets, lo, hi, dim, mean, out)
    else:
        _bags2_into(rows, ids, offsets, lo, hi, dim, mean, out)


@njit(parallel=True, nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def _bags_chunks_into(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    dim: int,
    bits: int,
    mean: bool,
    nchunks: int,
    out: np.ndarray,
) -> None:
    """`_bags_into` of every bag with one contiguous run of bags a task (`nchunks`, one a thread)."""
    nbags = offsets.shape[0]
    for c in prange(nchunks):
        _bags_into(rows, ids, offsets, c * nbags // nchunks, (c + 1) * nbags // nchunks, dim, bits, mean, out)


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def bags_chunked(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    dim: int,
    bits: int,
    mean: bool,
    nchunks: int,
) -> np.ndarray:
    """`bags` with one contiguous run of bags a task (`nchunks`, one a thread)."""
    out = np.empty((offsets.shape[0], dim), dtype=np.float32)
    _bags_chunks_into(rows, ids, offsets, dim, bits, mean, nchunks, out)
    return out


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def bags_checked_into(
    rows: np.ndarray,
    dim: int,
    bits: int,
    min_ids: int,
    ids: np.ndarray,
    offsets: np.ndarray,
    mean: bool,
    out: np.ndarray,
) -> int:
    """`bags` of ids (m,) int64 and offsets (B,) int64, neither checked yet, into out (B, dim)
    float32 in one call: both checked, the threads chosen (`bag_tasks`'s rule) and the bags pooled
    -> -1, or, out left as it was, `bag_input_fault`'s answer. As Python steps (two checks, the
    thread count, the kernel) a bag lookup paid ~2-4 µs more. The table's own arguments come first,
    so a codec binds them once (`Codec.direct_bags`)."""
    fault = bag_input_fault(ids, offsets, rows.shape[0])
    if fault >= 0:
        return fault
    tasks = kernel_bag_tasks(ids.shape[0], offsets.shape[0], min_ids)
    if tasks > 1:
        _bags_chunks_into(rows, ids, offsets, dim, bits, mean, tasks, out)
    else:
        _bags_into(rows, ids, offsets, np.int64(0), offsets.shape[0], dim, bits, mean, out)
    return -1


@njit(nogil=True, cache=True, fastmath=FLOAT_FLAGS)
def bags_serial(rows: np.ndarray, ids: np.ndarray, offsets: np.ndarray, dim: int, bits: int, mean: bool) -> np.ndarray:
    """`bags` on the calling thread, for small batches."""
    out = np.empty((offsets.shape[0], dim), dtype=np.float32)
    _bags_into(rows, ids, offsets, np.int64(0), offsets.shape[0], dim, bits, mean, out)
    return out


def bags(
    rows: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    dim: int,
    bits: int,
    mean: bool,
    min_ids: int = DEFAULT_PARALLEL_MIN_IDS,
) -> np.ndarray:
    """Pooled lookup as torch EmbeddingBag: bag b sums ids[offsets[b]:offsets[b+1]] (the last bag
    runs to the end). rows (n, P+4) uint8, ids (m,) int64, offsets (B,) int64 -> (B, dim) float32.
    An empty bag is zeros; mode mean divides by the bag's size. Parallel over runs of bags where
    the batch is large enough to pay for waking threads."""
    tasks = bag_tasks(ids.shape[0], offsets.shape[0], min_ids)
    if tasks == 1:
        return bags_serial(rows, ids, offsets, dim, bits, mean)
    return bags_chunked(rows, ids, offsets, dim, bits, mean, tasks)


def gather_key_rows(
    rows: np.ndarray, slots: np.ndarray, keys: np.ndarray, dim: int, bits: int, min_ids: int = DEFAULT_PARALLEL_MIN_IDS
) -> tuple[np.ndarray | None, int]:
    """keys (b,) int64 -> their dequantized rows (b, dim) float32 (None when some key is absent),
    and how many keys are absent."""
    if use_parallel(keys.shape[0], min_ids):
        out, absent = gather_keys(rows, slots, keys, dim, bits, numba.get_num_threads())
        return (out if absent == 0 else None), int(absent)
    out, absent = gather_keys_serial(rows, slots, keys, dim, bits)
    return (out if absent == 0 else None), int(absent)


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
    """Twin of `gather_checked_into`: rows (n, P+4) uint8, ids (b,) int64 -> (b, dim) float32."""
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
