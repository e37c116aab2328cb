"""LLVM intrinsics numba does not expose: population count, software prefetch, half-float
conversion, float bits, opaque word loads and the thread count inside a kernel."""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

PREFETCH_DISTANCE = 8
"""Rows ahead the fp16 and PQ gathers prefetch: enough to cover DRAM latency with several misses in
flight (the row-wise kernels have their own, `rowwise.ROW_PREFETCH_DISTANCE`)."""

STREAM_PREFETCH_BYTES = 4096
"""Bytes ahead a sequential scan prefetches. The hardware's stream prefetcher alone left one thread
of the 4-bit fast scan waiting on DRAM: 4 KiB ahead took it from 1.44-1.57 to 1.12-1.25 ms over
1M x 32 codes out of cache on an AMD EPYC (2-8 KiB ahead did about as well)."""


@intrinsic
def popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """Population count of a uint64 (LLVM's ctpop: one instruction where the CPU has POPCNT)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


def _prefetch_codegen(locality: int):  # type: ignore[no-untyped-def]
    """Code for LLVM's prefetch of byte `offset` of row `row` of a 2-D array: a read, into the
    data cache, with `locality` 3 (x86 PREFETCHT0: into L1) down to 0 (PREFETCHNTA)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        stride = cgutils.unpack_tuple(builder, ary.strides)[0]
        i64 = ir.IntType(64)
        row_value = context.cast(builder, args[1], signature.args[1], types.int64)
        offset_value = context.cast(builder, args[2], signature.args[2], types.int64)
        address = builder.add(
            builder.ptrtoint(ary.data, i64), builder.add(builder.mul(stride, row_value), offset_value)
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(
            fn,
            [builder.inttoptr(address, i8p), ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)],
        )
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch_row(typingctx, array, row, offset):  # type: ignore[no-untyped-def]
    """Hint the CPU to fetch byte `offset` of row `row` of a 2-D array into L1 (no fault if out of
    bounds; a hint only, so results never depend on it)."""
    return types.void(array, types.int64, types.int64), _prefetch_codegen(3)


@intrinsic(prefer_literal=True)
def prefetch_row_into(typingctx, array, row, offset, into_l1):  # type: ignore[no-untyped-def]
    """`prefetch_row` into L1 where `into_l1` (a literal True or False at the call, or passed down
    as one through inline functions) holds, else into L2 (x86 PREFETCHT1). The row-wise gathers
    ask for a row into L2 far ahead, then into L1 nearer its turn (`rowwise.ROW_PREFETCH_NEAR`,
    with the figures): L1 has few slots for lines in flight; L2 has more."""
    if not isinstance(into_l1, types.BooleanLiteral):
        raise errors.RequireLiteralValue(into_l1)
    sig = types.void(array, types.int64, types.int64, into_l1)
    return sig, _prefetch_codegen(3 if into_l1.literal_value else 2)


def start_threading_layer() -> None:
    """Start numba's threading layer, which registers the symbol `thread_count` calls: needed before
    a kernel that calls it is compiled or loaded from the on-disk cache. Not done at import: with
    GNU OpenMP as the layer, a child forked from a process that started it cannot run a parallel
    kernel, so importing `runtime` must leave a process free to fork. Once it has started, a call
    costs a global's test: numba's own check took ~25 µs on a search whose code was out of cache."""
    global _threading_layer_started
    if not _threading_layer_started:
        numba.get_num_threads()
        _threading_layer_started = True


_threading_layer_started = False


@intrinsic
def thread_count(typingctx):  # type: ignore[no-untyped-def]
    """numba's thread count for the calling thread (`numba.get_num_threads()`), read inside a
    kernel. numba's own overload of that function reaches the threading layer through a ctypes
    pointer, which keeps every kernel calling it out of the on-disk cache; this calls the layer's
    C function (`int get_num_threads(void)`) by the symbol name numba's parallel loops use. Callers
    run `start_threading_layer` before their kernel's first call."""
    start_threading_layer()
    sig = types.int64()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "get_num_threads")
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return sig, codegen


@intrinsic
def load_word(typingctx, flat, offset):  # type: ignore[no-untyped-def]
    """The 8 bytes of a 1-D uint8 array at byte `offset` (unaligned is fine) as one little-endian
    uint64, which the compiler cannot split again.

    LLVM narrows a wide load whose bytes are then shifted out back into one byte load each (its
    load-width reduction), which defeats the point: one load port instead of eight. An empty
    inline-asm copy hides where the value came from. Callers keep offset + 8 <= flat.size."""
    if not (isinstance(flat, types.Array) and flat.dtype == types.uint8 and flat.ndim == 1 and flat.layout == "C"):
        return None
    sig = types.uint64(flat, types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i64 = ir.IntType(64)
        address = builder.gep(ary.data, [args[1]])
        word = builder.load(builder.bitcast(address, i64.as_pointer()), align=1)
        barrier = ir.InlineAsm(ir.FunctionType(i64, [i64]), "", "=r,0", side_effect=False)
        return builder.call(barrier, [word])

    return sig, codegen


@intrinsic
def half_to_float(typingctx, bits):  # type: ignore[no-untyped-def]
    """The float32 value of fp16 bits held in a uint16: LLVM's `fpext half`, which the vectorizer
    turns into the CPU's half-conversion instruction (F16C / AVX-512) where it exists."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if not target_has(context, "f16c"):
            # without F16C LLVM lowers `fpext half` to a compiler-rt call numba's JIT cannot link
            # (e.g. a cache built for NUMBA_CPU_NAME=generic), so convert the bits arithmetically
            return context.compile_internal(builder, _half_bits_to_float, signature, args)
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return sig, codegen


@intrinsic
def float_from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
    """The float32 whose bits a uint32 holds (a reinterpretation, no conversion): float32 rows
    travel as uint32 through kernels also compiled for integer codes, whose bit operations do not
    type on floats."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", nogil=True, cache=True)
def half_from_bytes(lo: np.uint8, hi: np.uint8) -> np.float32:
    """The float32 value of the little-endian fp16 held in two bytes (a fused row's scale or bias)."""
    return half_to_float(np.uint16(lo) | (np.uint16(hi) << np.uint16(8)))


def target_has(context, feature: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the machine code being generated may use a CPU feature: the features numba compiles
    for (the host's, or NUMBA_CPU_FEATURES; a bare NUMBA_CPU_NAME counts as none). Numba's cache is
    keyed by the same features, so code chosen by them never runs on a CPU it was not built for."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    return "+" + feature in features.split(",")


@intrinsic
def target_has_vector_popcount(typingctx):  # type: ignore[no-untyped-def]
    """Whether the code being generated has a vector popcount (AVX-512 VPOPCNTDQ), as a constant
    the compiler folds: kernels pick their loop by it at compile time."""
    sig = types.boolean()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return ir.Constant(ir.IntType(1), int(target_has(context, "avx512vpopcntdq")))

    return sig, codegen


def _half_bits_to_float(bits: int) -> np.float32:
    """IEEE half bits (uint16) -> float32 by arithmetic: subnormals, infinities and NaN included."""
    h = np.int32(bits)
    sign = -1.0 if (h >> 15) & 1 else 1.0
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:
        value = math.ldexp(float(mantissa), -24)
    elif exponent == 31:
        value = math.inf if mantissa == 0 else math.nan
    else:
        value = math.ldexp(float(mantissa + 1024), int(exponent) - 25)
    return np.float32(sign * value)
