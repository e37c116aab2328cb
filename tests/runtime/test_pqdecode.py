"""PQ rows and bags reconstructed straight from the codes, against their numpy twins (bit for bit)
and, through the codec, against decoding and then pooling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.codecs.pq import PqCodec
from runtime.kernels import dense, pqdecode
from tests.conftest import low_rank_table


@st.composite
def pq_bag_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    four_bit = draw(st.booleans())
    n_sub = 2 * draw(st.integers(1, 4))
    sub = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16]))  # every width with a loop of its own, and others
    ksub = 16 if four_bit else draw(st.sampled_from([2, 16, 256]))
    n = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    codebooks = rng.standard_normal((n_sub, ksub, sub)).astype(np.float32)
    unpacked = rng.integers(0, ksub, (n, n_sub))
    codes = (unpacked[:, 0::2] | (unpacked[:, 1::2] << 4)) if four_bit else unpacked
    t = draw(st.integers(0, 40))
    ids = rng.integers(0, n, t).astype(np.int64)
    nbags = draw(st.integers(0, 6)) if t else 0
    cuts = sorted(draw(st.lists(st.integers(0, t), min_size=max(nbags - 1, 0), max_size=max(nbags - 1, 0))))
    offsets = np.array([0, *cuts] if nbags else [], dtype=np.int64)
    return codes.astype(np.uint8), ids, offsets, codebooks, four_bit


@given(pq_bag_cases(), st.booleans(), st.integers(1, 8))
def test_bags_and_rows_match_their_twins_exactly(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool], mean: bool, nchunks: int
) -> None:
    codes, ids, offsets, codebooks, four_bit = case
    want = pqdecode.bags_numpy(codes, ids, offsets, codebooks, four_bit, mean)
    assert want.shape == (offsets.shape[0], codebooks.shape[0] * codebooks.shape[2])
    np.testing.assert_array_equal(pqdecode.bags_serial(codes, ids, offsets, codebooks, four_bit, mean), want)
    if offsets.shape[0]:  # more chunks than bags leaves some tasks empty
        np.testing.assert_array_equal(
            pqdecode.bags_chunked(codes, ids, offsets, codebooks, four_bit, mean, nchunks), want
        )
    np.testing.assert_array_equal(pqdecode.bags(codes, ids, offsets, codebooks, four_bit, mean, min_ids=0), want)
    rows = pqdecode.rows(codes, ids, codebooks, four_bit, min_ids=0)
    np.testing.assert_array_equal(rows, pqdecode.rows_numpy(codes, ids, codebooks, four_bit))
    assert rows.shape == (ids.shape[0], codebooks.shape[0] * codebooks.shape[2]) and rows.dtype == np.float32


def test_a_single_id_is_its_codewords_side_by_side() -> None:
    codebooks = np.arange(2 * 16 * 2, dtype=np.float32).reshape(2, 16, 2)
    codes = np.array([[3 | (5 << 4)]], np.uint8)  # subspace 0: code 3, subspace 1: code 5
    got = pqdecode.rows(codes, np.array([0], np.int64), codebooks, True)
    assert got.tolist() == [[*codebooks[0, 3].tolist(), *codebooks[1, 5].tolist()]]
    empty = pqdecode.bags(codes, np.zeros(0, np.int64), np.zeros(0, np.int64), codebooks, True, True)
    assert empty.shape == (0, 4)


@pytest.mark.parametrize(
    "options",
    [
        {"subspaces": 8, "bits": 8},
        {"subspaces": 8, "bits": 4},
        {"subspaces": 4, "bits": 8, "opq": True},
    ],
    ids=["8-bit", "4-bit", "opq"],
)
def test_pq_codec_bags_equal_decode_then_pool(options: dict[str, Any]) -> None:
    x = low_rank_table(600, 16, seed=4)
    table = runtime.compress(x, "pq", seed=0, iterations=2, **options)
    codec = table.primary
    assert isinstance(codec, PqCodec)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 600, 700).astype(np.int64)
    offsets = np.array([0, 0, 3, 100, 650], np.int64)  # an empty bag, a short one, long ones
    for mean in (False, True):
        want = dense.pool(codec.decode(ids), offsets, mean)
        np.testing.assert_allclose(codec.decode_bags(ids, offsets, mean), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            table.lookup_pooled(ids, offsets, "mean" if mean else "sum"), want, rtol=1e-5, atol=1e-5
        )
    # decode is the codewords concatenated (then rotated back, with opq)
    unpacked = codec.unpacked_codes(ids[:5])
    books = codec.arrays["codebooks"]
    expected = books[np.arange(books.shape[0])[None, :], unpacked].reshape(5, -1)
    if "rotation" in codec.arrays:
        expected = expected @ codec.arrays["rotation"].T
    np.testing.assert_allclose(codec.decode(ids[:5]), expected, rtol=1e-5, atol=1e-5)


@given(
    st.integers(0, 3),
    st.sampled_from([(1, 1, 1), (1, 16, 4), (4, 16, 2), (3, 7, 5), (16, 256, 8)]),
    st.integers(0, 2**31),
)
def test_subspace_dots_match_twin(nq: int, shape: tuple[int, int, int], seed: int) -> None:
    nsub, ksub, width = shape
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal(shape).astype(np.float32)
    queries = (rng.standard_normal((nq, nsub * width)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
    got = pqdecode.subspace_dots(queries, codebooks)
    assert got.shape == (nq, nsub, ksub) and got.dtype == np.float32
    np.testing.assert_array_equal(got, pqdecode.subspace_dots_numpy(queries, codebooks))
    want = np.einsum("qms,mks->qmk", queries.reshape(nq, nsub, width).astype(np.float64), codebooks.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(queries).max(initial=0))))
