"""4-bit PQ fast scan: codes laid out in blocks of 32 rows, 8-bit lookup tables, byte shuffles.

With 16 codewords a subspace, one subspace's lookup table fits in a 16-byte register lane once its
float entries are quantized to uint8, and a byte shuffle (`vpshufb`) then looks up 32 rows' codes
in one instruction. This is the scheme of André et al. ("Cache locality is not enough", VLDB 2015)
that Faiss calls fast scan; the kernel here is ours:

- layout: `blocked[b, p, j]` is the packed byte of row 32·b + j for subspaces 2p (low nibble) and
  2p + 1 (high nibble), i.e. the row-major codes transposed inside each block of 32 rows, so one
  32-byte load holds one subspace pair for a whole block;
- tables: per query, lut_m is mapped to uint8 by q = round((lut_m - min_m) · scale) with one
  scale for all subspaces, and the 32 sums of a block accumulate in uint16 lanes;
- exactness: a quantized sum is within `slack` units of the true scaled float sum, so a row whose
  quantized sum is below the heap's threshold minus the slack cannot enter the top-k. Rows that
  pass are rescored with the float tables in the order `scan.adc_topk` uses, so the results are
  the float scan's results, bit for bit: quantization only decides which rows are worth rescoring.

The shuffle is emitted as an LLVM x86 intrinsic (`llvm.x86.avx2.pshuf.b`), so the kernel runs only
where numba's target and the CPU both have AVX2 (`AVAILABLE`); elsewhere callers use `scan.adc_topk`.
Where numba compiles for AVX-512 (`WIDE`), one 64-byte shuffle (`vpshufb` on zmm) looks up two
subspace pairs of a block at once, from tables reordered by `quad_tables`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels import cpu
from runtime.kernels.intrinsics import STREAM_PREFETCH_BYTES, popcount64, prefetch_row_into, target_has
from runtime.kernels.scan import _chunk_bounds, _code_row_sum
from runtime.kernels.simd import REGISTER_LANES
from runtime.kernels.topk import heap_push, merge_partials, partial_heaps

BLOCK_ROWS = 32
"""Rows a block holds: one byte per row fills a 32-byte AVX2 register."""
GROUP_BLOCKS = 16
"""Blocks scanned for every query before moving on (16 × 32 rows): their codes stay in L1."""


AVAILABLE = cpu.kernels_can_use("avx2")

WIDE = REGISTER_LANES == 16
"""Two subspace pairs a 64-byte register: where numba compiles for AVX-512 (or EMBSERVE_VECTOR_LANES
forces sixteen lanes; without AVX-512BW each 64-byte shuffle is then two 32-byte ones), the block
kernel issues half as many instructions a subspace. On an AMD EPYC of the Zen 4 family (which runs
a 512-bit operation as two 256-bit halves) one thread scanned 1M x 32 codes in 0.68 ms against
0.71 ms with 32-byte shuffles, at ~23 GB/s, about what one core reads from memory there."""


# ---- layout and tables (numpy) ------------------------------------------------------------------
def blocked_layout(codes: np.ndarray) -> np.ndarray:
    """Row-major packed codes (n, P) uint8 -> (ceil(n / 32), P, 32) uint8; padding rows are 0."""
    n, pairs = codes.shape
    nblocks = -(-n // BLOCK_ROWS)
    padded = np.zeros((nblocks * BLOCK_ROWS, pairs), dtype=np.uint8)
    padded[:n] = codes
    return np.ascontiguousarray(padded.reshape(nblocks, BLOCK_ROWS, pairs).transpose(0, 2, 1))


def row_codes(blocked: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Packed codes of rows `ids` (b,) int64 read back from the blocked layout -> (b, P) uint8."""
    return blocked[ids // BLOCK_ROWS, :, ids % BLOCK_ROWS]


@njit(nogil=True, cache=True)
def quantize_luts(luts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """luts (q, M, K) float32 -> (tables (q, M, 2K) uint8, each table twice (with K = 16, one
    16-byte copy a register lane; the 8-bit fast scan reads the first 256 of K = 256); bias (q,)
    float64; scale (q,) float64; slack (q,) float64).

    For every row, |sum_m tables[m, c_m] - (sum_m luts[m, c_m] - bias) · scale| <= slack, counting
    the rounding of each entry (1/2 a subspace) and float32 accumulation of the float sum. A
    kernel because every 4-bit search pays it: numpy's dozen small passes took ~75 µs a query.
    """
    nq, nm, ksub = luts.shape
    top = float(min(255, 65535 // max(nm, 1)))
    tables = np.empty((nq, nm, 2 * ksub), dtype=np.uint8)
    bias = np.zeros(nq)
    scale = np.ones(nq)
    slack = np.empty(nq)
    mins = np.zeros(nm)
    for q in range(nq):
        span = 0.0
        largest = 0.0
        for m in range(nm):
            lo = np.inf
            hi = -np.inf
            biggest = 0.0
            for k in range(ksub):
                v = np.float64(luts[q, m, k])
                lo = min(lo, v)
                hi = max(hi, v)
                biggest = max(biggest, abs(v))
            mins[m] = lo if ksub else 0.0
            span = max(span, hi - mins[m])
            bias[q] += mins[m]
            largest += biggest
        if span > 0:
            scale[q] = top / span
        for m in range(nm):
            for k in range(ksub):
                level = min(max(np.rint((np.float64(luts[q, m, k]) - mins[m]) * scale[q]), 0.0), top)
                tables[q, m, k] = np.uint8(level)
                tables[q, m, k + ksub] = np.uint8(level)
        # float32 sums of nm terms are off by at most nm · 2^-24 · sum |terms|; doubled for safety
        float_error = 2.0 * nm * 2.0**-24 * largest
        slack[q] = 0.5 * nm + float_error * scale[q] + 1.0
    return tables, bias, scale, slack


def quantize_luts_numpy(luts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Twin of `quantize_luts` (sums over subspaces taken in order, as the kernel takes them)."""
    nq, nm, ksub = luts.shape
    lut64 = luts.astype(np.float64)
    mins = lut64.min(axis=2, initial=np.inf) if ksub else np.zeros((nq, nm))
    spans = (lut64.max(axis=2, initial=-np.inf) - mins).max(axis=1, initial=0.0)
    top = float(min(255, 65535 // max(nm, 1)))
    scale = np.where(spans > 0, top / np.where(spans > 0, spans, 1.0), 1.0)
    levels = np.rint((lut64 - mins[:, :, None]) * scale[:, None, None])
    q8 = np.clip(levels, 0, top).astype(np.uint8)
    tables = np.ascontiguousarray(np.concatenate([q8, q8], axis=2))
    largest = np.abs(lut64).max(axis=2, initial=0.0)
    bias = np.zeros(nq)
    largest_sum = np.zeros(nq)
    for m in range(nm):
        bias = bias + mins[:, m]
        largest_sum = largest_sum + largest[:, m]
    float_error = 2.0 * nm * 2.0**-24 * largest_sum
    slack = 0.5 * nm + float_error * scale + 1.0
    return tables, bias, scale, slack


def block_sums_numpy(blocked: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Twin of the shuffle kernel: blocked (B, P, 32) uint8, one query's tables (M, 32) uint8
    -> (B, 32) uint16 quantized sums (wrapping as the uint16 lanes do)."""
    low = (blocked & 15).astype(np.int64)
    high = (blocked >> 4).astype(np.int64)
    pairs = blocked.shape[1]
    total = np.zeros((blocked.shape[0], BLOCK_ROWS), dtype=np.int64)
    for p in range(pairs):
        total += tables[2 * p][low[:, p, :]].astype(np.int64)
        total += tables[2 * p + 1][high[:, p, :]].astype(np.int64)
    return (total & 0xFFFF).astype(np.uint16)


@njit(nogil=True, cache=True)
def quad_tables(tables: np.ndarray) -> np.ndarray:
    """tables (q, M, 32) uint8 -> the same rows reordered for the 64-byte shuffle: each run of four
    subspaces 4g..4g+3 (two code pairs, one 64-byte load of a block's codes) becomes 4g, 4g+2 (the
    low nibbles' tables) then 4g+1, 4g+3 (the high nibbles'); a last odd pair's two rows stay put."""
    out = tables.copy()
    for q in range(tables.shape[0]):
        for g in range(tables.shape[1] // 4):
            for half in range(2):
                for pair in range(2):
                    out[q, 4 * g + 2 * half + pair] = tables[q, 4 * g + 2 * pair + half]
    return out


def quad_tables_numpy(tables: np.ndarray) -> np.ndarray:
    """Twin of `quad_tables`."""
    nq, nm, width = tables.shape
    whole = nm - nm % 4
    quads = tables[:, :whole].reshape(nq, whole // 4, 2, 2, width).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(np.concatenate([quads.reshape(nq, whole, width), tables[:, whole:]], axis=1))


# ---- the shuffle kernel -------------------------------------------------------------------------
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _splat_bytes(value: int, lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I8, lanes), [value] * lanes)


def _shuffle_bytes(context, builder, table, index):  # type: ignore[no-untyped-def]
    """pshufb of 32 or 64 bytes (a byte lookup inside each 16-byte lane): one instruction, or with
    64 bytes and no AVX-512BW in the target, two 32-byte ones on the halves."""
    lanes = table.type.count
    v32i8 = ir.VectorType(_I8, 32)
    avx2 = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v32i8, [v32i8, v32i8]), "llvm.x86.avx2.pshuf.b"
    )
    if lanes == 32:
        return builder.call(avx2, [table, index])
    if target_has(context, "avx512bw"):
        v64i8 = ir.VectorType(_I8, 64)
        wide = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v64i8, [v64i8, v64i8]), "llvm.x86.avx512.pshuf.b.512"
        )
        return builder.call(wide, [table, index])
    halves = []
    for first in (0, 32):
        part = ir.Constant(ir.VectorType(_I32, 32), list(range(first, first + 32)))
        halves.append(
            builder.call(avx2, [builder.shuffle_vector(table, table, part), builder.shuffle_vector(index, index, part)])
        )
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(_I32, 64), list(range(64))))


