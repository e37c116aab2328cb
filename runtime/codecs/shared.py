"""shared: rows share a small set of stored rows (weight sharing, as hashing-trick tables do).

train learns C k-means centroids (C, d) float32 of the rows; encode stores each row as the index
of its nearest centroid, in the narrowest unsigned type that holds C (uint8 up to 256, uint16 up
to 65536, else int32), so a row costs 1, 2 or 4 bytes. decode gathers the centroid. A query is
prepared as its C centroid scores once; a scan or score then gathers them by each row's index.
Meant for the coldest rows of a tiered table, where one shared vector a cluster is enough.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from runtime import training
from runtime.codecs.base import Codec, Option, Prepared, Progress, TrainedState, keys_to_scores, query_vectors
from runtime.errors import InvalidRequest
from runtime.kernels.topk import BlockTopK

SCAN_BLOCK_ROWS = 65536
ASSIGN_BLOCK_ROWS = 8192


def index_dtype(centroids: int) -> np.dtype[Any]:
    """The narrowest dtype holding indexes 0..centroids-1."""
    if centroids <= 1 << 8:
        return np.dtype(np.uint8)
    if centroids <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """x (n, d) float32, centroids (C, d) float32 -> (n,) int64 index of the nearest centroid
    (lowest index among ties), by blocks of |c|^2 - 2 <x, c> (one GEMM a block)."""
    norms = np.einsum("cd,cd->c", centroids, centroids)
    out = np.empty(x.shape[0], np.int64)
    for start in range(0, x.shape[0], ASSIGN_BLOCK_ROWS):
        block = x[start : start + ASSIGN_BLOCK_ROWS]
        out[start : start + block.shape[0]] = np.argmin(norms[None, :] - 2 * (block @ centroids.T), axis=1)
    return out


class SharedCodec(Codec):
    name = "shared"
    required_arrays = ("centroids", "index")
    row_arrays = ("index",)
    options: ClassVar[tuple[Option, ...]] = (
        Option("centroids", int, 256, "shared rows C (k-means centroids); a row stores its centroid's index"),
        Option("train_rows", int, 16384, "rows sampled for training"),
        Option("iterations", int, 10, "Lloyd iterations", quick=2),
    )

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        for key, low in (("centroids", 1), ("train_rows", 1), ("iterations", 0)):
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidRequest(f"shared option {key} must be an integer >= {low}, got {value!r}")
            params[key] = int(value)
        if params["centroids"] > np.iinfo(np.int32).max:
            raise InvalidRequest(f"shared centroids must be below 2**31, got {params['centroids']}")
        return params

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        count = int(params["centroids"])
        return count * dim * 4 + rows * index_dtype(count).itemsize

    @classmethod
    def _train(
        cls, sample: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        if params["centroids"] > training.MAX_CENTROIDS:
            # an artifact may hold more (built without k-means); training cannot make them
            raise InvalidRequest(
                f"shared centroids above {training.MAX_CENTROIDS} cannot be trained (k-means' limit), "
                f"got {params['centroids']}"
            )
        sample = training.sample_for_codewords(sample, params["train_rows"], params["centroids"], "shared", rng)
        # fewer rows than centroids: k-means++ repeats rows, so C is always what was asked (and counted)
        centroids = training.kmeans(sample, params["centroids"], params["iterations"], rng)
        if progress is not None:
            progress("train", 1, 1)
        return {"centroids": np.ascontiguousarray(centroids, dtype=np.float32)}

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        centroids = state.arrays["centroids"]
        return {"index": nearest(x, centroids).astype(index_dtype(centroids.shape[0]))}

    def check_arrays(self) -> str | None:
        count = self.params["centroids"]
        centroids, index = self.arrays["centroids"], self.arrays["index"]
        if centroids.dtype != np.float32 or centroids.shape != (count, self.dim):
            return f"centroids must be float32 {(count, self.dim)}, got {centroids.dtype} {centroids.shape}"
        if index.dtype != index_dtype(count) or index.shape != (self.rows,):
            return f"index must be {index_dtype(count)} ({self.rows},), got {index.dtype} {index.shape}"
        if self.rows and int(index.max()) >= count:
            return f"index holds {int(index.max())}, beyond the {count} centroids"
        if self.rows and index.dtype.kind == "i" and int(index.min()) < 0:
            return f"index holds {int(index.min())}, not a centroid"
        return None

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.arrays["centroids"][self.arrays["index"][ids]])

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.arrays["centroids"][self.arrays["index"][start:stop]])

    def prepare(self, metric: str, queries: np.ndarray | None = None, ids: np.ndarray | None = None) -> Prepared:
        vectors = queries if queries is not None else (self.decode(ids) if ids is not None else None)
        if vectors is None:
            raise InvalidRequest("prepare needs queries or ids")
        centroids = self.arrays["centroids"]
        # keys as the dense scan's: <q, c> for ip, 2 <q, c> - |c|^2 for l2 (|q|^2 added back at the end)
        keys = vectors @ centroids.T
        if metric == "l2":
            keys = 2 * keys - np.einsum("cd,cd->c", centroids, centroids)[None, :]
        return Prepared(metric, vectors.shape[0], vectors, np.ascontiguousarray(keys, dtype=np.float32))

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.arrays["index"]
        top = BlockTopK(prepared.count, k)
        for start in range(0, self.rows, SCAN_BLOCK_ROWS):
            top.push(prepared.data[:, index[start : start + SCAN_BLOCK_ROWS]], start)
        keys, ids = top.result()
        return ids, keys_to_scores(keys, query_vectors(prepared), prepared.metric)

    def score(self, prepared: Prepared, candidates: np.ndarray) -> np.ndarray:
        centroid_of = self.arrays["index"][candidates].astype(np.int64)
        keys = np.take_along_axis(prepared.data, centroid_of, axis=1)
        return keys_to_scores(keys, query_vectors(prepared), prepared.metric)
