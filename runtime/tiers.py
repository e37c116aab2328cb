"""A tier: a codec (plus an optional richer rerank codec) over a subset of a table's rows, possibly
in a reduced dimension r < d through its own PCA projection.

The projection stores mean (d,) and basis (d, r) float32 with orthonormal columns; a row x is
stored as z = (x - mean) @ basis and decoded as z @ basis.T + mean. Queries are projected for the
scan and each score corrected so scores of every tier are in the table's full-dimension sense:
  ip:  <q, x̂> = <q, mean> + <q @ basis, z>
  l2:  |q - x̂|^2 = |q'|^2 - |q' @ basis|^2 + |q' @ basis - z|^2,  q' = q - mean
Other metrics (Hamming) compare codes in the tier's own space and are not corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import training
from runtime.codecs import Codec, Progress, codec_class
from runtime.errors import InvalidRequest
from runtime.exclusions import Candidates, top_leaving_out
from runtime.kernels.hashmap import KeySet
from runtime.validation import unusable_value


def top_by_score(
    ids: np.ndarray, scores: np.ndarray, k: int, metric: str, padding: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the best k of each row of candidates (q, c), sorted best first, ties by ascending id.
    ip ranks high scores first; every other metric is a distance. padding (q, c) bool: candidates
    that are not real (`exclusions.Candidates`), ranked after every real one."""
    primary = -scores if metric == "ip" else scores
    keys = (ids, primary) if padding is None else (ids, primary, padding)
    order = np.lexsort(keys, axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray
    basis: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, rng: np.random.Generator, sample_rows: int = 65536) -> Projection:
        """PCA of x (n, d) float32 onto its top `dim` principal directions."""
        if not 1 <= dim <= x.shape[1]:
            raise InvalidRequest(f"tier dim must be between 1 and the table's dimension {x.shape[1]}, got {dim}")
        sample = training.random_rows(x, sample_rows, rng)
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        basis = np.zeros((x.shape[1], dim), np.float32)
        basis[:, : min(dim, vt.shape[0])] = vt[:dim].T
        return cls(mean.astype(np.float32), basis)

    def check(self, dim: int) -> str | None:
        if self.mean.dtype != np.float32 or self.mean.shape != (dim,):
            return f"projection mean must be float32 ({dim},), got {self.mean.dtype} {self.mean.shape}"
        if self.basis.dtype != np.float32 or self.basis.ndim != 2 or self.basis.shape[0] != dim:
            return f"projection basis must be float32 ({dim}, r), got {self.basis.dtype} {self.basis.shape}"
        for part, array in (("mean", self.mean), ("basis", self.basis)):
            where = unusable_value(array)
            if where is not None:
                return f"projection {part} holds {where}"
        return None

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.mean.nbytes + self.basis.nbytes)

    def to_tier(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) @ self.basis, dtype=np.float32)

    def from_tier(self, z: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(z @ self.basis.T + self.mean, dtype=np.float32)

    def queries(self, q: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """q (q, d) -> the tier-space queries (q, r) and the per-query score offset (q,)."""
        if metric == "ip":
            return np.ascontiguousarray(q @ self.basis, dtype=np.float32), (q @ self.mean).astype(np.float32)
        shifted = q - self.mean
        projected = np.ascontiguousarray(shifted @ self.basis, dtype=np.float32)
        if metric == "l2":
            residual = np.einsum("qd,qd->q", shifted, shifted) - np.einsum("qr,qr->q", projected, projected)
            return projected, np.maximum(residual, 0).astype(np.float32)
        return projected, np.zeros(q.shape[0], np.float32)


@dataclass(frozen=True)
class Tier:
    """primary (and rerank) codecs over `primary.rows` rows of the tier's dimension."""

    primary: Codec
    rerank: Codec | None = None
    projection: Projection | None = None

    @property
    def rows(self) -> int:
        return self.primary.rows

    @property
    def richest(self) -> Codec:
        return self.rerank if self.rerank is not None else self.primary

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.primary.metrics

    @property
    def nbytes(self) -> int:
        own = self.primary.nbytes + (self.rerank.nbytes if self.rerank is not None else 0)
        return own + (self.projection.nbytes if self.projection is not None else 0)

    @property
    def row_bytes(self) -> float:
        """Bytes a row of the encoded arrays (the cost of one more row in this tier)."""
        total = 0.0
        for codec in (self.primary, self.rerank):
            if codec is not None:
                total += sum(codec.arrays[n].nbytes / max(1, codec.rows) for n in codec.row_arrays)
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "codec": self.primary.name,
            "params": self.primary.params,
            "rerank": None if self.rerank is None else {"codec": self.rerank.name, "params": self.rerank.params},
            "dim": self.primary.dim,
            "nbytes": self.nbytes,
        }

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Rows x (b, d) float32 -> the primary's and the rerank's row arrays, with this tier's
        trained state (raises InvalidRequest for rows a codec cannot hold)."""
        z = self.projection.to_tier(x) if self.projection is not None else x
        primary = type(self.primary).encode(self.primary.state, z)
        rerank = None if self.rerank is None else type(self.rerank).encode(self.rerank.state, z)
        return primary, rerank

    def with_rows(self, primary: dict[str, np.ndarray], rerank: dict[str, np.ndarray] | None) -> Tier:
        """A tier of the same trained state and projection over other encoded rows."""
        second = None if self.rerank is None or rerank is None else self.rerank.with_rows(rerank)
        return Tier(self.primary.with_rows(primary), second, self.projection)

    def row_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        primary = {n: self.primary.arrays[n] for n in self.primary.row_arrays}
        rerank = None if self.rerank is None else {n: self.rerank.arrays[n] for n in self.rerank.row_arrays}
        return primary, rerank

    # ---- reads -------------------------------------------------------------------------------
    def decode(self, local: np.ndarray, metric: str | None = None) -> np.ndarray:
        """local (b,) int64 -> (b, d) float32 by the richest codec, or by the one that scores
        `metric` (`scorer`: a stored row as a Hamming query is its own binary code, not the
        signs of its rerank codec's reconstruction)."""
        out = (self.richest if metric is None else self.scorer(metric)).decode(local)
        return out if self.projection is None else self.projection.from_tier(out)

    def decode_merged(
        self, local: np.ndarray, slots: np.ndarray, delta: Tier | None, metric: str | None = None
    ) -> np.ndarray:
        """Rows of this tier and of `delta` (a tier over its delta's rows, `with_rows`): local (b,)
        int64, slots (b,) int64 -> (b, d) float32, delta's slot where slots[i] >= 0, else this
        tier's local row where local[i] >= 0, else zeros; by the codec `decode` picks."""
        if metric is None:
            codec, delta_codec = self.richest, None if delta is None else delta.richest
        else:
            codec, delta_codec = self.scorer(metric), None if delta is None else delta.scorer(metric)
        out = codec.decode_merged(local, slots, delta_codec)
        if self.projection is None:
            return out
        out = self.projection.from_tier(out)
        out[(local < 0) & (slots < 0)] = 0
        return out

    def _queries(self, q: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.projection is None:
            return q, None
        return self.projection.queries(q, metric)

    def _rescoring(self, metric: str) -> bool:
        return self.rerank is not None and metric in self.rerank.metrics

    def search(
        self,
        q: np.ndarray,
        k: int,
        metric: str,
        oversample: int,
        exclude: KeySet | None = None,
        drop: list[np.ndarray] | None = None,
    ) -> Candidates:
        """q (q, d) -> each query's best k local ids and scores (`Candidates`, k' = min(k, rows
        it keeps)). exclude: rows left out for every query (stale ones); drop: each query's own
        sorted local rows left out, before the rescoring, so it rescores the k × oversample
        candidates it would without them."""
        tq, offset = self._queries(q, metric)
        rescoring = self._rescoring(metric)
        want = k * oversample if rescoring else k
        # with a rerank codec, candidates are ranked by the primary codec's own metric (binary: Hamming)
        rank = self.primary.rank_metric if self.rerank is not None and self.primary.rank_metric else metric
        prepared = self.primary.prepare(rank, queries=tq)
        left = self.rows - (0 if exclude is None else exclude.size)
        found = top_leaving_out(lambda m: self.primary.scan(prepared, m, exclude), want, left, drop)
        ids, scores = found.ids, found.scores
        if self.rerank is not None and rescoring:
            rescored = self.rerank.score(self.rerank.prepare(metric, queries=tq), ids)
            ids, scores = top_by_score(ids, rescored, k, metric, None if drop is None else found.padding())
        ids, scores = ids[:, :k], scores[:, :k]
        return Candidates(ids, scores if offset is None else scores + offset[:, None], np.minimum(found.kept, k))

    def search_by_local_id(
        self,
        local: np.ndarray,
        k: int,
        metric: str,
        oversample: int,
        extra: int = 0,
        drop: list[np.ndarray] | None = None,
    ) -> Candidates:
        """Stored rows of this tier as queries (no projection: one-tier tables); k + extra
        candidates (k × oversample + extra before rescoring), the extra to drop the query itself;
        drop: each query's sorted local rows left out, as in `search`."""
        if self.rerank is not None and self._rescoring(metric):
            k = min(self.rows, k * oversample + extra)
            # the rerank codec holds the query row better than the cheap codes do: searching with
            # that reconstruction is asymmetric (ADC), and finds far better candidates than
            # code-to-code scoring (on MovieLens, PQ M=16 + int8: recall@10 0.99 against 0.91)
            rank = self.primary.rank_metric or metric
            prepared = self.primary.prepare(rank, queries=self.rerank.decode(local))
            found = top_leaving_out(lambda m: self.primary.scan(prepared, m), k, self.rows, drop)
            scores = self.rerank.score(self.rerank.prepare(metric, ids=local), found.ids)
            padding = None if drop is None else found.padding()
            ids, scores = top_by_score(found.ids, scores, found.ids.shape[1], metric, padding)
            return Candidates(ids, scores, found.kept)
        prepared = self.primary.prepare(metric, ids=local)
        return top_leaving_out(lambda m: self.primary.scan(prepared, m), k + extra, self.rows, drop)

    def scorer(self, metric: str) -> Codec:
        """The codec that scores candidates: the richest that has the metric."""
        return self.richest if metric in self.richest.metrics else self.primary

    def score(self, candidates: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
        """candidates (q, c) local int64, q (q, d) -> (q, c) float32."""
        codec = self.scorer(metric)
        tq, offset = self._queries(q, metric)
        scores = codec.score(codec.prepare(metric, queries=tq), candidates)
        return scores if offset is None else scores + offset[:, None]

    def score_by_local_id(self, candidates: np.ndarray, local: np.ndarray, metric: str) -> np.ndarray:
        codec = self.scorer(metric)
        return codec.score(codec.prepare(metric, ids=local), candidates)

    def warmup(self) -> None:
        """Each codec's kernels for its part of the tier's requests (`Codec.warmup`)."""
        if self.rerank is None:
            self.primary.warmup()
            return
        rescored = [metric for metric in self.primary.metrics if self._rescoring(metric)]
        # with a rerank codec, searches rank by the primary's own metric where it has one (binary:
        # Hamming), and by the requested one where the rerank codec cannot rescore it (`search`)
        rank = self.primary.rank_metric
        scanned = [m for m in self.primary.metrics if m == rank or m not in rescored] if rank else None
        self.primary.warmup(reads=False, scanned=scanned, rescored=rescored)
        self.rerank.warmup(scanned=())


PRECISION_ORDER = ("int2", "int4", "int8", "fp16", "fp32")
"""The codecs that store each value at a precision, poorest first: of two of them, the later one
reconstructs every row better. Other pairings (binary reranked by pq, pq by rq) are judged by
their use, not here."""


def _refuse_a_poorer_rerank(primary: str, rerank: str) -> None:
    """A rerank codec is the richer reconstruction lookups and rescoring read: fp32 reranked by
    int2 made every lookup of a table paid for in fp32 come back int2's (relative error 0.45), so
    a rerank of a lower precision than its primary is refused before training."""
    ranked = primary in PRECISION_ORDER and rerank in PRECISION_ORDER
    if ranked and PRECISION_ORDER.index(rerank) < PRECISION_ORDER.index(primary):
        raise InvalidRequest(
            f"rerank codec {rerank!r} holds values at a lower precision than the primary {primary!r}: lookups "
            "and rescoring read the rerank codec, so it must be the richer one"
        )


def train_tier(
    x: np.ndarray,
    codec: str,
    options: dict[str, Any],
    *,
    rerank: str | None = None,
    rerank_options: dict[str, Any] | None = None,
    dim: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Tier:
    """Fit a tier on its rows x (m, d) float32: projection (when dim < d), then codecs."""
    cls = codec_class(codec)
    rerank_cls = codec_class(rerank) if rerank is not None else None
    if rerank is not None:
        _refuse_a_poorer_rerank(codec, rerank)
    projection = None
    if dim is not None and dim != x.shape[1]:
        projection = Projection.fit(x, dim, np.random.default_rng(seed))
        x = projection.to_tier(x)
    primary = cls.fit(x, seed=seed, progress=progress, **options)
    second = rerank_cls.fit(x, seed=seed, progress=progress, **(rerank_options or {})) if rerank_cls else None
    return Tier(primary, second, projection)
