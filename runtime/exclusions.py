"""Searches that leave ids out: the best k of each query with its own ids dropped, from a scan
asked for a few more candidates (`top_leaving_out`). The table uses it over ids or keys; a tier
over its local rows, between the cheap codes' scan and the rescoring, so that a table with a rerank
codec rescores the same k × oversample candidates it would if the ids were not in it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def top_leaving_out(
    top: Callable[[int], tuple[np.ndarray, np.ndarray]], k: int, rows: int, excluded: list[np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The best k ids (q, k') int64 and scores (q, k') float32 of each query with its excluded ids
    left out; top(m) answers each query's best m of `rows` candidates (q, min(m, rows)), best first.

    Leaving e ids out takes k + e candidates to be sure of k. The first try takes at most 2 k:
    ids left out are mostly far from a query's top (items seen, among many), and a heap of
    k + 1,000 costs a scan a third more than one of k. Only when a query keeps fewer than k does
    the search run again, with all k + e."""
    if excluded is None:
        ids, scores = top(k)
        return np.ascontiguousarray(ids[:, :k]), np.ascontiguousarray(scores[:, :k])
    most = max(group.size for group in excluded)
    every = min(rows, k + most)
    first = min(every, k + min(most, k))
    ids, scores = drop_excluded(*top(first), excluded, k)
    if ids.shape[1] < k and first < every:
        ids, scores = drop_excluded(*top(every), excluded, k)
    return ids, scores


def not_in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values (c,) int64 -> (c,) bool, True where a value is not in sorted_set (e,) int64 (sorted,
    distinct). A binary search a value: np.isin may pick a lookup table spanning the values' range,
    a megabyte a call for ids of a million-row table (0.5 ms of a 10 ms search)."""
    if sorted_set.size == 0:
        return np.ones(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[at] != values


def drop_excluded(
    ids: np.ndarray, scores: np.ndarray, excluded: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's excluded ids left out: ids (q, c) int64, scores (q, c) float32, best first, and
    one sorted array a row -> (q, k') in the same order, k' = min(k, the fewest ids a row keeps)."""
    keep = np.stack([not_in_sorted(row, out) for row, out in zip(ids, excluded, strict=True)])
    width = min(k, int(keep.sum(axis=1).min()))
    # a stable sort of "dropped" brings each row's kept columns to the front, in their order
    columns = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(ids, columns, axis=1), np.take_along_axis(scores, columns, axis=1)
