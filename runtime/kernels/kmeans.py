"""k-means kernels for product quantization: nearest codeword, centroid sums, k-means++ seeding.

Nearest codeword uses the matrix-product form of the squared distance, as BLAS k-means does:
|x - c|^2 = |x|^2 - 2 x·c + |c|^2, and |x|^2 is the same for every c, so the argmin is over
key[c] = |c|^2 + sum_j x_j · (-2 C^T)[j, c]. The kernel computes one row of keys (K,) with the
codebook transposed (vector lanes run over centroids), then an exact argmin whose ties go to the
lowest index: each float key is mapped to an int64 that orders like the float, shifted up 16 bits,
with the centroid index in the low bits, so a plain integer min (which vectorizes) finds both.
Two points share every codebook load, and eight (then four) dimensions are added per pass over
a row of keys.

Subspaces of 4, 8 or 16 dimensions (nearly every PQ setting: d / M) with 32 or more codewords
take a fused path instead: an LLVM vector kernel computes eight codewords' keys at a time for two
points and keeps, per vector lane, the smallest key so far and its index, so a key is never
stored, reloaded and converted to an integer for the argmin. It adds the products in the same
order, without contraction, so both paths (and the numpy twin) agree on every key and every
choice, ties going to the lowest index. On an AMD EPYC (AVX2) it assigns 65,536 points of 8
dimensions to 256 codewords in 6.2 ms against 9.1 ms (Faiss's exhaustive search: 6.8-7.3 ms).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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


FUSED_LANES = 8
"""Codewords a vector of the fused path holds: eight float32 lanes (one AVX register; LLVM splits
or joins vectors for narrower and wider CPUs)."""


def _fused_pair_kernel(dims: int):  # type: ignore[no-untyped-def]
    """The fused nearest-codeword step for subspaces of `dims` dimensions, as a numba intrinsic:
    (pair (2, dims) float32 C-contiguous: two points; neg2_books_t (dims, K) float32, inner stride
    4 bytes; norms (K,) float32 contiguous; head: a multiple of 8, <= K) -> (c_a, c_b) int64, each
    point's nearest among codewords 0..head-1, the lowest index among equal keys."""

    @intrinsic
    def nearest_pair(typingctx, pair, books_t, norms, head):  # type: ignore[no-untyped-def]
        if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (pair, books_t, norms)):
            return None  # the kernel reads float32 only: anything else is a typing error, not a misread
        sig = types.UniTuple(types.int64, 2)(pair, books_t, norms, types.int64)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vf, vi = ir.VectorType(f32, FUSED_LANES), ir.VectorType(i32, FUSED_LANES)
            pair_ary = context.make_array(signature.args[0])(context, builder, args[0])
            books_ary = context.make_array(signature.args[1])(context, builder, args[1])
            norms_ary = context.make_array(signature.args[2])(context, builder, args[2])
            row_step = builder.sdiv(cgutils.unpack_tuple(builder, books_ary.strides)[0], ir.Constant(i64, 4))
            pair_ptr = builder.bitcast(pair_ary.data, f32.as_pointer())
            books_ptr = builder.bitcast(books_ary.data, f32.as_pointer())
            norms_ptr = builder.bitcast(norms_ary.data, f32.as_pointer())
            lane_zeros = ir.Constant(vi, [0] * FUSED_LANES)

            def splat(value, vtype):  # type: ignore[no-untyped-def]
                one = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined), lane_zeros)

            def load_vector(ptr, offset):  # type: ignore[no-untyped-def]
                address = builder.bitcast(builder.gep(ptr, [offset]), vf.as_pointer())
                return builder.load(address, align=4, typ=vf)

            points = [
                [splat(builder.load(builder.gep(pair_ptr, [ir.Constant(i64, p * dims + j)])), vf) for j in range(dims)]
                for p in range(2)
            ]
            lanes = ir.Constant(vi, list(range(FUSED_LANES)))
            best = [cgutils.alloca_once_value(builder, ir.Constant(vf, [float("inf")] * FUSED_LANES)) for _ in range(2)]
            best_index = [cgutils.alloca_once_value(builder, lane_zeros) for _ in range(2)]
            with cgutils.for_range_slice(builder, ir.Constant(i64, 0), args[3], ir.Constant(i64, FUSED_LANES)) as (
                c,
                _,
            ):
                keys = [load_vector(norms_ptr, c)] * 2
                for j in range(dims):
                    w = load_vector(books_ptr, builder.add(builder.mul(ir.Constant(i64, j), row_step), c))
                    # fmul then fadd, no fast-math flags: never contracted, so rounded as the twin rounds
                    keys = [builder.fadd(keys[p], builder.fmul(points[p][j], w)) for p in range(2)]
                indices = builder.add(splat(builder.trunc(c, i32), vi), lanes)
                for p in range(2):
                    kept = builder.load(best[p], typ=vf)
                    # strictly smaller: a lane keeps its earlier (lower) index among equal keys
                    smaller = builder.fcmp_ordered("<", keys[p], kept)
                    builder.store(builder.select(smaller, keys[p], kept), best[p])
                    builder.store(builder.select(smaller, indices, builder.load(best_index[p], typ=vi)), best_index[p])

            def lowest(p: int):  # type: ignore[no-untyped-def]
                key = builder.load(best[p], typ=vf)
                index = builder.load(best_index[p], typ=vi)
                width = FUSED_LANES
                while width > 1:  # fold the upper half of the lanes onto the lower half
                    width //= 2
                    upper = ir.Constant(vi, [width + j if j < width else j for j in range(FUSED_LANES)])
                    other_key = builder.shuffle_vector(key, ir.Constant(vf, ir.Undefined), upper)
                    other_index = builder.shuffle_vector(index, ir.Constant(vi, ir.Undefined), upper)
                    take = builder.or_(
                        builder.fcmp_ordered("<", other_key, key),
                        builder.and_(
                            builder.fcmp_ordered("==", other_key, key), builder.icmp_signed("<", other_index, index)
                        ),
                    )
                    key = builder.select(take, other_key, key)
                    index = builder.select(take, other_index, index)
                return builder.sext(builder.extract_element(index, ir.Constant(i32, 0)), i64)

            return context.make_tuple(builder, signature.return_type, [lowest(0), lowest(1)])

        return sig, codegen

    return nearest_pair