def _add_pair_sums(context, builder, codes, table_low, table_high, mixed_acc, odd_acc):  # type: ignore[no-untyped-def]
    """Look up one load of codes (32 or 64 bytes) in its low- and high-nibble tables and add the
    bytes found to the accumulators. The bytes are added as 16-bit lanes without widening them:
    lane j of `mixed` gathers row 2j's bytes plus 256 times row 2j+1's (carries included, modulo
    2^16), and lane j of `odd` row 2j+1's alone; row 2j's sum is then mixed - 256 odd. Fewer
    instructions a subspace pair than widening each byte to 16 bits, as Faiss does too."""
    lanes = codes.type.count
    words = ir.VectorType(_I16, lanes // 2)
    low = builder.and_(codes, _splat_bytes(15, lanes))
    high = builder.and_(builder.lshr(codes, _splat_bytes(4, lanes)), _splat_bytes(15, lanes))
    found_low = builder.bitcast(_shuffle_bytes(context, builder, table_low, low), words)
    found_high = builder.bitcast(_shuffle_bytes(context, builder, table_high, high), words)
    builder.store(builder.add(builder.load(mixed_acc), builder.add(found_low, found_high)), mixed_acc)
    eight = ir.Constant(words, [8] * (lanes // 2))
    odd = builder.add(builder.lshr(found_low, eight), builder.lshr(found_high, eight))
    builder.store(builder.add(builder.load(odd_acc), odd), odd_acc)


def _halves_added(builder, value):  # type: ignore[no-untyped-def]
    """A 32-lane uint16 vector's two 16-lane halves added: the sums of two pairs into one block's."""
    lanes = value.type.count // 2
    low = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(_I32, lanes), list(range(lanes))))
    high = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(_I32, lanes), list(range(lanes, 2 * lanes))))
    return builder.add(low, high)


