"""Searches that leave ids out: the best k of each query with its own ids dropped, from a scan
asked for a few more candidates (`top_leaving_out`). A tier applies it to its local rows (a delta
segment to its slots) between the cheap codes' scan and the rescoring, so every part of a table
answers exactly as it would if the rows were not in it; the table merges the parts' answers.

Queries leaving different ids out keep different numbers of candidates; answers stay one array
(q, w) wide enough for the query keeping the most (`Candidates`), so one query's exclusions never
narrow another's candidates or rescoring pool."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Each query's best candidates, best first: ids (q, w) int64 and scores (q, w) float32, of
    which the first kept[q] (kept (q,) int64) are real. Past them a row holds candidates that were
    left out (valid ids of the same part, so they can be scored and mapped like the rest) and
    means nothing: `padding` marks them for `tiers.top_by_score` to rank last."""

    ids: np.ndarray
    scores: np.ndarray
    kept: np.ndarray

    @classmethod
    def full(cls, ids: np.ndarray, scores: np.ndarray) -> Candidates:
        """Every candidate real."""
        return cls(ids, scores, np.full(ids.shape[0], ids.shape[1], np.int64))

    def padding(self) -> np.ndarray:
        """(q, w) bool, True past each row's kept candidates."""
        return np.arange(self.ids.shape[1]) >= self.kept[:, None]

    def first(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first min(k, fewest kept) columns, which every query holds: ids (q, k'), scores (q, k')."""
        width = min(k, int(self.kept.min())) if self.kept.size else min(k, self.ids.shape[1])
        return np.ascontiguousarray(self.ids[:, :width]), np.ascontiguousarray(self.scores[:, :width])


def top_leaving_out(
    top: Callable[[int], tuple[np.ndarray, np.ndarray]], k: int, rows: int, excluded: list[np.ndarray] | None
) -> Candidates:
    """Each query's best k ids and scores with its excluded ids (one sorted int64 array a query)
    left out; top(m) answers each query's best m of `rows` candidates (q, min(m, rows)), best
    first. A query keeps min(k, the rows it does not leave out), the width is the most any keeps.

    Leaving e ids out takes k + e candidates to be sure of k. The first try takes at most 2 k:
    ids left out are mostly far from a query's top (items seen, among many), and a heap of
    k + 1,000 costs a scan a third more than one of k. Only when a query keeps fewer than k does
    the search run again, with all k + e."""
    if excluded is None:
        ids, scores = top(k)
        return Candidates.full(ids[:, :k], scores[:, :k])
    most = max(group.size for group in excluded)
    every = min(rows, k + most)
    first = min(every, k + min(most, k))
    found = drop_excluded(*top(first), excluded, k)
    if found.kept.size and int(found.kept.min()) < k and first < every:
        found = drop_excluded(*top(every), excluded, k)
    return found


def not_in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values (c,) int64 -> (c,) bool, True where a value is not in sorted_set (e,) int64 (sorted,
    distinct). A binary search a value: np.isin may pick a lookup table spanning the values' range,
    a megabyte a call for ids of a million-row table (0.5 ms of a 10 ms search)."""
    if sorted_set.size == 0:
        return np.ones(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[at] != values


def drop_excluded(ids: np.ndarray, scores: np.ndarray, excluded: list[np.ndarray], k: int) -> Candidates:
    """Each row's excluded ids left out: ids (q, c) int64, scores (q, c) float32, best first, and
    one sorted array a row -> each row's kept candidates first, in their order, at most k."""
    keep = np.ones(ids.shape, dtype=bool)
    for row, out in enumerate(excluded):
        keep[row] = not_in_sorted(ids[row], out)
    kept = np.minimum(keep.sum(axis=1), k).astype(np.int64)
    width = int(kept.max()) if kept.size else 0
    # a stable sort of "dropped" brings each row's kept columns to the front, in their order
    columns = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    return Candidates(np.take_along_axis(ids, columns, axis=1), np.take_along_axis(scores, columns, axis=1), kept)
