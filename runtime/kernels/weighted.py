"""Weighted EmbeddingBag pooling (torch.nn.EmbeddingBag(mode="sum") with per_sample_weights).

Kept apart from the codec bag kernels: it pools rows already decoded by any codec and tier, so
one kernel serves every table shape (delta, tiers, keys) without touching the fused bag paths.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, nogil=True, cache=True)
def pool_weighted(decoded: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """decoded (m, d) float32, weights (m,) float32, offsets (B,) int64 -> (B, d) float32.

    Bag b is sum over t in offsets[b]..offsets[b+1]-1 (the last bag runs to m) of
    weights[t] * decoded[t]; an empty bag is zeros."""
    nbags = offsets.shape[0]
    dim = decoded.shape[1]
    out = np.zeros((nbags, dim), dtype=np.float32)
    for b in prange(nbags):
        start = offsets[b]
        stop = offsets[b + 1] if b + 1 < nbags else decoded.shape[0]
        for t in range(start, stop):
            w = weights[t]
            for j in range(dim):
                out[b, j] += w * decoded[t, j]
    return out


def pool_weighted_numpy(decoded: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Twin of `pool_weighted`, same shapes and dtypes."""
    nbags = offsets.shape[0]
    out = np.zeros((nbags, decoded.shape[1]), dtype=np.float32)
    bounds = [*offsets.tolist(), decoded.shape[0]]
    for b in range(nbags):
        part = decoded[bounds[b] : bounds[b + 1]] * weights[bounds[b] : bounds[b + 1], None]
        for row in part:
            out[b] += row
    return out
