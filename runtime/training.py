"""k-means (k-means++ seeding, Lloyd iterations), PQ codebook training and encoding, and OPQ's
rotation step.

The distance work runs in `runtime.kernels.kmeans` (nogil numba kernels), fanned out over a thread
pool: training over subspaces, encoding over row blocks, with as many workers as numba threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

import numba
import numpy as np

from runtime.errors import InvalidRequest
from runtime.kernels.kmeans import (
    MAX_CENTROIDS,
    centroid_sums,
    codeword_norms,
    kmeans_pp_seeds,
    nearest_codes_into,
    nearest_codeword_into,
)

SEED_POINTS_PER_CENTROID = 32
"""k-means++ seeds from a random subsample of this many points a centroid: the seeds' spread is
what matters, and a full pass over n points for each of K seeds would cost more than Lloyd."""

MAX_POINTS_PER_CENTROID = 256
"""k-means (PQ codebooks, RQ stages) runs on at most this many points a centroid, a random subset of
the rest, as Faiss's Clustering does by default (`max_points_per_centroid`). For PQ: all of the
default 65,536-row sample for 256 codewords, 4,096 rows for 16 (4-bit PQ). On 1M x 128, M=32 4-bit,
2 threads (AMD EPYC), that took train + encode from 1.26 to 0.69 s with recall@10 0.257 -> 0.253
(256 queries, +-0.02); Faiss IndexPQ, which subsamples the same way: 0.89 s, 0.250."""

ENCODE_BLOCK_ROWS = 16384
"""Rows a worker encodes at a time (every subspace), the unit of parallel work and of progress;
inside it the kernel keeps tiles of rows in cache (`kmeans.ENCODE_TILE_ROWS`)."""

Progress = Callable[[str, int, int], None]


def random_rows(points: np.ndarray, most: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, ...) -> at most `most` of its rows, a random subset kept in row order; the points
    themselves, and `rng` untouched, when there are no more than that."""
    if points.shape[0] <= most:
        return points
    return points[np.sort(rng.choice(points.shape[0], most, replace=False))]


def sample_for_codewords(
    points: np.ndarray, train_rows: int, codewords: int, what: str, rng: np.random.Generator
) -> np.ndarray:
    """`random_rows` for a k-means of `codewords` centroids, refusing a train_rows below them
    while the table holds more rows than train_rows (a sample of 1 row for 16 codewords trained a
    PQ table of relative error 1.4; Faiss refuses it too). A table with fewer rows than codewords
    is trained on all of them (every row its own codeword). `what` names the option's codec."""
    if train_rows < codewords and points.shape[0] > train_rows:
        raise InvalidRequest(
            f"{what} option train_rows={train_rows} is below the {codewords} codewords it learns; give at least "
            f"{min(codewords, points.shape[0])}"
        )
    return random_rows(points, train_rows, rng)


def kmeans_plus_plus(points: np.ndarray, n_centroids: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, s) float32 -> (n_centroids, s) float32 seeds, each drawn with probability
    proportional to its squared distance from the seeds so far (over a subsample of
    SEED_POINTS_PER_CENTROID points a centroid). Fewer points than centroids: every point once,
    then repeats (a repeated centroid is never chosen by assignment)."""
    n = points.shape[0]
    if n <= n_centroids:
        extra = rng.choice(n, n_centroids - n, replace=True)
        return np.ascontiguousarray(np.concatenate([points, points[extra]]), dtype=np.float32)
    pool = random_rows(points, SEED_POINTS_PER_CENTROID * n_centroids, rng)
    first = int(rng.integers(pool.shape[0]))
    return kmeans_pp_seeds(np.ascontiguousarray(pool, dtype=np.float32), first, rng.random(n_centroids))


def assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """points (n, s) float32, centroids (K, s) float32 -> nearest (n,) int64 (lowest index among
    ties), squared distance (n,) float32."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    nearest = np.empty(points.shape[0], dtype=np.int64)
    keys = np.empty(points.shape[0], dtype=np.float32)
    neg2_t = np.ascontiguousarray(-2 * centroids.T)
    nearest_codeword_into(points, neg2_t, codeword_norms(centroids), 0, points.shape[0], nearest, keys)
    return nearest, np.maximum(keys + codeword_norms(points), 0)


