"""8-bit PQ fast scan: lookups of 256-entry byte tables in registers, over row-major codes.

The 4-bit fast scan (`fastscan.py`) looks up 16-entry tables with a byte shuffle. With AVX-512
VBMI a two-table byte permute (`vpermi2b`) looks up 128 entries for 64 bytes at once, so two of
them and a select by each code's top bit look up a 256-entry table for 64 rows: a handful of
instructions where the scalar scan (`scan.adc_topk`) loads one float a row and subspace. That
scan is bound by its loads (M = 16: ~3.3 of 3.7 ms over 1M rows went to the table sums).

- layout: the codes stay row-major (n, M), as lookups and decoding want them. A block of 64 rows
  is M × 64 contiguous bytes; a transpose in registers (log2 M rounds of two-register byte
  permutes, `_transpose_network`) turns it into M vectors, one a subspace, each holding its codes
  of the 64 rows. So M must be a power of two up to 64 (`supported`); other widths use the
  scalar scan.
- tables: per query, lut_m is mapped to uint8 with one scale for all subspaces by
  `fastscan.quantize_luts` (its tables hold each row twice; the first 256 bytes are read), and
  the 64 sums of a block accumulate in uint16 lanes.
- exactness: as in the 4-bit fast scan, a quantized sum is within `slack` of the scaled float
  sum, so rows below the heap's threshold minus the slack cannot enter the top k, and rows that
  pass are rescored with the float tables in the order `scan.adc_topk` sums them: the results are
  the scalar scan's, bit for bit.

The permutes are LLVM x86 intrinsics, so the kernel runs only where numba's target and the CPU
both have AVX-512 VBMI (`AVAILABLE`: Intel's Ice Lake and later server cores, AMD's Zen 4 and later).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels import cpu
from runtime.kernels.fastscan import _threshold, offer_passed, passed_rows, quantize_luts, store_row_sums
from runtime.kernels.intrinsics import STREAM_PREFETCH_BYTES, prefetch_row_into
from runtime.kernels.scan import _chunk_bounds
from runtime.kernels.topk import merge_partials, partial_heaps

BLOCK_ROWS = 64
"""Rows a block holds: one byte a row fills a 64-byte register."""
GROUP_BLOCKS = 16
"""Blocks transposed together and then scanned for every query (16 × 64 rows, M KiB): in L1 up to
M = 16, in L2 beyond."""
WIDTHS = (1, 2, 4, 8, 16, 32, 64)
"""Code widths (subspaces M) the transpose handles: a block of 64 rows is M whole registers."""

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


AVAILABLE = cpu.kernels_can_use("avx512f", "avx512bw", "avx512vbmi")


def supported(width: int) -> bool:
    """Whether codes of `width` bytes a row (8-bit codes, M = width) can take this kernel here."""
    return AVAILABLE and width in WIDTHS


# ---- the transpose, planned in Python -----------------------------------------------------------
def _transpose_network(width: int) -> tuple[list[list[tuple[int, int, list[int]]]], list[int]]:
    """Rounds of two-register byte permutes that turn a block of 64 rows × `width` code bytes,
    row-major in `width` registers, into one register a subspace with its 64 rows in order.

    Each round pairs registers holding the same subspaces and disjoint rows, and splits the pair
    into the lower and the upper half of those subspaces over both registers' rows. -> (rounds,
    each a list of (first source, second source, 64 indices into the two concatenated, 0-127) a
    new register; final, the register holding subspace m at final[m])."""
    labels = [[(v * (BLOCK_ROWS // width) + p // width, p % width) for p in range(64)] for v in range(width)]
    rounds = []
    while len({sub for _, sub in labels[0]}) > 1:
        groups: dict[tuple[int, ...], list[int]] = {}
        for v, held in enumerate(labels):
            groups.setdefault(tuple(sorted({sub for _, sub in held})), []).append(v)
        ops, next_labels = [], []
        for subs, members in sorted(groups.items()):
            members.sort(key=lambda v: min(row for row, _ in labels[v]))
            for a, b in zip(members[0::2], members[1::2], strict=True):
                where = {label: i for i, label in enumerate(labels[a])}
                where.update({label: 64 + i for i, label in enumerate(labels[b])})
                for part in (subs[: len(subs) // 2], subs[len(subs) // 2 :]):
                    out = sorted(((sub, row) for row, sub in labels[a] + labels[b] if sub in part))
                    ops.append((a, b, [where[(row, sub)] for sub, row in out]))
                    next_labels.append([(row, sub) for sub, row in out])
        rounds.append(ops)
        labels = next_labels
    final = [0] * width
    for v, held in enumerate(labels):
        assert [row for row, _ in held] == list(range(BLOCK_ROWS))
        final[held[0][1]] = v
    return rounds, final


def transpose_network_numpy(block: np.ndarray) -> np.ndarray:
    """Run `_transpose_network` on a (64, M) uint8 block with numpy -> (M, 64): the plan's own
    check (it must equal block.T)."""
    width = block.shape[1]
    regs = list(np.ascontiguousarray(block).reshape(width, 64))
    rounds, final = _transpose_network(width)
    for ops in rounds:
        regs = [np.concatenate([regs[a], regs[b]])[index] for a, b, index in ops]
    return np.stack([regs[final[m]] for m in range(width)])


# ---- the kernels' code --------------------------------------------------------------------------
def _address(builder, context, ary_type, value):  # type: ignore[no-untyped-def]
    ary = context.make_array(ary_type)(context, builder, value)
    return ary, builder.ptrtoint(ary.data, _I64)


def _load(builder, address, vector):  # type: ignore[no-untyped-def]
    return builder.load(builder.inttoptr(address, vector.as_pointer()), align=1, typ=vector)


def _plus(builder, address, offset):  # type: ignore[no-untyped-def]
    return builder.add(address, offset if isinstance(offset, ir.Value) else ir.Constant(_I64, offset))


def _transpose_codegen(width: int):  # type: ignore[no-untyped-def]
    rounds, final = _transpose_network(width)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        v64i8 = ir.VectorType(_I8, 64)
        _, codes = _address(builder, context, signature.args[0], args[0])
        _, out = _address(builder, context, signature.args[2], args[2])
        first = context.cast(builder, args[1], signature.args[1], types.int64)
        slot = context.cast(builder, args[3], signature.args[3], types.int64)
        source = _plus(builder, codes, builder.mul(first, ir.Constant(_I64, width)))
        target = _plus(builder, out, builder.mul(slot, ir.Constant(_I64, width * 64)))
        regs = [_load(builder, _plus(builder, source, 64 * v), v64i8) for v in range(width)]
        for ops in rounds:
            regs = [
                builder.shuffle_vector(regs[a], regs[b], ir.Constant(ir.VectorType(_I32, 64), index))
                for a, b, index in ops
            ]
        for m in range(width):
            builder.store(regs[final[m]], builder.inttoptr(_plus(builder, target, 64 * m), v64i8.as_pointer()), align=1)
        return context.get_dummy_value()

    return codegen


def _transpose_intrinsic(width: int):  # type: ignore[no-untyped-def]
    def typer(typingctx, codes, first, out, slot):  # type: ignore[no-untyped-def]
        return types.void(codes, types.int64, out, types.int64), _transpose_codegen(width)

    typer.__name__ = f"_transpose_{width}"
    return intrinsic(typer)


_TRANSPOSES = {width: _transpose_intrinsic(width) for width in WIDTHS}
_transpose_1, _transpose_2, _transpose_4, _transpose_8 = (_TRANSPOSES[w] for w in (1, 2, 4, 8))
_transpose_16, _transpose_32, _transpose_64 = (_TRANSPOSES[w] for w in (16, 32, 64))


@njit(inline="always", nogil=True, cache=True)
def _transpose(codes: np.ndarray, first: int, out: np.ndarray, slot: int) -> None:
    """Rows first..first+63 of codes (n, M) uint8 C-contiguous -> out[slot] (M, 64), out
    (G, M, 64) uint8 C-contiguous; M in WIDTHS, the rows must exist."""
    width = codes.shape[1]
    if width == 16:
        _transpose_16(codes, first, out, slot)
    elif width == 32:
        _transpose_32(codes, first, out, slot)
    elif width == 8:
        _transpose_8(codes, first, out, slot)
    elif width == 64:
        _transpose_64(codes, first, out, slot)
    elif width == 4:
        _transpose_4(codes, first, out, slot)
    elif width == 2:
        _transpose_2(codes, first, out, slot)
    else:
        _transpose_1(codes, first, out, slot)


def _block_sums_codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
    v64i8 = ir.VectorType(_I8, 64)
    v32i16 = ir.VectorType(_I16, 32)
    permute = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v64i8, [v64i8, v64i8, v64i8]), "llvm.x86.avx512.vpermi2var.qi.512"
    )
    columns_ary, columns = _address(builder, context, signature.args[0], args[0])
    tables_ary, tables = _address(builder, context, signature.args[2], args[2])
    sums_ary = context.make_array(signature.args[4])(context, builder, args[4])
    width = cgutils.unpack_tuple(builder, columns_ary.shape)[1]
    slot_stride = cgutils.unpack_tuple(builder, columns_ary.strides)[0]
    table_stride = cgutils.unpack_tuple(builder, tables_ary.strides)[0]
    slot = context.cast(builder, args[1], signature.args[1], types.int64)
    block = _plus(builder, columns, builder.mul(slot, slot_stride))
    mixed_acc = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))
    odd_acc = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))
    eight = ir.Constant(v32i16, [8] * 32)
    with cgutils.for_range(builder, width) as loop:
        codes = _load(builder, _plus(builder, block, builder.mul(loop.index, ir.Constant(_I64, 64))), v64i8)
        table = _plus(builder, tables, builder.mul(loop.index, table_stride))
        quarters = [_load(builder, _plus(builder, table, 64 * j), v64i8) for j in range(4)]
        # a permute reads its index's low 7 bits: entries 0-127 from the first two quarters,
        # 128-255 from the last two, picked by the top bit
        low = builder.call(permute, [quarters[0], codes, quarters[1]])
        high = builder.call(permute, [quarters[2], codes, quarters[3]])
        found = builder.bitcast(
            builder.select(builder.icmp_signed("<", codes, ir.Constant(v64i8, [0] * 64)), high, low), v32i16
        )
        # bytes added as 16-bit lanes, as the 4-bit kernel does (`fastscan._add_pair_sums`)
        builder.store(builder.add(builder.load(mixed_acc), found), mixed_acc)
        builder.store(builder.add(builder.load(odd_acc), builder.lshr(found, eight)), odd_acc)
    threshold = context.cast(builder, args[3], signature.args[3], types.int64)
    return store_row_sums(builder, builder.load(mixed_acc), builder.load(odd_acc), sums_ary.data, threshold)


@intrinsic
def _block_sums(typingctx, columns, slot, tables, threshold, sums):  # type: ignore[no-untyped-def]
    """Quantized sums of the 64 rows in columns[slot] (M, 64) for one query, written to sums (64,)
    uint16; returns a uint64 whose bit j is set when sums[j] >= threshold. columns (G, M, 64)
    uint8 and tables (M, T >= 256) uint8 C-contiguous in their last axis."""
    return types.uint64(columns, types.int64, tables, types.int64, sums), _block_sums_codegen


# ---- the scan -----------------------------------------------------------------------------------
@njit(nogil=True, cache=True)
def _check_codes(codes: np.ndarray) -> None:
    """The transposes read 64 rows as M × 64 contiguous bytes, for the widths they were built for."""
    width = codes.shape[1]
    if width < 1 or width > 64 or width & (width - 1) != 0:  # WIDTHS: the powers of two up to 64
        raise ValueError("codes must have a width of 1, 2, 4, 8, 16, 32 or 64 bytes")
    if codes.shape[0] > 0 and (codes.strides[1] != 1 or codes.strides[0] != width):
        raise ValueError("codes must be C-contiguous")


@njit(nogil=True, cache=True)
def _transpose_group(
    codes: np.ndarray, first_block: int, stop_block: int, columns: np.ndarray, tail: np.ndarray
) -> None:
    """Blocks first_block..stop_block-1 of codes (n, M) into columns[0..] (G, M, 64); a last
    partial block through `tail` (64, M), zero-padded."""
    n = codes.shape[0]
    width = codes.shape[1]
    # a group and 4 KiB ahead, into L2: a group's lookups read nothing from memory, so the next
    # group's lines must be on their way meanwhile (and a group of M = 32 fills L1). 1M rows on one
    # thread of the Zen 4 EPYC, alternated: M = 16 1.4-2.0 -> 1.1-1.3 ms, M = 32 4.6-5.1 ->
    # 3.4-3.8 ms, against 4 KiB ahead into L1 as the 4-bit scan does
    ahead = GROUP_BLOCKS * BLOCK_ROWS + max(1, STREAM_PREFETCH_BYTES // width)
    for b in range(first_block, stop_block):
        first = b * BLOCK_ROWS
        for line in range(0, BLOCK_ROWS * width, 64):
            prefetch_row_into(codes, first + ahead, line, False)
        if first + BLOCK_ROWS <= n:
            _transpose(codes, first, columns, b - first_block)
        else:
            tail[:] = 0
            tail[: n - first] = codes[first:n]
            _transpose(tail, 0, columns, b - first_block)


@njit(nogil=True, cache=True)
def _scan_group(
    codes: np.ndarray,
    columns: np.ndarray,
    tables: np.ndarray,
    flat_lut: np.ndarray,
    bias: float,
    scale: float,
    slack: float,
    first_block: int,
    stop_block: int,
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    size: int,
    sums: np.ndarray,
) -> int:
    """Offer the rows of blocks first_block..stop_block-1 (transposed in columns[0..]) to one
    query's heap; returns its size. flat_lut (M * 256,) float32 is the query's float table,
    tables (M, T) uint8 its quantized one."""
    n = codes.shape[0]
    kk = heap_keys.shape[0]
    limit = _threshold(heap_keys[0], bias, scale, slack) if size == kk else 0
    for b in range(first_block, stop_block):
        mask: int = _block_sums(columns, b - first_block, tables, limit, sums)
        if mask == 0:
            continue
        base = b * BLOCK_ROWS
        passed = passed_rows(mask, base, n)
        size = offer_passed(passed, codes[base : base + BLOCK_ROWS], False, flat_lut, base, heap_keys, heap_ids, size)
        if size == kk:
            limit = _threshold(heap_keys[0], bias, scale, slack)
    return size


@njit(nogil=True, cache=True)
def _scan_chunk(codes: np.ndarray, query: tuple, c: int, nchunks: int, heaps: tuple) -> None:  # type: ignore[type-arg]
    """Chunk c of nchunks (of the blocks) transposed a group at a time and scanned for every
    query. query holds the tables (q, M, T >= 256) uint8, the float tables flattened
    (q, M * 256) float32, and bias, scale, slack (q,) float64; heaps the keys (q, nchunks, k')
    float32, ids (q, nchunks, k') int64 and sizes (q, nchunks) int64 of every query's heap."""
    tables, flat, bias, scale, slack = query
    part_keys, part_ids, part_sizes = heaps
    width = codes.shape[1]
    first, stop = _chunk_bounds((codes.shape[0] + BLOCK_ROWS - 1) // BLOCK_ROWS, nchunks, c)
    columns = np.empty((GROUP_BLOCKS, width, BLOCK_ROWS), dtype=np.uint8)
    tail = np.zeros((BLOCK_ROWS, width), dtype=np.uint8)
    sums = np.empty(BLOCK_ROWS, dtype=np.uint16)
    for group in range(first, stop, GROUP_BLOCKS):
        group_stop = min(stop, group + GROUP_BLOCKS)
        _transpose_group(codes, group, group_stop, columns, tail)
        for qi in range(flat.shape[0]):
            part_sizes[qi, c] = _scan_group(
                codes,
                columns,
                tables[qi],
                flat[qi],
                bias[qi],
                scale[qi],
                slack[qi],
                group,
                group_stop,
                part_keys[qi, c],
                part_ids[qi, c],
                part_sizes[qi, c],
                sums,
            )


@njit(parallel=True, nogil=True, cache=True)
def _scan_chunks_parallel(codes: np.ndarray, query: tuple, heaps: tuple) -> None:  # type: ignore[type-arg]
    """Every chunk (as many as the heaps have) by `_scan_chunk`, one task a chunk."""
    nchunks = heaps[2].shape[1]
    for c in prange(nchunks):
        _scan_chunk(codes, query, np.int64(c), nchunks, heaps)


@njit(nogil=True, cache=True)
def fastscan8_topk(codes: np.ndarray, luts: np.ndarray, k: int, nchunks: int):
    """Top-k of sum_m luts[q, m, codes[i, m]] over rows of 8-bit codes.

    codes (n, M) uint8 C-contiguous, M in WIDTHS; luts (q, M, 256) float32, quantized here by
    `fastscan.quantize_luts`. A task is a chunk of blocks, transposed a group at a time and
    scanned for every query; one chunk runs on the calling thread, without a parallel launch.
    -> keys (q, k') float32, ids (q, k') int64, best first, k' = min(k, n): exactly
    `scan.adc_topk(codes, luts, [], [], k, ..., False)`.
    """
    _check_codes(codes)
    n, width = codes.shape
    if luts.shape[1] != width or luts.shape[2] != 256:
        raise ValueError("luts must be (q, M, 256) for codes (n, M)")
    nq = luts.shape[0]
    tables, bias, scale, slack = quantize_luts(luts)
    flat = np.ascontiguousarray(luts).reshape(nq, luts.shape[1] * luts.shape[2])
    kk = min(k, n)
    heaps = partial_heaps(nq, nchunks, kk)
    query = (tables, flat, bias, scale, slack)
    if nchunks == 1:
        _scan_chunk(codes, query, np.int64(0), np.int64(1), heaps)
    else:
        _scan_chunks_parallel(codes, query, heaps)
    return merge_partials(heaps[0], heaps[1], heaps[2], kk)


# ---- for tests ----------------------------------------------------------------------------------
@njit(nogil=True, cache=True)
def block_sums(codes: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Transpose and permute kernels over every block (for tests against `block_sums_numpy`):
    codes (n, M) uint8, tables (M, T >= 256) uint8 -> (ceil(n / 64), 64) uint16."""
    _check_codes(codes)
    if tables.shape[0] < codes.shape[1] or tables.shape[1] < 256 or tables.strides[1] != 1:
        raise ValueError("tables must be (M, T >= 256) uint8, rows contiguous")
    n, width = codes.shape
    nblocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    out = np.empty((nblocks, BLOCK_ROWS), dtype=np.uint16)
    columns = np.empty((1, width, BLOCK_ROWS), dtype=np.uint8)
    tail = np.zeros((BLOCK_ROWS, width), dtype=np.uint8)
    sums = np.empty(BLOCK_ROWS, dtype=np.uint16)
    for b in range(nblocks):
        _transpose_group(codes, b, b + 1, columns, tail)
        _block_sums(columns, 0, tables, 0, sums)
        out[b] = sums
    return out


def block_sums_numpy(codes: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Twin of `block_sums`: (ceil(n / 64), 64) uint16 sums of tables[m, codes[i, m]] over m,
    wrapping as uint16 lanes do; padding rows read code 0."""
    n, width = codes.shape
    nblocks = -(-n // BLOCK_ROWS)
    padded = np.zeros((nblocks * BLOCK_ROWS, width), dtype=np.int64)
    padded[:n] = codes
    total = tables[np.arange(width)[None, :], padded].astype(np.int64).sum(axis=1)
    return (total & 0xFFFF).astype(np.uint16).reshape(nblocks, BLOCK_ROWS)
