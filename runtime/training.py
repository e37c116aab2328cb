"""k-means (k-means++ seeding, Lloyd iterations) and OPQ rotation learning for product quantization."""

from __future__ import annotations

import numpy as np

from runtime.kernels.scan import nearest_centroid


def kmeans_plus_plus(points: np.ndarray, n_centroids: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, s) float32 -> (n_centroids, s) float32 seeds, each drawn with probability
    proportional to its squared distance from the seeds so far. Fewer points than centroids:
    every point once, then repeats (a repeated centroid is never chosen by assignment)."""
    n = points.shape[0]
    if n <= n_centroids:
        extra = rng.choice(n, n_centroids - n, replace=True)
        return np.ascontiguousarray(np.concatenate([points, points[extra]]), dtype=np.float32)
    seeds = np.empty((n_centroids, points.shape[1]), dtype=np.float32)
    seeds[0] = points[rng.integers(n)]
    nearest = ((points - seeds[0]) ** 2).sum(axis=1, dtype=np.float64)
    for c in range(1, n_centroids):
        total = nearest.sum()
        pick = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=nearest / total))
        seeds[c] = points[pick]
        np.minimum(nearest, ((points - seeds[c]) ** 2).sum(axis=1, dtype=np.float64), out=nearest)
    return seeds


def lloyd(points: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Refine centroids (K, s) float32 on points (n, s) float32. An emptied cluster is re-seeded
    with the point currently worst served (largest squared distance), as no cluster may idle."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32).copy()
    n_centroids, dim = centroids.shape
    for _ in range(iterations):
        assign, dist = nearest_centroid(points, centroids)
        counts = np.bincount(assign, minlength=n_centroids)
        sums = np.zeros((n_centroids, dim), dtype=np.float64)
        np.add.at(sums, assign, points)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if empty.size and points.shape[0] > n_centroids:
            worst = np.argsort(-dist, kind="stable")[: empty.size]
            centroids[empty] = points[worst]
    return centroids


def kmeans(points: np.ndarray, n_centroids: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, s) float32 -> centroids (n_centroids, s) float32."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    return lloyd(points, kmeans_plus_plus(points, n_centroids, rng), iterations)


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal R (d, d) float32 minimising |source @ R - target|_F (both (n, d))."""
    u, _, vt = np.linalg.svd(source.astype(np.float64).T @ target.astype(np.float64))
    return (u @ vt).astype(np.float32)
