"""k-means kernels for product quantization: nearest codeword, centroid sums, k-means++ seeding.

Nearest codeword uses the matrix-product form of the squared distance, as BLAS k-means does:
|x - c|^2 = |x|^2 - 2 x·c + |c|^2, and |x|^2 is the same for every c, so the argmin is over
key[c] = |c|^2 + sum_j x_j · (-2 C^T)[j, c]. The kernel computes one row of keys (K,) with the
codebook transposed (vector lanes run over centroids), then an exact argmin whose ties go to the
lowest index: each float key is mapped to an int64 that orders like the float, shifted up 16 bits,
with the centroid index in the low bits, so a plain integer min (which vectorizes) finds both.
Two points share every codebook load, and eight (then four) dimensions are added per pass over
a row of keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_CENTROIDS = 1 << 16
"""The argmin packs a centroid index into 16 bits."""


@njit(inline="always", nogil=True, cache=True)
def _argmin_low_index(keys: np.ndarray) -> int:
    """Index of the smallest of keys (K,) float32 (no NaN), the lowest among equals."""
    bits = keys.view(np.int32)
    best = np.int64(0x7FFFFFFFFFFFFFFF)
    for c in range(keys.shape[0]):
        b = np.int64(bits[c])
        # flip the magnitude bits of negative floats: the int64 then orders as the float does
        ordered = b ^ ((b >> 31) & 0x7FFFFFFF)
        best = min(best, (ordered << 16) | c)
    return int(best & 0xFFFF)


@njit(nogil=True, cache=True)
def nearest_codeword_into(
    points: np.ndarray,
    neg2_books_t: np.ndarray,
    norms: np.ndarray,
    lo: int,
    hi: int,
    assign: np.ndarray,
    keys_out: np.ndarray,
) -> None:
    """For rows lo..hi-1 of points (n, s) float32 (any strides): assign[i] = the nearest codeword
    (lowest index among ties) and keys_out[i] = its key |c|^2 - 2 x·c (add |x|^2 for the squared
    distance). neg2_books_t (s, K) float32 is -2 C^T, norms (K,) float32 is |c|^2, K <= 65536.
    assign (n,) any integer dtype wide enough for K, keys_out (n,) float32 or empty."""
    s, nc = neg2_books_t.shape
    row_a = np.empty(nc, dtype=np.float32)
    row_b = np.empty(nc, dtype=np.float32)
    want_keys = keys_out.shape[0] > 0
    i = lo
    while i < hi:
        # two points a pass, the second a repeat of the first at an odd end
        i2 = i + 1 if i + 1 < hi else i
        j = 0
        if s >= 8:
            # the first pass starts from |c|^2 and adds eight dimensions (all of them at s = 8)
            a0, a1, a2, a3 = points[i, 0], points[i, 1], points[i, 2], points[i, 3]
            a4, a5, a6, a7 = points[i, 4], points[i, 5], points[i, 6], points[i, 7]
            b0, b1, b2, b3 = points[i2, 0], points[i2, 1], points[i2, 2], points[i2, 3]
            b4, b5, b6, b7 = points[i2, 4], points[i2, 5], points[i2, 6], points[i2, 7]
            for c in range(nc):
                w0, w1, w2, w3 = neg2_books_t[0, c], neg2_books_t[1, c], neg2_books_t[2, c], neg2_books_t[3, c]
                w4, w5, w6, w7 = neg2_books_t[4, c], neg2_books_t[5, c], neg2_books_t[6, c], neg2_books_t[7, c]
                row_a[c] = norms[c] + a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3 + a4 * w4 + a5 * w5 + a6 * w6 + a7 * w7
                row_b[c] = norms[c] + b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3 + b4 * w4 + b5 * w5 + b6 * w6 + b7 * w7
            j = 8
        else:
            for c in range(nc):
                row_a[c] = norms[c]
                row_b[c] = norms[c]
        # then four dimensions a pass over the keys: a quarter of the loads and stores of the rows
        while j + 4 <= s:
            a0, a1, a2, a3 = points[i, j], points[i, j + 1], points[i, j + 2], points[i, j + 3]
            b0, b1, b2, b3 = points[i2, j], points[i2, j + 1], points[i2, j + 2], points[i2, j + 3]
            for c in range(nc):
                w0 = neg2_books_t[j, c]
                w1 = neg2_books_t[j + 1, c]
                w2 = neg2_books_t[j + 2, c]
                w3 = neg2_books_t[j + 3, c]
                row_a[c] = row_a[c] + a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3
                row_b[c] = row_b[c] + b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3
            j += 4
        while j < s:
            xa = points[i, j]
            xb = points[i2, j]
            for c in range(nc):
                w = neg2_books_t[j, c]
                row_a[c] += xa * w
                row_b[c] += xb * w
            j += 1
        ca = _argmin_low_index(row_a)
        cb = _argmin_low_index(row_b)
        assign[i] = ca
        assign[i2] = cb
        if want_keys:
            keys_out[i] = row_a[ca]
            keys_out[i2] = row_b[cb]
        i += 2


def nearest_codeword_numpy(points: np.ndarray, books: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twin of `nearest_codeword_into` over all rows: points (n, s) float32, books (K, s) float32
    -> assign (n,) int64, keys (n,) float32, computed in the kernel's order of float32 operations."""
    neg2_t = np.ascontiguousarray(-2 * books.T, dtype=np.float32)
    keys = np.repeat(codeword_norms(books)[None, :], points.shape[0], axis=0)
    s = books.shape[1]
    x = [points[:, j : j + 1] for j in range(s)]
    j = 0
    if s >= 8:
        for t in range(8):  # left to right, as the kernel's one expression adds them
            keys = keys + x[t] * neg2_t[t]
        j = 8
    while j + 4 <= s:
        keys = keys + x[j] * neg2_t[j] + x[j + 1] * neg2_t[j + 1] + x[j + 2] * neg2_t[j + 2] + x[j + 3] * neg2_t[j + 3]
        j += 4
    for rest in range(j, s):
        keys += x[rest] * neg2_t[rest]
    if books.shape[0] == 0 or points.shape[0] == 0:
        return np.zeros(points.shape[0], np.int64), np.zeros(points.shape[0], np.float32)
    assign = keys.argmin(axis=1).astype(np.int64)
    return assign, keys[np.arange(points.shape[0]), assign]


