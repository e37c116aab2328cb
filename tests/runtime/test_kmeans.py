"""k-means kernels against their numpy twins, and the training built on them."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import training
from runtime.kernels import kmeans


def _points(seed: int, n: int, s: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: equal keys that only the centroid index can break
        return rng.integers(-2, 3, size=(n, s)).astype(np.float32)
    return rng.standard_normal((n, s)).astype(np.float32)


@given(
    st.integers(0, 2**31),
    st.integers(0, 70),
    st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 40, 257]),
    st.integers(1, 17),
    st.booleans(),
    st.booleans(),
)
def test_nearest_codeword_matches_twin(seed: int, n: int, nc: int, s: int, ties: bool, duplicate: bool) -> None:
    points = _points(seed, n, s, ties)
    books = _points(seed + 1, nc, s, ties)
    if duplicate and nc > 1:
        books[-1] = books[0]  # a duplicate codeword: the lower index must win
    assign = np.full(n, -1, dtype=np.int64)
    keys = np.empty(n, dtype=np.float32)
    neg2_t = np.ascontiguousarray(-2 * books.T)
    kmeans.nearest_codeword_into(points, neg2_t, kmeans.codeword_norms(books), 0, n, assign, keys)
    want_assign, want_keys = kmeans.nearest_codeword_numpy(points, books)
    np.testing.assert_array_equal(assign, want_assign)
    np.testing.assert_array_equal(keys, want_keys)
    if duplicate and nc > 1:
        assert (assign != nc - 1).all()
    if n:  # and the key is the squared distance less |x|^2: the true nearest, up to rounding
        exact = ((points[:, None, :] - books[None]) ** 2).sum(-1)
        np.testing.assert_allclose(exact[np.arange(n), assign], exact.min(axis=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("s", [5, 8])  # 8: the lane-wise path, on points that are a strided view
def test_nearest_codeword_partial_range_and_uint8_output(s: int) -> None:
    points = _points(3, 9, 2 * s, False)[:, ::2]
    books = _points(4, 256, s, False)
    out = np.zeros(9, dtype=np.uint8)
    kmeans.nearest_codeword_into(
        points, np.ascontiguousarray(-2 * books.T), kmeans.codeword_norms(books), 2, 7, out, np.empty(0, np.float32)
    )
    want, _ = kmeans.nearest_codeword_numpy(points, books)
    assert out[:2].tolist() == [0, 0] and out[7:].tolist() == [0, 0]
    np.testing.assert_array_equal(out[2:7], want[2:7])


@pytest.mark.parametrize("s", [1, 4, 8, 16])
@pytest.mark.parametrize("nc", [2, 16, 17, 256])
def test_nearest_codeword_ties_go_to_the_lowest_index(s: int, nc: int) -> None:
    points = _points(7, 45, s, False)
    books = _points(8, nc, s, False)
    books[1::2] = books[0 : nc - nc % 2 : 2]  # every codeword at an odd index repeats the one before
    assign = np.empty(points.shape[0], dtype=np.int64)
    keys = np.empty(points.shape[0], dtype=np.float32)
    kmeans.nearest_codeword_into(
        points, np.ascontiguousarray(-2 * books.T), kmeans.codeword_norms(books), 0, points.shape[0], assign, keys
    )
    assert (assign % 2 == 0).all()
    np.testing.assert_array_equal(assign, kmeans.nearest_codeword_numpy(points, books)[0])
    same = np.repeat(books[:1], nc, axis=0)  # all equal: codeword 0 for every point
    kmeans.nearest_codeword_into(
        points, np.ascontiguousarray(-2 * same.T), kmeans.codeword_norms(same), 0, points.shape[0], assign, keys
    )
    assert (assign == 0).all()


@pytest.mark.parametrize("s", [4, 8, 16])
def test_nearest_codeword_reads_codebooks_of_any_layout(s: int) -> None:
    # the lane-wise kernel reads each codeword's coordinates and norm through their strides
    points = _points(5, 37, s, False)
    books = _points(6, 40, s, False)
    want_assign, want_keys = kmeans.nearest_codeword_numpy(points, books)
    norms = kmeans.codeword_norms(books)
    spread_norms = np.repeat(norms, 2)[::2]  # a view with a stride of 8 bytes
    spread_books = np.zeros((s, 2 * books.shape[0]), dtype=np.float32)
    spread_books[:, ::2] = -2 * books.T
    backwards = np.ascontiguousarray(-2 * books[::-1].T)[:, ::-1]  # negative strides
    layouts = [np.ascontiguousarray(-2 * books.T), (-2 * books).T, spread_books[:, ::2], backwards]
    assert not layouts[1].flags.c_contiguous and not layouts[2].flags.c_contiguous and backwards.strides[1] < 0
    for neg2_t in layouts:
        for codeword_norms in (norms, spread_norms):
            assign = np.empty(points.shape[0], dtype=np.int64)
            keys = np.empty(points.shape[0], dtype=np.float32)
            kmeans.nearest_codeword_into(points, neg2_t, codeword_norms, 0, points.shape[0], assign, keys)
            np.testing.assert_array_equal(assign, want_assign)
            np.testing.assert_array_equal(keys, want_keys)


@given(
    st.integers(0, 2**31),
    st.sampled_from([0, 1, 7, 511, 512, 513, 1100]),
    st.integers(1, 4),
    st.sampled_from([1, 3, 4, 8, 16]),
    st.sampled_from([1, 2, 16, 17, 256]),
    st.booleans(),
)
def test_nearest_codes_match_twin(seed: int, n: int, m: int, s: int, nc: int, ties: bool) -> None:
    # PQ encoding a tile of rows at a time through every subspace: rows past a tile, a partial
    # range and rows inside a wider buffer
    rng = np.random.default_rng(seed)
    wide = _points(seed, n, m * s + 3, ties)
    x = wide[:, 2 : 2 + m * s]
    books = np.stack([_points(seed + 1 + i, nc, s, ties) for i in range(m)])
    neg2_t = np.ascontiguousarray(-2 * books.transpose(0, 2, 1))
    norms = np.stack([kmeans.codeword_norms(books[i]) for i in range(m)])
    lo = int(rng.integers(0, min(n, 40) + 1))  # a range that leaves out a few rows at each end
    hi = n - int(rng.integers(0, min(n - lo, 40) + 1))
    codes = np.full((n, m), 0xFFFF, dtype=np.uint16)  # no codeword's index: rows left alone stay so
    before = codes.copy()
    kmeans.nearest_codes_into(x, neg2_t, norms, lo, hi, codes)
    want = kmeans.nearest_codes_numpy(x, books)
    np.testing.assert_array_equal(codes[lo:hi], want[lo:hi])
    np.testing.assert_array_equal(codes[:lo], before[:lo])
    np.testing.assert_array_equal(codes[hi:], before[hi:])


@given(st.integers(0, 2**31), st.integers(0, 60), st.integers(1, 12), st.integers(1, 6))
def test_centroid_sums_match_twin(seed: int, n: int, nc: int, s: int) -> None:
    points = _points(seed, n, s, False)
    assign = np.random.default_rng(seed).integers(0, nc, n)
    sums, counts = kmeans.centroid_sums(points, assign, nc)
    want_sums, want_counts = kmeans.centroid_sums_numpy(points, assign, nc)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(counts, want_counts)


@given(st.integers(0, 2**31), st.integers(1, 60), st.integers(0, 20), st.integers(1, 6), st.booleans())
def test_kmeans_pp_seeds_match_twin(seed: int, n: int, count: int, s: int, ties: bool) -> None:
    points = _points(seed, n, s, ties)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    uniforms = rng.random(count)
    got = kmeans.kmeans_pp_seeds(points, first, uniforms)
    np.testing.assert_array_equal(got, kmeans.kmeans_pp_seeds_numpy(points, first, uniforms))
    if count:
        np.testing.assert_array_equal(got[0], points[first])
        # every seed is a row of the input
        assert all((points == row).all(axis=1).any() for row in got)


def test_kmeans_pp_spreads_seeds_over_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 4)).astype(np.float32) * 50
    points = (centres[rng.integers(0, 8, 4000)] + rng.standard_normal((4000, 4))).astype(np.float32)
    seeds = training.kmeans_plus_plus(points, 8, np.random.default_rng(1))
    # one seed in each cluster: distance-weighted draws almost never land twice in one
    nearest_centre = ((seeds[:, None, :] - centres[None]) ** 2).sum(-1).argmin(axis=1)
    assert len(set(nearest_centre.tolist())) == 8


def test_lloyd_reseeds_emptied_clusters() -> None:
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 3)).astype(np.float32) * 20
    points = (centres[rng.integers(0, 6, 3000)] + 0.1 * rng.standard_normal((3000, 3))).astype(np.float32)
    # every start at one point: five clusters are empty after the first assignment
    start = np.repeat(points[:1], 6, axis=0)
    found = training.lloyd(points, start, 20)
    nearest, dist = training.assign(points, found)
    assert np.bincount(nearest, minlength=6).min() > 0  # no centroid idles
    one_centroid = ((points - points.mean(axis=0)) ** 2).sum()
    assert dist.sum() < 0.5 * one_centroid


def test_lloyd_recovers_well_seeded_clusters() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 3)).astype(np.float32) * 20
    points = (centres[rng.integers(0, 6, 3000)] + 0.1 * rng.standard_normal((3000, 3))).astype(np.float32)
    found = training.kmeans(points, 6, 20, np.random.default_rng(0))
    error = ((found[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=0)
    assert (error < 0.1).all(), error


@pytest.mark.parametrize("threads", [1, 2])
def test_training_and_encoding_do_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    # more rows than 16 codewords train on (a subset is drawn) and several encoding blocks in flight
    monkeypatch.setattr(training, "ENCODE_BLOCK_ROWS", 700)
    x = _points(5, 5000, 16, False)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        books_one = training.train_codebooks(x, 4, 16, 5, np.random.default_rng(0))
        codes_one = training.encode(x, books_one)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        books = training.train_codebooks(x, 4, 16, 5, np.random.default_rng(0))
        codes = training.encode(x, books)
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_array_equal(books, books_one)
    np.testing.assert_array_equal(codes, codes_one)
    for m in range(4):
        want, _ = kmeans.nearest_codeword_numpy(np.ascontiguousarray(x[:, 4 * m : 4 * m + 4]), books[m])
        np.testing.assert_array_equal(codes[:, m], want)


def test_encode_with_rotation_matches_rotating_first() -> None:
    x = _points(6, 500, 8, False)
    rotation = np.linalg.qr(np.random.default_rng(7).standard_normal((8, 8)))[0].astype(np.float32)
    books = training.train_codebooks(x @ rotation, 2, 16, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(training.encode(x, books, rotation), training.encode(x @ rotation, books))


@pytest.mark.parametrize(("n", "n_centroids", "trained_on"), [(5000, 16, 4096), (4096, 16, 4096), (5000, 32, 5000)])
def test_codebooks_train_on_at_most_256_rows_a_centroid(
    monkeypatch: pytest.MonkeyPatch, n: int, n_centroids: int, trained_on: int
) -> None:
    seen: list[int] = []
    real_kmeans = training.kmeans

    def counting_kmeans(points: np.ndarray, count: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
        seen.append(points.shape[0])
        return real_kmeans(points, count, iterations, rng)

    monkeypatch.setattr(training, "kmeans", counting_kmeans)
    x = _points(9, n, 8, False)
    books = training.train_codebooks(x, 2, n_centroids, 3, np.random.default_rng(0))
    assert seen == [trained_on, trained_on] and books.shape == (2, n_centroids, 4)
    if trained_on == n:  # no subset drawn: the generator is left as it was, the codebooks as before
        parts = [np.ascontiguousarray(x[:, 4 * m : 4 * m + 4]) for m in range(2)]
        children = np.random.default_rng(0).spawn(2)
        for m in range(2):
            np.testing.assert_array_equal(books[m], real_kmeans(parts[m], n_centroids, 3, children[m]))