def _block_sums_codegen(wide: bool):  # type: ignore[no-untyped-def]
    """Code of `_block_sums_avx2` (one pair a 32-byte load) or `_block_sums_wide` (two pairs a
    64-byte load, tables in `quad_tables` order, a last odd pair on its own)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        v16i16 = ir.VectorType(_I16, 16)
        v32i16 = ir.VectorType(_I16, 32)
        codes_ary = context.make_array(signature.args[0])(context, builder, args[0])
        tables_ary = context.make_array(signature.args[2])(context, builder, args[2])
        sums_ary = context.make_array(signature.args[4])(context, builder, args[4])
        pairs = cgutils.unpack_tuple(builder, codes_ary.shape)[1]
        block_stride = cgutils.unpack_tuple(builder, codes_ary.strides)[0]
        block_index = context.cast(builder, args[1], signature.args[1], types.int64)
        codes_addr = builder.add(builder.ptrtoint(codes_ary.data, _I64), builder.mul(block_stride, block_index))
        tables_addr = builder.ptrtoint(tables_ary.data, _I64)

        def load_bytes(address, lanes):  # type: ignore[no-untyped-def]
            vector = ir.VectorType(_I8, lanes)
            return builder.load(builder.inttoptr(address, vector.as_pointer()), align=1, typ=vector)

        def offset(base, index, step, extra=0):  # type: ignore[no-untyped-def]
            return builder.add(base, builder.add(builder.mul(index, ir.Constant(_I64, step)), ir.Constant(_I64, extra)))

        def add_step(index, width, mixed, odd):  # type: ignore[no-untyped-def]
            # step `index` of `width` code bytes (one pair, or two), its tables twice that
            codes = load_bytes(offset(codes_addr, index, width), width)
            low_tables = load_bytes(offset(tables_addr, index, 2 * width), width)
            high_tables = load_bytes(offset(tables_addr, index, 2 * width, width), width)
            _add_pair_sums(context, builder, codes, low_tables, high_tables, mixed, odd)

        mixed_acc = cgutils.alloca_once_value(builder, ir.Constant(v16i16, [0] * 16))
        odd_acc = cgutils.alloca_once_value(builder, ir.Constant(v16i16, [0] * 16))
        first_single = ir.Constant(_I64, 0)
        if wide:
            wide_mixed = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))
            wide_odd = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))
            quads = builder.lshr(pairs, ir.Constant(_I64, 1))
            with cgutils.for_range(builder, quads) as loop:
                add_step(loop.index, 64, wide_mixed, wide_odd)
            builder.store(_halves_added(builder, builder.load(wide_mixed)), mixed_acc)
            builder.store(_halves_added(builder, builder.load(wide_odd)), odd_acc)
            first_single = builder.shl(quads, ir.Constant(_I64, 1))
        with cgutils.for_range_slice(builder, first_single, pairs, ir.Constant(_I64, 1)) as (p, _):
            add_step(p, 32, mixed_acc, odd_acc)
        threshold = context.cast(builder, args[3], signature.args[3], types.int64)
        return store_row_sums(builder, builder.load(mixed_acc), builder.load(odd_acc), sums_ary.data, threshold)

    return codegen


def store_row_sums(builder, mixed, odd, sums, threshold):  # type: ignore[no-untyped-def]
    """The end of a block kernel: row sums out of the two 16-bit accumulators (`_add_pair_sums`),
    lane j of `mixed` holding row 2j's bytes plus 256 times row 2j+1's and lane j of `odd` row
    2j+1's, stored in row order at `sums` (a pointer); -> the mask of rows (one bit a row, an
    integer as wide as the rows) whose sum is >= `threshold` (an int64 within 0-65535)."""
    lanes = mixed.type.count
    words = ir.VectorType(_I16, 2 * lanes)
    even = builder.sub(mixed, builder.shl(odd, ir.Constant(mixed.type, [8] * lanes)))
    interleave = ir.Constant(ir.VectorType(_I32, 2 * lanes), [j // 2 + lanes * (j % 2) for j in range(2 * lanes)])
    result = builder.shuffle_vector(even, odd, interleave)
    builder.store(result, builder.bitcast(sums, words.as_pointer()), align=1)
    splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(words, ir.Undefined), builder.trunc(threshold, _I16), ir.Constant(_I32, 0)),
        ir.Constant(words, ir.Undefined),
        ir.Constant(ir.VectorType(_I32, 2 * lanes), [0] * (2 * lanes)),
    )
    return builder.bitcast(builder.icmp_unsigned(">=", result, splat), ir.IntType(2 * lanes))


@intrinsic
def _block_sums_avx2(typingctx, blocked, block, tables, threshold, sums):  # type: ignore[no-untyped-def]
    """Quantized sums of one block for one query, written to sums (32,) uint16; returns a uint32
    whose bit j is set when sums[j] >= threshold. blocked (B, P, 32) uint8 C-contiguous, tables
    (M, 32) uint8 C-contiguous."""
    return types.uint32(blocked, types.int64, tables, types.int64, sums), _block_sums_codegen(False)


@intrinsic
def _block_sums_wide(typingctx, blocked, block, tables, threshold, sums):  # type: ignore[no-untyped-def]
    """`_block_sums_avx2` two subspace pairs a 64-byte shuffle; tables (M, 32) in `quad_tables` order."""
    return types.uint32(blocked, types.int64, tables, types.int64, sums), _block_sums_codegen(True)


@njit(inline="always", nogil=True, cache=True)
def _block_sums(blocked: np.ndarray, block: int, tables: np.ndarray, threshold: int, sums: np.ndarray) -> int:
    """The block kernel numba compiles for: tables in `quad_tables` order where WIDE."""
    if WIDE:
        return _block_sums_wide(blocked, block, tables, threshold, sums)
    return _block_sums_avx2(blocked, block, tables, threshold, sums)


@njit(nogil=True, cache=True)
def _threshold(worst: float, bias: float, scale: float, slack: float) -> int:
    """Smallest quantized sum a row needs to possibly beat `worst`, clamped to the uint16 range."""
    t = np.floor((worst - bias) * scale - slack)
    if t <= 0.0:
        return 0
    if t >= 65535.0:
        return 65535
    return int(t)


@njit(nogil=True, cache=True)
def _scan_group(
    blocked: np.ndarray,
    tables: np.ndarray,
    flat_lut: np.ndarray,
    bias: float,
    scale: float,
    slack: float,
    n: int,
    first_block: int,
    stop_block: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
    sums: np.ndarray,
    stream: bool,
) -> int:
    """Offer the rows of blocks first_block..stop_block-1 to one query's heap; returns its size.
    flat_lut (M * 16,) float32 is the query's float table, tables (M, 32) uint8 its quantized one
    (in `quad_tables` order where WIDE); `stream`: the blocks come from memory (the first query
    of a group), so prefetch ahead."""
    kk = heap_keys.shape[0]
    limit = _threshold(heap_keys[0], bias, scale, slack) if size == kk else 0
    block_bytes = blocked.shape[1] * BLOCK_ROWS
    # a group and 4 KiB ahead, into L2, as the 8-bit scan does: over 1M x 32 codes out of cache,
    # one thread of the Zen 4 EPYC took 0.80-1.07 ms with 4 KiB ahead into L1 and 0.70-0.94 ms
    # with 8-16 KiB ahead into L2 (three runs alternated in one process)
    ahead = GROUP_BLOCKS + max(1, STREAM_PREFETCH_BYTES // block_bytes)
    for b in range(first_block, stop_block):
        if stream:  # the first query to scan a group reads it from memory; later ones find it in cache
            for line in range(0, block_bytes, 64):
                prefetch_row_into(blocked, b + ahead, line, False)
        mask: int = _block_sums(blocked, b, tables, limit, sums)
        if mask == 0:
            continue
        base = b * 32
        size = offer_passed(passed_rows(mask, base, n), blocked[b].T, True, flat_lut, base, heap_keys, heap_ids, size)
        if size == kk:
            limit = _threshold(heap_keys[0], bias, scale, slack)
    return size


@njit(inline="always", nogil=True, cache=True)
def passed_rows(mask: int, base: int, n: int) -> np.uint64:
    """A block's mask of rows that passed the bound (bit j: row base + j), padding rows past n
    cleared."""
    pending = np.uint64(mask)
    if n - base < 64:
        pending &= (np.uint64(1) << np.uint64(n - base)) - np.uint64(1)
    return pending


@njit(inline="always", nogil=True, cache=True)
def offer_passed(
    pending: np.uint64,
    rows: np.ndarray,
    four_bit: bool,
    flat_lut: np.ndarray,
    base: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
) -> int:
    """Rescore row base + j for every set bit j of `pending`, lowest first, with the float tables
    in the float scan's order (so the fast scans' results are the scalar scan's), and offer it to
    a heap; rows[j] holds that row's codes (any stride). Returns the heap's size."""
    kk = heap_keys.shape[0]
    worst = heap_keys[0] if size == kk else -np.inf
    while pending != 0:
        lowest = pending & (~pending + np.uint64(1))
        pending ^= lowest
        j = np.int64(popcount64(lowest - np.uint64(1)))
        s = _code_row_sum(rows[j], flat_lut, four_bit)
        if s > worst:
            size = heap_push(heap_keys, heap_ids, size, s, base + j)
            if size == kk:
                worst = heap_keys[0]
    return size


@njit(nogil=True, cache=True)
def _scan_chunk(blocked: np.ndarray, query: tuple, n: int, c: int, nchunks: int, heaps: tuple) -> None:  # type: ignore[type-arg]
    """Chunk c of nchunks (of the blocks) scanned group by group for every query. query holds
    the tables (q, M, 32) uint8 in `_block_sums` order, the float tables flattened (q, M * 16)
    float32, and bias, scale, slack (q,) float64; heaps the keys (q, nchunks, k') float32, ids
    (q, nchunks, k') int64 and sizes (q, nchunks) int64 of every query's heap of every chunk."""
    ordered, flat, bias, scale, slack = query
    part_keys, part_ids, part_sizes = heaps
    first, stop = _chunk_bounds(blocked.shape[0], nchunks, c)
    sums = np.empty(32, dtype=np.uint16)
    # groups keep blocks in L1 for the queries after the first; one query takes the chunk at once
    step = GROUP_BLOCKS if flat.shape[0] > 1 else max(1, stop - first)
    for group in range(first, stop, step):
        group_stop = min(stop, group + step)
        for qi in range(flat.shape[0]):
            part_sizes[qi, c] = _scan_group(
                blocked,
                ordered[qi],
                flat[qi],
                bias[qi],
                scale[qi],
                slack[qi],
                n,
                group,
                group_stop,
                part_keys[qi, c],
                part_ids[qi, c],
                part_sizes[qi, c],
                sums,
                qi == 0,
            )


@njit(parallel=True, nogil=True, cache=True)
def _scan_chunks_parallel(blocked: np.ndarray, query: tuple, n: int, heaps: tuple) -> None:  # type: ignore[type-arg]
    """Every chunk (as many as the heaps have) by `_scan_chunk`, one task a chunk."""
    nchunks = heaps[2].shape[1]
    for c in prange(nchunks):
        _scan_chunk(blocked, query, n, np.int64(c), nchunks, heaps)


@njit(nogil=True, cache=True)
def fastscan_topk(blocked: np.ndarray, luts: np.ndarray, n: int, k: int, nchunks: int):
    """Top-k of sum_m luts[q, m, code[i, m]] over the n rows of a blocked 4-bit code table.

    blocked (B, P, 32) uint8 from `blocked_layout`; luts (q, M, 16) float32, quantized here by
    `quantize_luts`. A task is a chunk of blocks scanned group by group for every query; one
    chunk runs on the calling thread, without a parallel launch (~15 µs out of cache, a tenth of
    a 1-thread query's fixed cost). -> keys (q, k') float32, ids (q, k') int64, best first,
    k' = min(k, n): exactly `scan.adc_topk(row-major codes, luts, [], [], k, ..., True)`.
    """
    nq = luts.shape[0]
    tables, bias, scale, slack = quantize_luts(luts)
    ordered = quad_tables(tables) if WIDE else tables
    flat = np.ascontiguousarray(luts).reshape(nq, luts.shape[1] * luts.shape[2])
    kk = min(k, n)
    heaps = partial_heaps(nq, nchunks, kk)
    query = (ordered, flat, bias, scale, slack)
    if nchunks == 1:
        _scan_chunk(blocked, query, n, np.int64(0), np.int64(1), heaps)
    else:
        _scan_chunks_parallel(blocked, query, n, heaps)
    return merge_partials(heaps[0], heaps[1], heaps[2], kk)


@njit(nogil=True, cache=True)
def block_sums(blocked: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """The shuffle kernel over every block (for tests against `block_sums_numpy`):
    blocked (B, P, 32) uint8, tables (M, 32) uint8 -> (B, 32) uint16."""
    out = np.empty((blocked.shape[0], 32), dtype=np.uint16)
    sums = np.empty(32, dtype=np.uint16)
    ordered = quad_tables(tables.reshape(1, tables.shape[0], tables.shape[1]))[0] if WIDE else tables
    for b in range(blocked.shape[0]):
        _block_sums(blocked, b, ordered, 0, sums)
        out[b] = sums
    return out
