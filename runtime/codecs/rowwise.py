"""int8 / int4 / int2 row-wise uniform quantization in FBGEMM's fused row layout.

Each row: packed codes (8 // bits codes a byte, low bits first), then fp16 scale and fp16 bias.
Bytes a row: ceil(d * bits / 8) + 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from runtime.codecs.base import Codec, Prepared, TrainedState, bind_direct_bags, bind_direct_gather, query_vectors
from runtime.codecs.fp16 import as_fp16, refuse_beyond_fp16, refuse_lost_in_fp16, refuse_unstorable_rows
from runtime.codecs.quantized_scan import quantized_search
from runtime.kernels import rowwise
from runtime.validation import unusable_value


def _decoding_error(rows: np.ndarray, bias: np.ndarray, scale: np.ndarray, levels: int) -> np.ndarray:
    """The norm of what rows (n, d) float32 lose encoded as `quantize_numpy` encodes them, with
    this bias and scale (n,) float32: codes against them, a zero scale giving codes 0 -> (n,)."""
    safe = np.where(scale > 0, scale, np.float32(1.0))[:, None]
    codes = np.clip(np.rint((rows - bias[:, None]) / safe), 0, levels)
    codes[scale == 0] = 0
    return np.linalg.norm(rows - (bias[:, None] + codes * scale[:, None]), axis=1)


class RowwiseCodec(Codec):
    bits: ClassVar[int]
    required_arrays = ("rows",)
    row_arrays = ("rows",)

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        return rows * (rowwise.packed_bytes(dim, cls.bits) + 4)

    @classmethod
    def refuse_unstorable(cls, x: np.ndarray) -> None:
        refuse_unstorable_rows(x, cls._refuse_rows)

    @classmethod
    def _refuse_rows(cls, x: np.ndarray) -> None:
        # each row's scale and bias are fp16: a row of values too small for them (1e-6) decoded as
        # noise. Such a row is decoded here and refused where the fp16 scale and bias add more than
        # a tenth of its norm to the error exact ones make (int8 at TorchRec's ±5e-5 init adds
        # 2.5 %, and is kept)
        refuse_beyond_fp16(x, cls.name)
        levels = (1 << cls.bits) - 1
        lo, hi = x.min(axis=1), x.max(axis=1)
        scale = (hi - lo) / levels
        exact = _decoding_error(x, lo, scale, levels)
        stored = _decoding_error(x, as_fp16(lo), as_fp16(scale), levels)
        refuse_lost_in_fp16(stored - exact, np.linalg.norm(x, axis=1), cls.name, "norm")

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        cls.refuse_unstorable(x)
        return {"rows": rowwise.quantize_numpy(x, cls.bits)}

    def check_arrays(self) -> str | None:
        rows = self.arrays["rows"]
        shape = (self.rows, rowwise.packed_bytes(self.dim, self.bits) + 4)
        if rows.dtype != np.uint8 or rows.shape != shape:
            return f"rows must be uint8 {shape}, got {rows.dtype} {rows.shape}"
        return None

    def check_values(self) -> str | None:
        # each row's fp16 scale and bias, its last 4 bytes
        where = unusable_value(np.ascontiguousarray(self.arrays["rows"][:, -4:]).view(np.float16))
        return None if where is None else f"a row's scale or bias (row, [scale, bias]) is {where}"

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return self.decode_by_direct_gather(ids)

    def direct_gather(self) -> Callable[[np.ndarray, np.ndarray], int] | None:
        return bind_direct_gather(
            rowwise.gather_checked_into, self.dim, self.arrays["rows"], self.dim, self.bits, self.parallel_min_ids
        )

    def direct_bags(self) -> Callable[[np.ndarray, np.ndarray, bool, np.ndarray], int] | None:
        return bind_direct_bags(
            rowwise.bags_checked_into, self.dim, self.arrays["rows"], self.dim, self.bits, self.parallel_min_ids
        )

    def decode_keys(self, slots: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray | None, int]:
        return rowwise.gather_key_rows(self.arrays["rows"], slots, keys, self.dim, self.bits, self.parallel_min_ids)

    def decode_merged(self, rows: np.ndarray, slots: np.ndarray, delta: Codec | None) -> np.ndarray:
        if not isinstance(delta, RowwiseCodec) or delta.bits != self.bits:
            return super().decode_merged(rows, slots, delta)
        return rowwise.gather_merged_rows(
            self.arrays["rows"], delta.arrays["rows"], rows, slots, self.dim, self.bits, self.parallel_min_ids
        )

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        return rowwise.gather_range(self.arrays["rows"], start, stop, self.dim, self.bits)

    def decode_bags(self, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
        return rowwise.bags(self.arrays["rows"], ids, offsets, self.dim, self.bits, mean, self.parallel_min_ids)

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        return quantized_search(self, self.arrays["rows"], self.bits, query_vectors(prepared), k, prepared.metric)


class Int8Codec(RowwiseCodec):
    name = "int8"
    bits = 8


class Int4Codec(RowwiseCodec):
    name = "int4"
    bits = 4


class Int2Codec(RowwiseCodec):
    name = "int2"
    bits = 2