_nearest_pair_4 = _fused_pair_kernel(4)
_nearest_pair_8 = _fused_pair_kernel(8)
_nearest_pair_16 = _fused_pair_kernel(16)
FUSED_DIMS = (4, 8, 16)
"""Subspace dimensions with a fused kernel."""
FUSED_MIN_CODEWORDS = 32
"""Fewer codewords take the general path: the fused path's fixed cost a pair of points (the vector
reduction, the winners' keys) outweighs its gain; on an AMD EPYC, s = 8: 1.4x slower at K = 16, even
at 32, 1.3x faster at 64 and 1.4x at 256."""


@njit(inline="always", nogil=True, cache=True)
def _codeword_key(x: np.ndarray, neg2_books_t: np.ndarray, norms: np.ndarray, c: int) -> np.float32:
    """The key of codeword c for one point x (s,) float32, its products added in dimension order."""
    key = norms[c]
    for j in range(x.shape[0]):
        key = key + x[j] * neg2_books_t[j, c]
    return key


@njit(nogil=True, cache=True)
def _nearest_codeword_fused(
    points: np.ndarray,
    neg2_books_t: np.ndarray,
    norms: np.ndarray,
    lo: int,
    hi: int,
    assign: np.ndarray,
    keys_out: np.ndarray,
) -> None:
    """`nearest_codeword_into` for s in FUSED_DIMS and K >= FUSED_MIN_CODEWORDS: the vector kernel
    over the first K - K % 8 codewords, then the rest one by one (a later index wins only when
    strictly smaller)."""
    s, nc = neg2_books_t.shape
    head = nc - nc % FUSED_LANES
    pair = np.empty((2, s), dtype=np.float32)
    want_keys = keys_out.shape[0] > 0
    i = lo
    while i < hi:
        i2 = i + 1 if i + 1 < hi else i
        for j in range(s):
            pair[0, j] = points[i, j]
            pair[1, j] = points[i2, j]
        if s == 4:
            ca, cb = _nearest_pair_4(pair, neg2_books_t, norms, head)
        elif s == 8:
            ca, cb = _nearest_pair_8(pair, neg2_books_t, norms, head)
        else:
            ca, cb = _nearest_pair_16(pair, neg2_books_t, norms, head)
        key_a = _codeword_key(pair[0], neg2_books_t, norms, ca)
        key_b = _codeword_key(pair[1], neg2_books_t, norms, cb)
        for c in range(head, nc):
            tail_a = _codeword_key(pair[0], neg2_books_t, norms, c)
            tail_b = _codeword_key(pair[1], neg2_books_t, norms, c)
            if tail_a < key_a:
                key_a, ca = tail_a, c
            if tail_b < key_b:
                key_b, cb = tail_b, c
        assign[i] = ca
        assign[i2] = cb
        if want_keys:
            keys_out[i] = key_a
            keys_out[i2] = key_b
        i += 2


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
    if (
        nc >= FUSED_MIN_CODEWORDS
        and (s == 4 or s == 8 or s == 16)
        and neg2_books_t.strides[1] == 4
        and neg2_books_t.strides[0] % 4 == 0
        and norms.strides[0] == 4
    ):
        _nearest_codeword_fused(points, neg2_books_t, norms, lo, hi, assign, keys_out)
        return
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