def lloyd(points: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Refine centroids (K, s) float32 on points (n, s) float32. An emptied cluster is re-seeded
    with the point currently worst served (largest squared distance), as no cluster may idle.
    Stops early once an assignment repeats the previous one (the centroids would not move)."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32).copy()
    n_centroids = centroids.shape[0]
    if n_centroids > MAX_CENTROIDS:
        raise ValueError(f"k-means supports at most {MAX_CENTROIDS} centroids, got {n_centroids}")
    n = points.shape[0]
    nearest = np.empty(n, dtype=np.int64)
    previous = np.full(n, -1, dtype=np.int64)
    keys = np.empty(n, dtype=np.float32)
    point_norms: np.ndarray | None = None
    for _ in range(iterations):
        nearest_codeword_into(
            points, np.ascontiguousarray(-2 * centroids.T), codeword_norms(centroids), 0, n, nearest, keys
        )
        if np.array_equal(nearest, previous):
            break
        previous[:] = nearest
        sums, counts = centroid_sums(points, nearest, n_centroids)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if empty.size and n > n_centroids:
            if point_norms is None:
                point_norms = codeword_norms(points)
            # keys lack |x|^2: add it back to rank the points by their squared distance
            worst = np.argsort(-(keys + point_norms), kind="stable")[: empty.size]
            centroids[empty] = points[worst]
    return centroids


def kmeans(points: np.ndarray, n_centroids: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, s) float32 -> centroids (n_centroids, s) float32."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    return lloyd(points, kmeans_plus_plus(points, n_centroids, rng), iterations)


def _workers() -> int:
    return max(1, numba.get_num_threads())


def train_codebooks(
    sample: np.ndarray,
    subspaces: int,
    n_centroids: int,
    iterations: int,
    rng: np.random.Generator,
    init: np.ndarray | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """sample (n, d) float32 -> codebooks (M, K, d/M) float32, one k-means a subspace, subspaces
    in parallel, on at most MAX_POINTS_PER_CENTROID * K of the sample rows (drawn from `rng` only
    when there are more). Each subspace draws from its own generator spawned from `rng` in order,
    so the result does not depend on the number of workers. init (M, K, d/M): refine these instead
    of seeding."""
    sample = random_rows(sample, MAX_POINTS_PER_CENTROID * n_centroids, rng)
    sub = sample.shape[1] // subspaces
    parts = [np.ascontiguousarray(sample[:, m * sub : (m + 1) * sub], dtype=np.float32) for m in range(subspaces)]
    child_rngs = rng.spawn(subspaces)

    def one(m: int) -> np.ndarray:
        if init is None:
            return kmeans(parts[m], n_centroids, iterations, child_rngs[m])
        return lloyd(parts[m], init[m], iterations)

    books: list[np.ndarray | None] = [None] * subspaces
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        futures = {pool.submit(one, m): m for m in range(subspaces)}
        for done, future in enumerate(as_completed(futures), start=1):
            books[futures[future]] = future.result()
            if progress is not None:
                progress("train", done, subspaces)
    return np.stack([b for b in books if b is not None])


def encode(
    x: np.ndarray, codebooks: np.ndarray, rotation: np.ndarray | None = None, progress: Progress | None = None
) -> np.ndarray:
    """x (n, d) float32 -> codes (n, M) uint8: per row block (rotated first when `rotation`
    (d, d) is given), the nearest codeword of every subspace; row blocks in parallel."""
    n = x.shape[0]
    m, n_centroids, _ = codebooks.shape
    if n_centroids > 256:
        raise ValueError(f"codes are uint8: at most 256 codewords, got {n_centroids}")
    codes = np.empty((n, m), dtype=np.uint8)
    neg2_t = np.ascontiguousarray(-2 * codebooks.transpose(0, 2, 1), dtype=np.float32)
    norms = np.stack([codeword_norms(codebooks[i]) for i in range(m)])

    def one(start: int) -> int:
        stop = min(n, start + ENCODE_BLOCK_ROWS)
        block = x[start:stop] if rotation is None else x[start:stop] @ rotation
        block = np.ascontiguousarray(block, dtype=np.float32)
        nearest_codes_into(block, neg2_t, norms, 0, stop - start, codes[start:stop])
        return stop - start

    done = 0
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for rows in pool.map(one, range(0, n, ENCODE_BLOCK_ROWS)):
            done += rows
            if progress is not None:
                progress("encode", done, n)
    return codes


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal R (d, d) float32 minimising |source @ R - target|_F (both (n, d))."""
    u, _, vt = np.linalg.svd(source.astype(np.float64).T @ target.astype(np.float64))
    return (u @ vt).astype(np.float32)
