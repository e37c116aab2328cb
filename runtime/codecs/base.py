"""The codec protocol: every codec fits, encodes, decodes, searches, scores and counts its bytes.

Callers (`runtime.table.Table`) validate ids, queries, k and metric before calling a codec, so
codecs assume clean input: ids int64 in range, queries float32 C-contiguous `(q, dim)`, 1 <= k <= rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numba
import numpy as np

from runtime.errors import InvalidRequest
from runtime.kernels import dense
from runtime.kernels.rowwise import DEFAULT_PARALLEL_MIN_IDS, PARALLEL_MIN_IDS
from runtime.kernels.topk import BlockTopK

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called while fitting, for a progress bar."""

DENSE_BLOCK_ROWS = 16384


def scan_chunks(rows: int, per_thread: int = 4) -> int:
    """How many row chunks a fused scan kernel splits the table into (a task is query × chunk).
    Several a thread balance load; each chunk also fills its own heap, k·ln(rows/k) pushes."""
    threads = numba.get_num_threads()
    return int(max(1, min(per_thread * threads, -(-rows // 32768))))


def keys_to_scores(keys: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Turn dense-scan keys back into scores. For ip the key is the score; for l2 the key is
    2<q, x> - |x|^2, so the squared distance is |q|^2 - key (clamped at 0 against rounding)."""
    if metric == "ip":
        return keys
    qn = np.einsum("qd,qd->q", queries, queries)[:, None]
    return np.maximum(qn - keys, 0).astype(np.float32)


class Codec(ABC):
    """One compressed representation of an `(rows, dim)` float32 table."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ("ip", "l2")
    required_arrays: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Any]] = {}
    """Keyword options of `fit` and their defaults; they are the codec's persisted params."""
    parallel_min_ids: int = DEFAULT_PARALLEL_MIN_IDS
    """Lookups of fewer ids gather on the calling thread (set per table by `load_table`)."""

    def __init__(self, rows: int, dim: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.rows = rows
        self.dim = dim
        self.params = dict(params)
        self.arrays = dict(arrays)
        self.derived: dict[str, np.ndarray] = {}
        problem = self.check_arrays()
        if problem:
            raise InvalidRequest(f"codec {self.name!r}: {problem}")
        self._prepare()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        """Merge options over the defaults, refusing unknown names; codecs add value checks."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            allowed = ", ".join(sorted(cls.options)) or "none"
            raise InvalidRequest(f"codec {cls.name!r} has no option {unknown[0]!r} (options: {allowed})")
        params = dict(cls.options)
        params.update({k: v for k, v in options.items() if v is not None})
        return params

    @classmethod
    def fit(cls, x: np.ndarray, *, seed: int = 0, progress: Progress | None = None, **options: Any) -> Codec:
        """Fit on x (n, d) float32 (already validated) and encode it."""
        params = cls.check_options(x.shape[1], options)
        arrays = cls._encode(x, params, np.random.default_rng(seed), progress)
        return cls(x.shape[0], x.shape[1], params, arrays)

    @classmethod
    @abstractmethod
    def _encode(
        cls, x: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        """x (n, d) float32 -> the arrays that are persisted."""

    def _prepare(self) -> None:
        """Build derived state (held in memory, not persisted) after load or fit."""

    def check_arrays(self) -> str | None:
        """A message when the loaded arrays do not fit rows/dim/params, else None."""
        return None

    # ---- size -----------------------------------------------------------------------------
    def held_arrays(self) -> dict[str, np.ndarray]:
        """The arrays requests read: persisted and derived, less any a derived layout replaces."""
        return {**self.arrays, **self.derived}

    @property
    def nbytes(self) -> int:
        """Bytes of every array this codec holds in memory."""
        return int(sum(a.nbytes for a in self.held_arrays().values()))

    # ---- lookup ---------------------------------------------------------------------------
    @abstractmethod
    def decode(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, dim) float32 reconstructions."""

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 reconstructed, (stop - start, dim) float32."""
        return self.decode(np.arange(start, stop, dtype=np.int64))

    def decode_bags(self, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
        """EmbeddingBag pooling: ids (m,) int64, offsets (B,) int64 -> (B, dim) float32."""
        return dense.pool(self.decode(ids), offsets, mean)

    # ---- search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float32 -> ids (q, k) int64, scores (q, k) float32, best first."""
        return self._dense_search(queries, k, metric)

    def search_by_id(self, query_ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """query_ids (q,) int64 -> ids (q, k) int64, scores (q, k) float32, best first."""
        return self.search(self.decode(query_ids), k, metric)

    def score(self, candidates: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
        """candidates (q, c) int64, queries (q, dim) float32 -> (q, c) float32."""
        nq, nc = candidates.shape
        rows = self.decode(candidates.reshape(-1)).reshape(nq, nc, self.dim)
        if metric == "ip":
            return np.einsum("qcd,qd->qc", rows, queries).astype(np.float32)
        diff = rows - queries[:, None, :]
        return np.einsum("qcd,qcd->qc", diff, diff).astype(np.float32)

    def score_by_id(self, candidates: np.ndarray, query_ids: np.ndarray, metric: str) -> np.ndarray:
        """candidates (q, c) int64, query_ids (q,) int64 -> (q, c) float32."""
        return self.score(candidates, self.decode(query_ids), metric)

    def _dense_search(self, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        # Faiss IndexFlat's scheme: decode a block, one GEMM for all queries, stream into heaps.
        top = BlockTopK(queries.shape[0], k)
        for start in range(0, self.rows, DENSE_BLOCK_ROWS):
            stop = min(self.rows, start + DENSE_BLOCK_ROWS)
            block = self.decode_range(start, stop)
            keys = queries @ block.T
            if metric == "l2":
                keys = 2 * keys - np.einsum("bd,bd->b", block, block)[None, :]
            top.push(keys.astype(np.float32, copy=False), start)
        keys, ids = top.result()
        return ids, keys_to_scores(keys, queries, metric)

    def warmup(self) -> None:
        """Run every kernel this codec uses once on tiny input, so no request pays JIT compile."""
        ids = np.array([0, self.rows - 1], dtype=np.int64)
        q = self.decode(ids)
        # large batches take the parallel kernels, small ones the serial twins: compile both
        self.decode(np.arange(PARALLEL_MIN_IDS, dtype=np.int64) % self.rows)
        self.decode_bags(ids, np.array([0, 1], dtype=np.int64), True)
        for metric in self.metrics:
            self.search(q, 1, metric)
            self.search_by_id(ids, 1, metric)
            self.score(ids.reshape(2, 1), q, metric)
            self.score_by_id(ids.reshape(2, 1), ids, metric)
