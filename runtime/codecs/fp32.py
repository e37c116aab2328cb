"""fp32: the uncompressed reference table (d × 4 bytes a row)."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.codecs.base import Codec, Prepared, TrainedState, query_vectors
from runtime.codecs.quantized_scan import quantized_search


class Fp32Codec(Codec):
    name = "fp32"
    required_arrays = ("values",)
    row_arrays = ("values",)

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        return rows * dim * 4

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"values": np.ascontiguousarray(x, dtype=np.float32)}

    def check_arrays(self) -> str | None:
        values = self.arrays["values"]
        if values.dtype != np.float32 or values.shape != (self.rows, self.dim):
            return f"values must be float32 {(self.rows, self.dim)}, got {values.dtype} {values.shape}"
        return None

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.arrays["values"][ids], dtype=np.float32)

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.arrays["values"][start:stop])

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        # the row scan, not a matrix product a block: BLAS sums a row's dot product in an order
        # that depends on the number of queries and on the row's place in the block, so two equal
        # rows scored apart in the last bits and a tie went to whichever BLAS favoured, not to the
        # lower id; the row scan sums every row of a call alike
        bits = self.arrays["values"].view(np.uint32)
        return quantized_search(self, bits, 32, query_vectors(prepared), k, prepared.metric)
