"""fp16: half precision (d × 2 bytes a row), gathered and cast to float32."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.codecs.base import Codec, Prepared, TrainedState, bind_direct_bags, bind_direct_gather, query_vectors
from runtime.codecs.quantized_scan import quantized_search
from runtime.errors import RowRefused
from runtime.kernels import dense
from runtime.validation import FP16_MAX


def refuse_beyond_fp16(x: np.ndarray, codec: str) -> None:
    """Values past fp16's range would become inf; name the first row `(n, ...)` that has one."""
    too_big = np.abs(x).max(axis=1) > FP16_MAX
    if too_big.any():
        row = int(np.flatnonzero(too_big)[0])
        raise RowRefused(row, f"codec {codec!r} stores fp16: row {{row}} has a value beyond ±{FP16_MAX:g}")


FP16_DRIFT_LIMIT = 0.1
"""What fp16 rounding may move a row by, as a share of the row's size, before the row is refused."""


def refuse_lost_in_fp16(drift: np.ndarray, size: np.ndarray, codec: str, what: str) -> None:
    """Rows whose fp16 rounding moves them by more than FP16_DRIFT_LIMIT of their size (drift and
    size (n,) float): values that small (below fp16's normal range, 6.1e-05) come back as noise, so
    the first such row is named instead of stored. A row of zeros is kept."""
    lost = drift > FP16_DRIFT_LIMIT * size
    if lost.any():
        at = int(np.flatnonzero(lost)[0])
        raise RowRefused(
            at,
            f"codec {codec!r} stores fp16: row {{row}}'s {what} ({size[at]:.3g}) is too small for it (rounding "
            f"moves it by up to {drift[at] / size[at]:.0%}); scale the values up, or use a codec that stores "
            "no fp16 (fp32, pq, rq, shared)",
        )


FP16_ABSOLUTE_STEP = 2.0**-25
"""Half of fp16's smallest step (its subnormals'): the most rounding moves a value of any size below 2**-14."""


def fp16_suspects(x: np.ndarray) -> np.ndarray:
    """Rows (indices into x (n, d) float32) an fp16 codec may refuse: a value past fp16's range,
    or every value so small that fp16's absolute step could be a tenth of the row's norm for some
    codec (int8's 255 levels times the step, over the norm's sqrt(d)); at twice that bound. Any
    other row is stored within far less, so only these are looked at (one pass over x)."""
    if x.shape[0] == 0:
        return np.zeros(0, np.int64)
    largest = np.abs(x).max(axis=1)
    bound = 2 * FP16_ABSOLUTE_STEP / FP16_DRIFT_LIMIT * max(256 * math.sqrt(x.shape[1]), x.shape[1])
    return np.flatnonzero((largest > FP16_MAX) | ((largest > 0) & (largest < bound)))


def refuse_unstorable_rows(x: np.ndarray, refuse: Callable[[np.ndarray], None]) -> None:
    """`refuse` (raising RowRefused) run on the `fp16_suspects` of x (n, d) only, naming a row by
    its place in x."""
    suspects = fp16_suspects(x)
    if suspects.size:
        try:
            refuse(x[suspects])
        except RowRefused as exc:
            raise exc.moved(int(suspects[exc.row])) from None


def as_fp16(values: np.ndarray) -> np.ndarray:
    """float32 values (any shape) as they come back from fp16."""
    return values.astype(np.float16).astype(np.float32)


def rounding_drift(values: np.ndarray) -> np.ndarray:
    """What rounding float32 values (n,) to fp16 moves each by."""
    return np.abs(as_fp16(values) - values)


class Fp16Codec(Codec):
    name = "fp16"
    required_arrays = ("values",)
    row_arrays = ("values",)

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        return rows * dim * 2

    @classmethod
    def refuse_unstorable(cls, x: np.ndarray) -> None:
        refuse_unstorable_rows(x, cls._refuse_rows)

    @classmethod
    def _refuse_rows(cls, x: np.ndarray) -> None:
        refuse_beyond_fp16(x, cls.name)
        drift = np.linalg.norm(as_fp16(x) - x, axis=1)
        refuse_lost_in_fp16(drift, np.linalg.norm(x, axis=1), cls.name, "norm")

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        cls.refuse_unstorable(x)
        return {"values": x.astype(np.float16)}

    def check_arrays(self) -> str | None:
        values = self.arrays["values"]
        if values.dtype != np.float16 or values.shape != (self.rows, self.dim):
            return f"values must be float16 {(self.rows, self.dim)}, got {values.dtype} {values.shape}"
        return None

    def _prepare(self) -> None:
        # the kernels take the raw half bits; a view made once, not on every call (~0.4 µs)
        self._bits16 = self.arrays["values"].view(np.uint16)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return self.decode_by_direct_gather(ids)

    def direct_gather(self) -> Callable[[np.ndarray, np.ndarray], int] | None:
        return bind_direct_gather(dense.fp16_gather_checked_into, self.dim, self._bits16, self.parallel_min_ids)

    def direct_bags(self) -> Callable[[np.ndarray, np.ndarray, bool, np.ndarray], int] | None:
        return bind_direct_bags(dense.fp16_bags_checked_into, self.dim, self._bits16, self.parallel_min_ids)

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        return self.arrays["values"][start:stop].astype(np.float32)

    def decode_bags(self, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
        return dense.fp16_bags(self._bits16, ids, offsets, mean, self.parallel_min_ids)

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        stored = self.arrays["values"].view(np.uint16)
        return quantized_search(self, stored, 16, query_vectors(prepared), k, prepared.metric)
