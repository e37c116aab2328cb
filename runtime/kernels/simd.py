"""A float32 vector value for numba kernels: `lanes` floats held as one LLVM vector.

numba has no vector type of its own, so a kernel that sums many rows into one row of
accumulators must keep them in an array, and the compiler then loads and stores that array around
every row it adds (it cannot prove the array and the rows do not overlap). An `F32Vector` is a
value, not memory: a loop carries it in registers, as FBGEMM's generated bag kernels carry their
accumulators. The backend splits a long vector into the CPU's own registers (eight floats each
with AVX2, sixteen with AVX-512), so one kernel source serves both.

The intrinsics read and write arrays through their data pointers without bounds checks: callers
keep every offset + lanes within the row they pass.
"""

from __future__ import annotations

from typing import Any

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

import runtime.kernels.cpu  # noqa: F401  (sets the features numba compiles for, read below)

REGISTER_LANES = 16 if "+avx512f" in (numba.config.CPU_FEATURES or "").split(",") else 8  # type: ignore[attr-defined]
"""float32 lanes in one vector register of the code numba generates: 16 where it compiles for
AVX-512 (`runtime.kernels.cpu` turns that on where the CPU has it), else 8. Kernels size their
blocks of accumulators by it; their results do not depend on it."""


class F32Vector(types.Type):
    """`lanes` float32 values in one SSA value (`<lanes x float>`)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"F32Vector({lanes})")


@register_model(F32Vector)
class _F32VectorModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: F32Vector) -> None:
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.lanes))


def _float_vector(lanes: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), lanes)


def _splat(builder: ir.IRBuilder, value: ir.Value, lanes: int) -> ir.Value:
    """A float repeated in every lane."""
    vector = _float_vector(lanes)
    one = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        one, ir.Constant(vector, None), ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    )


def _is_contiguous_1d(array: types.Type, dtype: types.Type) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C" and array.dtype == dtype


def _element_pointer(context: Any, builder: ir.IRBuilder, array_type: types.Array, array: Any, offset: Any) -> Any:
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [offset])


def _load_bytes(context: Any, builder: ir.IRBuilder, row_type: types.Array, row: Any, offset: Any, lanes: int) -> Any:
    """row[offset : offset + lanes] as one `<lanes x i8>` load (unaligned)."""
    pointer = _element_pointer(context, builder, row_type, row, offset)
    return builder.load(builder.bitcast(pointer, ir.VectorType(ir.IntType(8), lanes).as_pointer()), align=1)


@intrinsic
def zeros(typingctx, lanes):  # type: ignore[no-untyped-def]
    """An F32Vector(lanes) of zeros; lanes must be a compile-time integer."""
    if not isinstance(lanes, types.IntegerLiteral):
        return None
    count = lanes.literal_value
    sig = F32Vector(count)(lanes)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        return ir.Constant(_float_vector(count), None)

    return sig, codegen


@intrinsic
def widen_bytes(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """row[offset : offset + like.lanes] (1-D C uint8) as floats: the values of int8 codes."""
    if not (isinstance(like, F32Vector) and _is_contiguous_1d(row, types.uint8)):
        return None
    lanes = like.lanes
    sig = like(like, row, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        codes = _load_bytes(context, builder, signature.args[1], args[1], args[2], lanes)
        return builder.uitofp(codes, _float_vector(lanes))

    return sig, codegen


def _widen_nibbles(like: Any, row: Any, high: bool) -> Any:
    """Typing and code of `low_nibbles` / `high_nibbles`."""
    if not (isinstance(like, F32Vector) and _is_contiguous_1d(row, types.uint8)):
        return None
    lanes = like.lanes
    sig = like(like, row, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        codes = _load_bytes(context, builder, signature.args[1], args[1], args[2], lanes)
        byte_vector = ir.VectorType(ir.IntType(8), lanes)
        if high:
            nibbles = builder.lshr(codes, ir.Constant(byte_vector, [4] * lanes))
        else:
            nibbles = builder.and_(codes, ir.Constant(byte_vector, [15] * lanes))
        return builder.uitofp(nibbles, _float_vector(lanes))

    return sig, codegen


@intrinsic
def low_nibbles(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """The low nibbles of row[offset : offset + like.lanes] (1-D C uint8) as floats: the even
    columns of int4 codes. With `high_nibbles` of the same bytes the compiler loads them once."""
    return _widen_nibbles(like, row, high=False)


@intrinsic
def high_nibbles(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """The high nibbles of row[offset : offset + like.lanes]: the odd columns of int4 codes."""
    return _widen_nibbles(like, row, high=True)


@intrinsic
def fmadd(typingctx, values, scale, acc):  # type: ignore[no-untyped-def]
    """acc + values * scale, one fused multiply-add a lane where the CPU has FMA."""
    if not (isinstance(values, F32Vector) and acc == values and isinstance(scale, types.Float)):
        return None
    lanes = values.lanes
    sig = values(values, types.float32, values)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        floats = _float_vector(lanes)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(floats, [floats, floats, floats]), f"llvm.fmuladd.v{lanes}f32"
        )
        return builder.call(fn, [args[0], _splat(builder, args[1], lanes), args[2]])

    return sig, codegen


@intrinsic
def store_affine(typingctx, out, offset, values, add, scale):  # type: ignore[no-untyped-def]
    """out[offset : offset + lanes] = (values + add) * scale, for out a 1-D C float32 array."""
    if not (isinstance(values, F32Vector) and _is_contiguous_1d(out, types.float32)):
        return None
    lanes = values.lanes
    sig = types.void(out, types.int64, values, types.float32, types.float32)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        result = builder.fmul(builder.fadd(args[2], _splat(builder, args[3], lanes)), _splat(builder, args[4], lanes))
        builder.store(result, builder.bitcast(pointer, _float_vector(lanes).as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_interleaved_affine(typingctx, out, offset, even, odd, add, scale):  # type: ignore[no-untyped-def]
    """out[offset + 2i] = (even[i] + add) * scale and out[offset + 2i + 1] = (odd[i] + add) * scale,
    for i < lanes: the even and odd columns of int4 codes back in column order."""
    if not (isinstance(even, F32Vector) and odd == even and _is_contiguous_1d(out, types.float32)):
        return None
    lanes = even.lanes
    sig = types.void(out, types.int64, even, even, types.float32, types.float32)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        order = [lane for i in range(lanes) for lane in (i, lanes + i)]
        both = builder.shuffle_vector(args[2], args[3], ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes), order))
        result = builder.fmul(
            builder.fadd(both, _splat(builder, args[4], 2 * lanes)), _splat(builder, args[5], 2 * lanes)
        )
        builder.store(result, builder.bitcast(pointer, _float_vector(2 * lanes).as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen
