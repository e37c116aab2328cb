"""Residual quantization: its kernels against their numpy twins, beam search against exhaustive
search, search by stored id through the cross-codebook tables against decode-then-dot, bad options."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime import InvalidRequest
from runtime.codecs import TrainedState
from runtime.codecs.rq import (
    RqCodec,
    beam_encode,
    decode_codes,
    kmeans,
    nearest,
    progressive_kmeans,
    quantize_norms,
    refine_codebooks,
    squared_error,
    train_codebooks,
    training_rows,
)
from runtime.kernels import additive
from runtime.kernels import kmeans as kmeans_kernels
from tests.conftest import low_rank_table


# ---- kernels against their twins ------------------------------------------------------------------
@st.composite
def beam_stages(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    """One beam stage's input: n rows (0 and 1 included), B entries, K codewords, depth m; with
    `ties`, integer-valued data so many extensions have equal errors and only the index decides."""
    n = draw(st.integers(0, 30))
    beam = draw(st.integers(1, 5))
    ncode = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 9))
    depth = draw(st.integers(0, 3))
    width = draw(st.integers(1, beam * ncode + 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):
        residuals = rng.integers(-2, 3, (n, beam, dim)).astype(np.float32)
        codebook = rng.integers(-2, 3, (ncode, dim)).astype(np.float32)
    else:
        residuals = rng.standard_normal((n, beam, dim)).astype(np.float32)
        codebook = rng.standard_normal((ncode, dim)).astype(np.float32)
    norms = np.einsum("nbd,nbd->nb", residuals, residuals).astype(np.float32)
    dots = np.einsum("nbd,kd->nbk", residuals, codebook).astype(np.float32)
    code_norms = np.einsum("kd,kd->k", codebook, codebook).astype(np.float32)
    paths = rng.integers(0, 256, (n, beam, depth)).astype(np.uint8)
    return residuals, norms, dots, codebook, code_norms, paths, width


@given(beam_stages())
def test_beam_advance_matches_numpy(case) -> None:  # type: ignore[no-untyped-def]
    got = additive.beam_advance(*case)
    want = additive.beam_advance_numpy(*case)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    residuals, _, _, codebook, _, _, width = case
    assert got[0].shape[1] == min(width, residuals.shape[1] * codebook.shape[0])
    # errors come out ascending, and each is the squared norm of the residual it belongs to
    assert (np.diff(got[2], axis=1) >= 0).all()
    np.testing.assert_allclose(got[2], np.einsum("nwd,nwd->nw", got[0], got[0]), rtol=1e-4, atol=1e-3)


@given(st.integers(0, 2**31), st.integers(0, 200), st.integers(1, 30), st.integers(1, 8))
def test_centroid_sums_match_numpy(seed: int, n: int, ncentroids: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, dim)).astype(np.float32)
    assign = rng.integers(0, ncentroids, n).astype(np.int64)
    sums, counts = kmeans_kernels.centroid_sums(points, assign, ncentroids)
    want_sums, want_counts = kmeans_kernels.centroid_sums_numpy(points, assign, ncentroids)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-12, atol=1e-12)
    assert counts.sum() == n


@given(st.integers(0, 2**31), st.integers(0, 12), st.integers(1, 6), st.integers(1, 20))
def test_cross_luts_match_numpy(seed: int, nq: int, nbooks: int, ncode: int) -> None:
    rng = np.random.default_rng(seed)
    books = rng.standard_normal((nbooks, ncode, 5)).astype(np.float32)
    flat = books.reshape(nbooks * ncode, 5)
    tables = np.ascontiguousarray((flat @ flat.T).reshape(nbooks, ncode, nbooks, ncode).transpose(0, 2, 1, 3))
    codes = rng.integers(0, ncode, (nq, nbooks)).astype(np.uint8)
    got = additive.cross_luts(codes, tables)
    np.testing.assert_array_equal(got, additive.cross_luts_numpy(codes, tables))
    # the tables are <decoded row, C_j[k]>
    want = np.einsum("qd,jkd->qjk", decode_codes(codes, books), books)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@given(st.integers(0, 2**31), st.integers(0, 9), st.integers(0, 200), st.integers(1, 40), st.booleans())
def test_codeword_dots_match_numpy(seed: int, nq: int, ncw: int, dim: int, integral: bool) -> None:
    rng = np.random.default_rng(seed)
    if integral:  # small integers: every sum is exact in float32, whatever the order
        codewords = rng.integers(-3, 4, (ncw, dim)).astype(np.float32)
        queries = rng.integers(-3, 4, (nq, dim)).astype(np.float32)
    else:
        codewords = rng.standard_normal((ncw, dim)).astype(np.float32)
        queries = rng.standard_normal((nq, dim)).astype(np.float32)
    got = additive.codeword_dots(codewords, queries)
    want = additive.codeword_dots_numpy(codewords, queries)
    assert got.shape == (nq, ncw) and got.dtype == np.float32
    if integral:
        np.testing.assert_array_equal(got, want)
    else:
        scale = np.abs(queries).sum(1)[:, None] * np.abs(codewords).max(initial=0.0)
        assert (np.abs(got - want) <= 1e-5 * (scale + 1)).all()


# ---- the encoder ------------------------------------------------------------------------------------
def _exhaustive(x: np.ndarray, books: np.ndarray) -> np.ndarray:
    """Every combination of codes -> the best (n,) error."""
    best = np.full(x.shape[0], np.inf)
    for combo in itertools.product(*(range(b.shape[0]) for b in books)):
        recon = sum(books[m][c] for m, c in enumerate(combo))
        best = np.minimum(best, ((x - recon) ** 2).sum(1))
    return best


def test_full_beam_finds_the_best_code_and_a_wider_beam_never_hurts() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 6)).astype(np.float32)
    books = rng.standard_normal((3, 5, 6)).astype(np.float32)
    errors = {}
    for beam in (1, 2, 5, 25):
        codes, residual = beam_encode(x, books, beam)
        np.testing.assert_allclose(residual, x - decode_codes(codes, books), rtol=1e-5, atol=1e-5)
        errors[beam] = (residual.astype(np.float64) ** 2).sum(1)
    # a beam as wide as every partial code (5 * 5) keeps the exhaustive optimum
    np.testing.assert_allclose(errors[25], _exhaustive(x, books), rtol=1e-4, atol=1e-5)
    assert errors[25].sum() <= errors[5].sum() <= errors[2].sum() + 1e-4 and errors[2].sum() <= errors[1].sum() + 1e-4
    assert errors[1].sum() > errors[25].sum()  # greedy is not optimal here: the beam matters


def test_refine_round_never_increases_the_error() -> None:
    x = low_rank_table(800, 16, seed=2)
    rng = np.random.default_rng(0)
    books = x[rng.choice(800, 3 * 16, replace=False)].reshape(3, 16, 16) / 3
    codes, residual = beam_encode(x, books, 2)
    before = float((residual.astype(np.float64) ** 2).sum())
    refine_codebooks(books, codes, residual)
    np.testing.assert_allclose(residual, x - decode_codes(codes, books), rtol=1e-4, atol=1e-4)
    assert float((residual.astype(np.float64) ** 2).sum()) < before * 0.99


def test_training_rows_hold_out_rows_outside_the_sample_only_when_there_are_some() -> None:
    picked, held = training_rows(50_000, 4096, np.random.default_rng(3))
    assert picked.size == 4096 and held.size == 2048 and not np.intersect1d(picked, held).size
    assert (np.diff(picked) > 0).all() and (np.diff(held) > 0).all() and held.max() < 50_000
    assert training_rows(5000, 4900, np.random.default_rng(3))[1].size == 100  # all the rest
    every, none = training_rows(300, 300, np.random.default_rng(3))
    assert every.tolist() == list(range(300)) and none.size == 0


def test_refinement_judged_by_held_out_rows_never_loses_on_them() -> None:
    # 8 codebooks of 16 codewords in 16 dims fitted on 200 rows: least squares can fit the sample
    # at the expense of other rows; a validated round is kept only when those gain
    x = low_rank_table(2200, 16, seed=9)
    sample, held = x[:200], x[200:]
    greedy, _ = train_codebooks(sample, 8, 16, 2, 3, 0, np.random.default_rng(1))
    judged, codes = train_codebooks(sample, 8, 16, 2, 3, 3, np.random.default_rng(1), validation=held)
    free, _ = train_codebooks(sample, 8, 16, 2, 3, 3, np.random.default_rng(1))
    assert squared_error(held, free, 2) > squared_error(held, greedy, 2)  # unjudged rounds overfit here
    np.testing.assert_array_equal(judged, greedy)  # so the first round is undone
    # the codes returned are the sample's codes under the codebooks returned
    np.testing.assert_array_equal(codes, beam_encode(sample, judged, 2)[0])


def test_more_codebooks_and_beam_lower_the_error() -> None:
    x = low_rank_table(2000, 32, seed=4)

    def error(**options: Any) -> float:
        t = runtime.compress(x, "rq", bits=4, iterations=6, **options)
        return float(np.mean(((t.lookup(np.arange(2000)) - x) ** 2).sum(1)))

    assert error(codebooks=8, beam=1) < error(codebooks=4, beam=1) * 0.9
    assert error(codebooks=8, beam=8) < error(codebooks=8, beam=1)


@pytest.mark.parametrize("progressive", [False, True])
def test_kmeans_converges_to_a_lloyd_fixed_point(progressive: bool) -> None:
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((8, 12)).astype(np.float32) * 20
    points = (centers[np.repeat(np.arange(8), 50)] + rng.standard_normal((400, 12))).astype(np.float32)
    fit = progressive_kmeans if progressive else kmeans
    found = fit(points, 8, 40, np.random.default_rng(0))
    assert found.shape == (8, 12) and found.dtype == np.float32
    assign, dist = nearest(points, found)
    np.testing.assert_allclose(dist, ((points - found[assign]) ** 2).sum(1), rtol=1e-3, atol=1e-2)
    # converged: every codeword is the mean of the points it serves
    for c in np.unique(assign):
        np.testing.assert_allclose(found[c], points[assign == c].mean(0), rtol=1e-4, atol=1e-4)
    seeds = fit(points, 8, 0, np.random.default_rng(0))
    assert dist.sum() < nearest(points, seeds)[1].sum()


def test_norm_levels_span_the_range() -> None:
    levels = quantize_norms(np.array([1.0, 3.0, 2.0, 0.0, 9.0]), np.array([1.0, 3.0], np.float32))
    assert levels.tolist() == [0, 255, 128, 0, 255]
    assert quantize_norms(np.array([2.0]), np.array([2.0, 2.0], np.float32)).tolist() == [0]


# ---- search by stored id through the LISA tables --------------------------------------------------------
@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return low_rank_table(1500, 24, seed=9)


@pytest.fixture(scope="module", params=[(6, 8), (8, 4)], ids=["8bit", "4bit"])
def rq(request: pytest.FixtureRequest, x: np.ndarray) -> runtime.Table:
    m, bits = request.param
    return runtime.compress(x, "rq", codebooks=m, bits=bits, iterations=4, beam=3, seed=1)


@given(st.data())
def test_search_by_id_through_cross_tables_is_decode_then_dot(rq: runtime.Table, data: st.DataObject) -> None:
    codec = rq.primary
    assert isinstance(codec, RqCodec)
    assert codec.has_cross_tables
    qids = np.array(data.draw(st.lists(st.integers(0, rq.rows - 1), min_size=1, max_size=4)), np.int64)
    k = data.draw(st.integers(1, 40))
    decoded = rq.lookup(np.arange(rq.rows))
    exact = decoded[qids] @ decoded.T
    ids, scores = rq.search_by_id(qids, k, metric="ip", exclude_self=False)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), rtol=1e-5, atol=2e-5)
    # the same ranking: every kept row's exact score is at least the best left-out one's
    for row in range(qids.size):
        left_out = np.setdiff1d(np.arange(rq.rows), ids[row])
        if left_out.size:
            assert exact[row, ids[row]].min() >= exact[row, left_out].max() - 2e-5
    # id-against-id scoring is the same sums
    cands = np.array(data.draw(st.lists(st.integers(0, rq.rows - 1), min_size=1, max_size=6)), np.int64)
    cands = np.broadcast_to(cands, (qids.size, cands.size))
    got = rq.score(cands, query_ids=qids, metric="ip")
    np.testing.assert_allclose(got, np.take_along_axis(exact, cands, axis=1), rtol=1e-5, atol=2e-5)


def test_l2_by_id_uses_the_exact_query_norm_and_the_stored_row_norms(rq: runtime.Table) -> None:
    codec = rq.primary
    assert isinstance(codec, RqCodec)
    decoded = rq.lookup(np.arange(rq.rows))
    qids = np.array([0, 7, 1499])
    ids, scores = rq.search_by_id(qids, 15, metric="l2")
    levels = codec.packed_codes(np.arange(rq.rows))[:, -1]
    lo, hi = codec.arrays["norm_range"]
    stored = lo + levels * ((hi - lo) / 255)
    want = (decoded[qids] ** 2).sum(1)[:, None] + stored[None, :] - 2 * decoded[qids] @ decoded.T
    np.testing.assert_allclose(scores, np.maximum(np.take_along_axis(want, ids, axis=1), 0), rtol=1e-4, atol=1e-3)
    # stored norms are within half a level of the reconstruction's
    assert np.abs(stored - (decoded**2).sum(1)).max() <= (hi - lo) / 255 / 2 * 1.001 + 1e-4


def test_tables_beyond_the_limit_fall_back_to_decoding(rq: runtime.Table) -> None:
    codec = rq.primary
    size = codec.derived["cross_tables"].nbytes
    assert size == codec.params["codebooks"] ** 2 * (1 << codec.params["bits"]) ** 2 * 4
    assert isinstance(codec, RqCodec)
    state = TrainedState(codec.name, {**codec.params, "table_limit": size - 1}, codec.state.arrays)
    small = RqCodec.from_parts(state, {"codes": codec.arrays["codes"]}, codec.dim)
    assert isinstance(small, RqCodec) and not small.has_cross_tables
    assert small.nbytes == codec.nbytes - size
    qids = np.array([3, 4])
    for metric in ("ip", "l2"):
        a_ids, a_scores = codec.search_by_id(qids, 10, metric)
        b_ids, b_scores = small.search_by_id(qids, 10, metric)
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-4)
        assert (a_ids == b_ids).mean() > 0.9  # equal up to float ties


def test_nbytes_counts_codes_norm_byte_and_tables(rq: runtime.Table) -> None:
    codec = rq.primary
    m, bits = codec.params["codebooks"], codec.params["bits"]
    per_row = m + 1 if bits == 8 else (m + 2) // 2
    tables = m * m * (1 << bits) ** 2 * 4
    books = codec.arrays["codebooks"].nbytes
    assert codec.nbytes == rq.rows * per_row + books + tables + 8 + codec.derived["norm_luts"].nbytes + (
        codec.derived["blocked_codes"].nbytes - rq.rows * per_row if "blocked_codes" in codec.derived else 0
    )


def test_tiers_rerank_save_and_load(tmp_path, x: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    tiers = [
        {"rows": slice(0, 300), "codec": "int8"},
        {"rows": slice(300, 1500), "codec": "rq", "codebooks": 4, "iterations": 3, "rerank": "int8", "dim": 16},
    ]
    t = runtime.compress(x, tiers=tiers, seed=2)
    t.save(tmp_path / "t")
    back = runtime.load_table(tmp_path / "t")
    q = x[:3] + 0.01
    for metric in ("ip", "l2"):
        np.testing.assert_array_equal(back.search(q, 10, metric=metric)[0], t.search(q, 10, metric=metric)[0])
        ids, scores = back.search_by_id(np.array([5, 900]), 5, metric=metric)
        np.testing.assert_allclose(back.score(ids, query_ids=np.array([5, 900]), metric=metric), scores, rtol=1e-4)
    np.testing.assert_array_equal(back.lookup(np.arange(1500)), t.lookup(np.arange(1500)))


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"codebooks": 0}, "codebooks"),
        ({"codebooks": -3}, "codebooks"),
        ({"codebooks": 2.5}, "codebooks"),
        ({"bits": 6}, "bits"),
        ({"bits": 16}, "bits"),
        ({"beam": 0}, "beam"),
        ({"beam": True}, "beam"),
        ({"table_limit": "lots"}, "table_limit"),
        ({"table_limit": -1}, "table_limit"),
        ({"table_limit": "64 parsecs"}, "table_limit"),
        ({"iterations": -1}, "iterations"),
        ({"bits": 4, "codebooks": 3}, "codebooks"),
        ({"beams": 2}, "beams"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        runtime.compress(low_rank_table(400, 8), "rq", **options)


def test_too_few_rows_for_the_codewords_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match=r"256 codewords.*at least 256 rows.*got 100"):
        runtime.compress(low_rank_table(100, 8), "rq")
    with pytest.raises(InvalidRequest, match="train_rows=10"):
        runtime.compress(low_rank_table(100, 8), "rq", bits=4, train_rows=10)
    assert runtime.compress(low_rank_table(16, 8), "rq", bits=4, codebooks=2).rows == 16