def codeword_norms(books: np.ndarray) -> np.ndarray:
    """books (K, s) float32 -> |c|^2 (K,) float32, summed in dimension order."""
    norms = np.zeros(books.shape[0], dtype=np.float32)
    for j in range(books.shape[1]):
        norms += books[:, j] * books[:, j]
    return norms


@njit(nogil=True, cache=True)
def centroid_sums(points: np.ndarray, assign: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """points (n, s) float32, assign (n,) int64 -> per-centroid sums (K, s) float64 and counts
    (K,) int64: the update step of Lloyd's algorithm, one pass over the points."""
    s = points.shape[1]
    sums = np.zeros((n_centroids, s), dtype=np.float64)
    counts = np.zeros(n_centroids, dtype=np.int64)
    for i in range(points.shape[0]):
        c = assign[i]
        counts[c] += 1
        for j in range(s):
            sums[c, j] += points[i, j]
    return sums, counts


def centroid_sums_numpy(points: np.ndarray, assign: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Twin of `centroid_sums`."""
    sums = np.zeros((n_centroids, points.shape[1]), dtype=np.float64)
    np.add.at(sums, assign, points.astype(np.float64))
    return sums, np.bincount(assign, minlength=n_centroids).astype(np.int64)


@njit(nogil=True, cache=True)
def kmeans_pp_seeds(points: np.ndarray, first: int, uniforms: np.ndarray) -> np.ndarray:
    """k-means++ seeding: points (n, s) float32, n >= 1; the first seed is row `first`, seed t
    (t >= 1) is the first row whose running sum of squared distances to the nearest seed so far
    (float64, row order) exceeds uniforms[t] (in [0, 1)) times their total; a zero total takes
    row floor(uniforms[t] * n). -> seeds (len(uniforms), s) float32."""
    n, s = points.shape
    count = uniforms.shape[0]
    seeds = np.empty((count, s), dtype=np.float32)
    if count == 0:
        return seeds
    nearest = np.full(n, np.inf)
    pick = first
    for t in range(count):
        if t > 0:
            total = 0.0
            for i in range(n):
                total += nearest[i]
            if total <= 0.0:
                pick = min(n - 1, int(uniforms[t] * n))
            else:
                target = uniforms[t] * total
                running = 0.0
                pick = n - 1
                for i in range(n):
                    running += nearest[i]
                    if running > target:
                        pick = i
                        break
        for j in range(s):
            seeds[t, j] = points[pick, j]
        for i in range(n):
            d = 0.0
            for j in range(s):
                diff = np.float64(points[i, j] - seeds[t, j])
                d += diff * diff
            nearest[i] = min(nearest[i], d)
    return seeds


def kmeans_pp_seeds_numpy(points: np.ndarray, first: int, uniforms: np.ndarray) -> np.ndarray:
    """Twin of `kmeans_pp_seeds`, in the same order of float operations."""
    n, s = points.shape
    seeds = np.empty((uniforms.shape[0], s), dtype=np.float32)
    nearest = np.full(n, np.inf)
    pick = first
    for t in range(uniforms.shape[0]):
        if t > 0:
            running = np.cumsum(nearest)
            total = running[-1]
            if total <= 0.0:
                pick = min(n - 1, int(uniforms[t] * n))
            else:
                pick = min(n - 1, int(np.searchsorted(running, uniforms[t] * total, side="right")))
        seeds[t] = points[pick]
        d = np.zeros(n)
        for j in range(s):
            diff = (points[:, j] - seeds[t, j]).astype(np.float64)
            d += diff * diff
        nearest = np.minimum(nearest, d)
    return seeds
