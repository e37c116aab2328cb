"""A float32 vector value for numba kernels: `lanes` floats held as one LLVM vector.

numba has no vector type of its own, so a kernel that sums many rows into one row of
accumulators must keep them in an array, and the compiler then loads and stores that array around
every row it adds (it cannot prove the array and the rows do not overlap). An `F32Vector` is a
value, not memory: a loop carries it in registers, as FBGEMM's generated bag kernels carry their
accumulators. The backend splits a long vector into the CPU's own registers (eight floats each
with AVX2, sixteen with AVX-512), so one kernel source serves both.

The intrinsics read and write arrays without bounds checks: callers keep every offset + lanes
within the row they pass. Contiguous rows are read and written a whole vector at a time; rows of
any other layout one element at a time through their stride, so every layout gives the same values.
"""

from __future__ import annotations

import os
from typing import Any

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

import runtime.kernels.cpu  # noqa: F401  (sets the features numba compiles for, read below)

LANES_VARIABLE = "EMBSERVE_VECTOR_LANES"
"""Environment variable that sets REGISTER_LANES (8 or 16) whatever the CPU: a machine without
AVX-512 then runs the block layout the kernels use on one with it (LLVM splits each 16-lane vector
in two), so tests check that layout on any CPU. numba's on-disk cache is not keyed by it: give a
run that sets it a NUMBA_CACHE_DIR of its own."""


def register_lanes(forced: str | None, cpu_features: str) -> int:
    """float32 lanes a vector register holds: `forced` ("8" or "16") when set, else 16 where the
    comma-separated LLVM `cpu_features` include +avx512f, else 8."""
    if forced:
        if forced.strip() not in ("8", "16"):
            raise ValueError(f"{LANES_VARIABLE} must be 8 or 16, got {forced!r}")
        return int(forced)
    return 16 if "+avx512f" in cpu_features.split(",") else 8


REGISTER_LANES = register_lanes(os.environ.get(LANES_VARIABLE), numba.config.CPU_FEATURES or "")  # type: ignore[attr-defined]
"""float32 lanes in one vector register of the code numba generates: 16 where it compiles for
AVX-512 (`runtime.kernels.cpu` turns that on where the CPU has it), else 8, unless LANES_VARIABLE
sets it. Kernels size their blocks of accumulators by it; their results do not depend on it."""


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


def _is_1d(array: types.Type, dtype: types.Type) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and array.dtype == dtype


def _element_pointer(context: Any, builder: ir.IRBuilder, array_type: types.Array, array: Any, index: Any) -> Any:
    """A pointer to array[index] (1-D, any layout)."""
    ary = context.make_array(array_type)(context, builder, array)
    if array_type.layout == "C":
        return builder.gep(ary.data, [index])
    stride = cgutils.unpack_tuple(builder, ary.strides)[0]
    address = builder.add(builder.ptrtoint(ary.data, ir.IntType(64)), builder.mul(index, stride))
    return builder.inttoptr(address, ary.data.type)


def _load_bytes(context: Any, builder: ir.IRBuilder, row_type: types.Array, row: Any, offset: Any, lanes: int) -> Any:
    """row[offset : offset + lanes] as `<lanes x i8>`: one unaligned load where the row is
    contiguous, one byte at a time through its stride where it is not."""
    byte_vector = ir.VectorType(ir.IntType(8), lanes)
    if row_type.layout == "C":
        pointer = _element_pointer(context, builder, row_type, row, offset)
        return builder.load(builder.bitcast(pointer, byte_vector.as_pointer()), align=1)
    value = ir.Constant(byte_vector, None)
    for lane in range(lanes):
        index = builder.add(offset, ir.Constant(offset.type, lane))
        byte = builder.load(_element_pointer(context, builder, row_type, row, index))
        value = builder.insert_element(value, byte, ir.Constant(ir.IntType(32), lane))
    return value


def _store_floats(
    context: Any, builder: ir.IRBuilder, out_type: types.Array, out: Any, offset: Any, value: Any
) -> None:
    """out[offset : offset + lanes] = value (`<lanes x float>`), in one store where out is contiguous."""
    lanes = value.type.count
    if out_type.layout == "C":
        pointer = _element_pointer(context, builder, out_type, out, offset)
        builder.store(value, builder.bitcast(pointer, _float_vector(lanes).as_pointer()), align=4)
        return
    for lane in range(lanes):
        index = builder.add(offset, ir.Constant(offset.type, lane))
        element = builder.extract_element(value, ir.Constant(ir.IntType(32), lane))
        builder.store(element, _element_pointer(context, builder, out_type, out, index))


