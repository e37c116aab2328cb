"""Weighted bags (EmbeddingBag per_sample_weights): the kernel against its twin, every codec and
table shape against decode-then-weight, torch.nn.EmbeddingBag on fp32, and the refusals."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.errors import InvalidRequest
from runtime.kernels import weighted
from tests.conftest import low_rank_table

N, D = 300, 16


@st.composite
def weighted_bags(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = draw(st.integers(0, 40))
    d = draw(st.integers(1, 9))
    nbags = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    decoded = rng.standard_normal((m, d)).astype(np.float32)
    weights = rng.standard_normal(m).astype(np.float32)
    if draw(st.booleans()):  # zero weights must zero their rows' share
        weights[rng.random(m) < 0.5] = 0
    cuts = sorted(draw(st.lists(st.integers(0, m), min_size=max(nbags - 1, 0), max_size=max(nbags - 1, 0))))
    offsets = np.array([0, *cuts] if nbags else [], dtype=np.int64)
    return decoded, weights, offsets


@given(weighted_bags())
def test_pool_weighted_matches_twin(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    decoded, weights, offsets = case
    got = weighted.pool_weighted(decoded, weights, offsets)
    want = weighted.pool_weighted_numpy(decoded, weights, offsets)
    assert got.shape == want.shape == (offsets.shape[0], decoded.shape[1]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pool_weighted_edges() -> None:
    rows = np.array([[1, 2], [3, 4]], np.float32)
    one = weighted.pool_weighted(rows[:1], np.array([2.5], np.float32), np.array([0], np.int64))
    assert one.tolist() == [[2.5, 5.0]]
    empty = weighted.pool_weighted(rows, np.array([1, -1], np.float32), np.array([0, 0, 2], np.int64))
    assert empty.tolist() == [[0, 0], [-2, -2], [0, 0]]
    zero = weighted.pool_weighted(rows, np.zeros(2, np.float32), np.array([0], np.int64))
    assert zero.tolist() == [[0, 0]]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return low_rank_table(N, D, seed=8)


def _reference(table: runtime.Table, ids: np.ndarray, offsets: np.ndarray, w: np.ndarray) -> np.ndarray:
    rows = table.lookup(ids)
    bounds = [*offsets.tolist(), ids.shape[0]]
    return np.stack([(rows[a:b] * w[a:b, None]).sum(0) for a, b in itertools.pairwise(bounds)])


CASE_IDS = np.array([1, 2, 3, 4, 4, 9, 299])
CASE_OFFSETS = np.array([0, 2, 2, 5])
CASE_WEIGHTS = np.array([0.5, -2, 0, 1, 3, 0.25, 7], np.float32)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "int4", "int2", "pq"])
def test_weighted_bags_on_every_codec(x: np.ndarray, codec: str) -> None:
    options: dict[str, Any] = {"subspaces": 4, "iterations": 3} if codec == "pq" else {}
    t = runtime.compress(x, codec, **options)
    got = t.lookup_pooled(CASE_IDS, CASE_OFFSETS, "sum", per_sample_weights=CASE_WEIGHTS)
    np.testing.assert_allclose(got, _reference(t, CASE_IDS, CASE_OFFSETS, CASE_WEIGHTS), rtol=1e-5, atol=1e-5)
    ones = t.lookup_pooled(CASE_IDS, CASE_OFFSETS, "sum", per_sample_weights=np.ones(7))
    np.testing.assert_allclose(ones, t.lookup_pooled(CASE_IDS, CASE_OFFSETS, "sum"), rtol=1e-5, atol=1e-5)


def test_weighted_bags_on_keyed_tiered_table_with_delta(x: np.ndarray) -> None:
    keys = np.arange(N, dtype=np.int64) * 1000 - 7
    hot = np.arange(0, N, 3)
    tiers = [{"rows": hot, "codec": "int8"}, {"rows": np.setdiff1d(np.arange(N), hot), "codec": "int4"}]
    t = runtime.compress(x, "int8", keys=keys, tiers=tiers)
    t.upsert([keys[4]], np.full((1, D), 2.0, np.float32))
    asked = keys[CASE_IDS]
    got = t.lookup_pooled(asked, CASE_OFFSETS, "sum", per_sample_weights=CASE_WEIGHTS)
    np.testing.assert_allclose(got, _reference(t, asked, CASE_OFFSETS, CASE_WEIGHTS), rtol=1e-5, atol=1e-5)
    # rows 4 (twice, weights 1 and 3) now read the upserted 2.0s
    np.testing.assert_allclose(got[2], np.full(D, 4 * 2.0), rtol=1e-5, atol=1e-5)


def test_matches_torch_embedding_bag_on_fp32(x: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    t = runtime.compress(x, "fp32")
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(x), mode="sum")
    want = bag(
        torch.from_numpy(CASE_IDS),
        torch.from_numpy(CASE_OFFSETS),
        per_sample_weights=torch.from_numpy(CASE_WEIGHTS),
    ).numpy()
    got = t.lookup_pooled(CASE_IDS, CASE_OFFSETS, "sum", per_sample_weights=CASE_WEIGHTS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weights_are_refused_when_wrong(x: np.ndarray) -> None:
    t = runtime.compress(x, "int8")
    with pytest.raises(InvalidRequest, match="only supported with mode"):
        t.lookup_pooled([1, 2], [0], "mean", per_sample_weights=[1, 1])
    with pytest.raises(InvalidRequest, match=r"one weight per id \(2\)"):
        t.lookup_pooled([1, 2], [0], "sum", per_sample_weights=[1])
    with pytest.raises(InvalidRequest, match=r"per_sample_weights\[1\] is NaN or Inf"):
        t.lookup_pooled([1, 2], [0], "sum", per_sample_weights=[1, np.nan])
    with pytest.raises(InvalidRequest, match=r"per_sample_weights\[0\] is NaN or Inf"):
        t.lookup_pooled([1, 2], [0], "sum", per_sample_weights=[np.inf, 1])
    with pytest.raises(InvalidRequest, match="must be numbers"):
        t.lookup_pooled([1, 2], [0], "sum", per_sample_weights=["a", "b"])
    with pytest.raises(InvalidRequest, match="beyond float32"):
        t.lookup_pooled([1, 2], [0], "sum", per_sample_weights=np.array([1e300, 1.0]))
    assert t.lookup_pooled([], [], "sum", per_sample_weights=[]).shape == (0, D)
