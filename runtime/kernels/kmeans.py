"""k-means kernels for product quantization: nearest codeword, centroid sums, k-means++ seeding.

Nearest codeword uses the matrix-product form of the squared distance, as BLAS k-means does:
|x - c|^2 = |x|^2 - 2 x·c + |c|^2, and |x|^2 is the same for every c, so the argmin is over
key[c] = |c|^2 + sum_j x_j · (-2 C^T)[j, c]. The kernel computes one row of keys (K,) with the
codebook transposed (vector lanes run over centroids), then an exact argmin whose ties go to the
lowest index: each float key is mapped to an int64 that orders like the float, shifted up 16 bits,
with the centroid index in the low bits, so a plain integer min (which vectorizes) finds both.
Two points share every codebook load, and eight (then four) dimensions are added per pass over
a row of keys.

Subspaces of 4, 8 or 16 dimensions (nearly every PQ setting: d / M) take a lane-wise path instead:
an LLVM vector kernel holds one point a lane (eight with AVX2, sixteen with AVX-512), multiplies by
each codeword's coordinates broadcast to every lane, and keeps, per lane, the smallest key so far
and its index. A key is never stored, reloaded and converted to an integer for the argmin, and no
lane's result waits on the others. It adds the products in the same order, without contraction, so
both paths (and the numpy twin) agree on every key and every choice, ties going to the lowest index,
wherever the keys are finite (inputs are checked finite; a key overflows only for coordinates near
1e19, and a NaN key is never chosen here). On an AMD EPYC (AVX2, one thread, 65,536 points) it
replaced a kernel that held eight codewords a vector and two points a pass, with the same keys and
choices: 0.41x the time at s = 4 and 16 codewords (4-bit PQ), 0.56-0.69x at s = 8 and 16; at 256
codewords 0.80-0.86x at s = 4, 0.91-0.95x at s = 8 (6.0 ms; Faiss's exhaustive search: 6.8-7.3 ms),
0.93-1.05x at s = 16.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.simd import REGISTER_LANES

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


LANES = REGISTER_LANES
"""Points a vector of the lane-wise path holds: one float32 lane each (8 with AVX2, 16 with
AVX-512)."""

LANE_UNROLL = 2
"""Codewords the lane-wise kernel computes keys for at once, their sums interleaved dimension by
dimension: two independent chains of adds. On an AMD EPYC (65,536 points, one thread) one at a
time took 1.07-1.12x as long at K = 256, four 1.04-1.28x (more live vectors than registers)."""


def _lanes_kernel(dims: int):  # type: ignore[no-untyped-def]
    """The lane-wise nearest-codeword step for subspaces of `dims` dimensions, as a numba
    intrinsic: (block (dims, LANES) float32 C-contiguous: LANES points, one a lane, dimension-major;
    neg2_books_t (dims, K) float32, strides multiples of 4 bytes; norms (K,) float32, stride a
    multiple of 4; best_index (LANES,) int32 C; best_key (LANES,) float32 C) -> 0. Writes each
    lane's nearest codeword (the lowest index among equal keys; 0 when every key is NaN or +inf)
    and its key."""

    @intrinsic
    def nearest_block(typingctx, block, books_t, norms, best_index, best_key):  # type: ignore[no-untyped-def]
        floats = (block, books_t, norms, best_key)
        if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in floats):
            return None  # the kernel reads float32 only: anything else is a typing error, not a misread
        if not (isinstance(best_index, types.Array) and best_index.dtype == types.int32):
            return None
        sig = types.int64(block, books_t, norms, best_index, best_key)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vf, vi = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
            block_ary, books_ary, norms_ary, index_ary, key_ary = (
                context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args, strict=True)
            )
            four = ir.Constant(i64, 4)
            dim_step, codeword_step = (builder.sdiv(x, four) for x in cgutils.unpack_tuple(builder, books_ary.strides))
            norm_step = builder.sdiv(cgutils.unpack_tuple(builder, norms_ary.strides)[0], four)
            n_codewords = cgutils.unpack_tuple(builder, books_ary.shape)[1]
            block_ptr = builder.bitcast(block_ary.data, f32.as_pointer())
            books_ptr = builder.bitcast(books_ary.data, f32.as_pointer())
            norms_ptr = builder.bitcast(norms_ary.data, f32.as_pointer())
            lane_zeros = ir.Constant(vi, [0] * LANES)

            def splat(value):  # type: ignore[no-untyped-def]
                one = builder.insert_element(ir.Constant(vf, ir.Undefined), value, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, ir.Constant(vf, ir.Undefined), lane_zeros)

            def vector_at(ptr, offset, vtype):  # type: ignore[no-untyped-def]
                return builder.bitcast(builder.gep(ptr, [ir.Constant(i64, offset)]), vtype.as_pointer())

            points = [builder.load(vector_at(block_ptr, j * LANES, vf), align=4) for j in range(dims)]
            best = cgutils.alloca_once_value(builder, ir.Constant(vf, [float("inf")] * LANES))
            best_at = cgutils.alloca_once_value(builder, lane_zeros)
            index = cgutils.alloca_once_value(builder, lane_zeros)  # the codeword in hand, in every lane

            def keys_from(first, count):  # type: ignore[no-untyped-def]
                codewords = [builder.add(first, ir.Constant(i64, u)) for u in range(count)]
                columns = [builder.mul(c, codeword_step) for c in codewords]
                keys = [splat(builder.load(builder.gep(norms_ptr, [builder.mul(c, norm_step)]))) for c in codewords]
                for j in range(dims):
                    row = builder.mul(ir.Constant(i64, j), dim_step)
                    for u in range(count):
                        w = splat(builder.load(builder.gep(books_ptr, [builder.add(row, columns[u])])))
                        # fmul then fadd, no fast-math flags: never contracted, so rounded as the twin rounds
                        keys[u] = builder.fadd(keys[u], builder.fmul(points[j], w))
                for key in keys:  # in codeword order, strictly smaller: a lane keeps the lower index
                    kept = builder.load(best)
                    at = builder.load(index)
                    smaller = builder.fcmp_ordered("<", key, kept)
                    builder.store(builder.select(smaller, key, kept), best)
                    builder.store(builder.select(smaller, at, builder.load(best_at)), best_at)
                    builder.store(builder.add(at, ir.Constant(vi, [1] * LANES)), index)

            unroll = ir.Constant(i64, LANE_UNROLL)
            whole = builder.mul(builder.sdiv(n_codewords, unroll), unroll)
            with cgutils.for_range_slice(builder, ir.Constant(i64, 0), whole, unroll) as (c, _):
                keys_from(c, LANE_UNROLL)
            with cgutils.for_range_slice(builder, whole, n_codewords, ir.Constant(i64, 1)) as (c, _):
                keys_from(c, 1)
            builder.store(
                builder.load(best), vector_at(builder.bitcast(key_ary.data, f32.as_pointer()), 0, vf), align=4
            )
            builder.store(
                builder.load(best_at), vector_at(builder.bitcast(index_ary.data, i32.as_pointer()), 0, vi), align=4
            )
            return ir.Constant(i64, 0)

        return sig, codegen

    return nearest_block


_nearest_block_4 = _lanes_kernel(4)
_nearest_block_8 = _lanes_kernel(8)
_nearest_block_16 = _lanes_kernel(16)


@njit(nogil=True, cache=True)
def _nearest_codeword_lanes(
    points: np.ndarray,
    neg2_books_t: np.ndarray,
    norms: np.ndarray,
    lo: int,
    hi: int,
    assign: np.ndarray,
    keys_out: np.ndarray,
) -> None:
    """`nearest_codeword_into` for s of 4, 8 or 16: LANES points at a time, copied dimension-major
    into a block (the last point repeated to fill it), each against every codeword."""
    s = neg2_books_t.shape[0]
    block = np.empty((s, LANES), dtype=np.float32)
    best_index = np.empty(LANES, dtype=np.int32)
    best_key = np.empty(LANES, dtype=np.float32)
    want_keys = keys_out.shape[0] > 0
    for first in range(lo, hi, LANES):
        count = min(LANES, hi - first)
        for lane in range(LANES):
            i = first + min(lane, count - 1)
            for j in range(s):
                block[j, lane] = points[i, j]
        if s == 4:
            _nearest_block_4(block, neg2_books_t, norms, best_index, best_key)
        elif s == 8:
            _nearest_block_8(block, neg2_books_t, norms, best_index, best_key)
        else:
            _nearest_block_16(block, neg2_books_t, norms, best_index, best_key)
        for lane in range(count):
            assign[first + lane] = best_index[lane]
            if want_keys:
                keys_out[first + lane] = best_key[lane]


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
        nc >= 1
        and (s == 4 or s == 8 or s == 16)
        and neg2_books_t.strides[0] % 4 == 0
        and neg2_books_t.strides[1] % 4 == 0
        and norms.strides[0] % 4 == 0
    ):
        _nearest_codeword_lanes(points, neg2_books_t, norms, lo, hi, assign, keys_out)
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


ENCODE_TILE_ROWS = 512
"""Rows `nearest_codes_into` takes through every subspace before the next rows: 256 KiB of 128-d
float32 rows, which stay in L2 while each subspace reads its few columns of them."""


@njit(nogil=True, cache=True)
def nearest_codes_into(
    x: np.ndarray, neg2_books_t: np.ndarray, norms: np.ndarray, lo: int, hi: int, codes: np.ndarray
) -> None:
    """PQ encoding of rows lo..hi-1: x (n, M*s) float32 (any strides), neg2_books_t (M, s, K)
    float32 (each subspace's -2 C^T), norms (M, K) float32, codes (n, M) any integer dtype wide
    enough for K: codes[i, m] = the nearest codeword of x[i, m*s:(m+1)*s] (lowest index among
    ties). A tile of ENCODE_TILE_ROWS rows goes through every subspace before the next tile."""
    m_count, s, _ = neg2_books_t.shape
    no_keys = np.empty(0, dtype=np.float32)
    for first in range(lo, hi, ENCODE_TILE_ROWS):
        last = min(hi, first + ENCODE_TILE_ROWS)
        for m in range(m_count):
            column = m * s
            nearest_codeword_into(
                x[:, column : column + s], neg2_books_t[m], norms[m], first, last, codes[:, m], no_keys
            )


def nearest_codes_numpy(x: np.ndarray, books: np.ndarray) -> np.ndarray:
    """Twin of `nearest_codes_into` over all rows: x (n, M*s) float32, books (M, K, s) float32 ->
    codes (n, M) int64."""
    m_count, _, s = books.shape
    codes = np.zeros((x.shape[0], m_count), dtype=np.int64)
    for m in range(m_count):
        codes[:, m] = nearest_codeword_numpy(np.ascontiguousarray(x[:, m * s : (m + 1) * s]), books[m])[0]
    return codes


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