def _fused(builder: ir.IRBuilder, values: Any, scale: Any, add: Any) -> Any:
    """values * scale + add (vectors), one fused multiply-add a lane where the CPU has FMA."""
    floats = values.type
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(floats, [floats, floats, floats]), f"llvm.fmuladd.v{floats.count}f32"
    )
    return builder.call(fn, [values, scale, add])


def _interleaved(builder: ir.IRBuilder, even: Any, odd: Any) -> Any:
    """even[0], odd[0], even[1], odd[1], ...: twice the lanes."""
    lanes = even.type.count
    order = [lane for i in range(lanes) for lane in (i, lanes + i)]
    return builder.shuffle_vector(even, odd, ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes), order))


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


def _widen(like: Any, row: Any, part: str) -> Any:
    """Typing and code of `widen_bytes` (part "bytes"), `low_nibbles` ("low"), `high_nibbles` ("high")."""
    if not (isinstance(like, F32Vector) and _is_1d(row, types.uint8)):
        return None
    lanes = like.lanes
    sig = like(like, row, types.int64)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        codes = _load_bytes(context, builder, signature.args[1], args[1], args[2], lanes)
        byte_vector = ir.VectorType(ir.IntType(8), lanes)
        if part == "high":
            codes = builder.lshr(codes, ir.Constant(byte_vector, [4] * lanes))
        elif part == "low":
            codes = builder.and_(codes, ir.Constant(byte_vector, [15] * lanes))
        return builder.uitofp(codes, _float_vector(lanes))

    return sig, codegen


@intrinsic
def widen_bytes(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """row[offset : offset + like.lanes] (1-D uint8) as floats: the values of int8 codes."""
    return _widen(like, row, "bytes")


@intrinsic
def low_nibbles(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """The low nibbles of row[offset : offset + like.lanes] (1-D uint8) as floats: the even
    columns of int4 codes. With `high_nibbles` of the same bytes the compiler loads them once."""
    return _widen(like, row, "low")


@intrinsic
def high_nibbles(typingctx, like, row, offset):  # type: ignore[no-untyped-def]
    """The high nibbles of row[offset : offset + like.lanes]: the odd columns of int4 codes."""
    return _widen(like, row, "high")


@intrinsic
def fmadd(typingctx, values, scale, acc):  # type: ignore[no-untyped-def]
    """acc + values * scale."""
    if not (isinstance(values, F32Vector) and acc == values and isinstance(scale, types.Float)):
        return None
    sig = values(values, types.float32, values)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        return _fused(builder, args[0], _splat(builder, args[1], values.lanes), args[2])

    return sig, codegen


def _typed_store(out: Any, vectors: tuple[Any, ...]) -> Any:
    """The signature of a store of F32Vectors of one width into a 1-D float32 array, or None."""
    first = vectors[0]
    if not (isinstance(first, F32Vector) and all(v == first for v in vectors) and _is_1d(out, types.float32)):
        return None
    return types.void(out, types.int64, *vectors, types.float32, types.float32)


def _store(vectors: tuple[Any, ...], out: Any, fused: bool) -> Any:
    """Typing and code of the stores: out[offset:] = one vector, or two interleaved, then either
    `* first + second` (fused) or `(+ first) * second` of the two float arguments."""
    sig = _typed_store(out, vectors)
    if sig is None:
        return None

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        values = args[2] if len(vectors) == 1 else _interleaved(builder, args[2], args[3])
        lanes = values.type.count
        first, second = (_splat(builder, arg, lanes) for arg in args[-2:])
        result = _fused(builder, values, first, second) if fused else builder.fmul(builder.fadd(values, first), second)
        _store_floats(context, builder, signature.args[0], args[0], args[1], result)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_interleaved_fma(typingctx, out, offset, even, odd, scale, add):  # type: ignore[no-untyped-def]
    """out[offset + 2i] = even[i] * scale + add and out[offset + 2i + 1] = odd[i] * scale + add:
    the even and odd columns of int4 codes decoded, back in column order."""
    return _store((even, odd), out, fused=True)


@intrinsic
def store_affine(typingctx, out, offset, values, add, scale):  # type: ignore[no-untyped-def]
    """out[offset : offset + lanes] = (values + add) * scale (1-D float32 out): bags summed."""
    return _store((values,), out, fused=False)


@intrinsic
def store_interleaved_affine(typingctx, out, offset, even, odd, add, scale):  # type: ignore[no-untyped-def]
    """out[offset + 2i] = (even[i] + add) * scale and out[offset + 2i + 1] = (odd[i] + add) * scale."""
    return _store((even, odd), out, fused=False)
