"""The fused scan over int8 / int4 / int2 / fp16 / float32 rows against its numpy twin and the
codecs' decode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.kernels import rowscan, rowwise, topk


def _stored(rng: np.random.Generator, n: int, dim: int, bits: int, exact: bool) -> np.ndarray:
    """Rows as a codec stores them. exact: small integer codes, scale 1 and integer bias, so every
    dot product with an integer query is exact in float32 and ties are real ties."""
    if bits >= 16:
        values = rng.integers(-3, 4, (n, dim)) if exact else rng.standard_normal((n, dim))
        return values.astype(np.float16).view(np.uint16) if bits == 16 else values.astype(np.float32).view(np.uint32)
    if not exact:
        return rowwise.quantize_numpy(rng.standard_normal((n, dim)).astype(np.float32), bits)
    width = rowwise.packed_bytes(dim, bits)
    rows = np.zeros((n, width + 4), dtype=np.uint8)
    codes = rng.integers(0, 3, (n, width * (8 // bits))).astype(np.uint8)
    codes[:, dim:] = 0
    for s in range(8 // bits):
        rows[:, :width] |= (codes[:, s :: 8 // bits] << (s * bits)).astype(np.uint8)
    rows[:, width : width + 2] = np.full((n, 1), 1.0, np.float16).view(np.uint8)
    rows[:, width + 2 :] = rng.integers(-2, 3, (n, 1)).astype(np.float16).view(np.uint8)
    return rows


@st.composite
def scans(draw: st.DrawFn) -> tuple[np.ndarray, int, np.ndarray, int, int, bool, bool]:
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    bits = draw(st.sampled_from([8, 4, 2, 16, 32]))
    dim = draw(st.integers(1, 40))
    # past a few blocks of SCAN_BLOCK_ROWS, so chunks of up to 5 hold block edges
    n = draw(st.integers(0, 2 * rowscan.SCAN_BLOCK_ROWS + 600))
    # from TILED_MIN_QUERIES (4) on the tiled scan runs, padded to a multiple of 4 queries
    nq = draw(st.integers(0, 9))
    exact = draw(st.booleans())
    rows = _stored(rng, n, dim, bits, exact)
    queries = (rng.integers(-2, 3, (nq, dim)) if exact else rng.standard_normal((nq, dim))).astype(np.float32)
    k = draw(st.integers(1, 720))
    return rows, bits, queries, k, draw(st.integers(1, 5)), draw(st.booleans()), exact


@given(scans())
def test_quantized_topk_matches_twin(case: tuple[np.ndarray, int, np.ndarray, int, int, bool, bool]) -> None:
    rows, bits, queries, k, nchunks, l2, exact = case
    dim = queries.shape[1]
    keys, ids = rowscan.quantized_topk(rows, bits, queries, l2, k, nchunks)
    want = rowscan.quantized_keys_numpy(rows, bits, queries, dim, l2)
    want_keys, want_ids = topk.topk_numpy(want, k)
    assert keys.shape == ids.shape and keys.shape[0] == queries.shape[0]
    if not queries.shape[0]:  # no queries: (0, 0), as the other scans return
        return
    assert keys.shape[1] == min(k, rows.shape[0])
    if exact:  # exact sums: the same ids in the same order, ties broken by the lower id
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(keys, want_keys)
        return
    np.testing.assert_allclose(keys, want_keys, rtol=1e-4, atol=1e-4)
    for qi in range(queries.shape[0]):
        assert len(set(ids[qi].tolist())) == ids.shape[1]
        # each returned key is the row's own key, up to float32 rounding
        np.testing.assert_allclose(keys[qi], want[qi, ids[qi]], rtol=1e-4, atol=1e-4)


def test_scan_blocks_of_wide_rows_fit_their_byte_budget() -> None:
    assert rowscan.scan_block_rows(256) == rowscan.SCAN_BLOCK_ROWS
    assert rowscan.scan_block_rows(4200) * 4200 <= rowscan.SCAN_BLOCK_BYTES
    assert rowscan.scan_block_rows(10**9) == 16


@pytest.mark.parametrize("bits", [8, 4, 2, 16, 32])
@pytest.mark.parametrize("nq", [2, 5])
def test_wide_rows_scan_across_their_smaller_blocks(bits: int, nq: int) -> None:
    # 2,100 dims: 62 fp16 rows (or 124 int8 rows) a block one query at a time, 28 int4 rows a block
    # of the tiled scan (nq = 5), so 300 rows cross several block edges
    rng = np.random.default_rng(5)
    rows = _stored(rng, 300, 2100, bits, True)
    queries = rng.integers(-2, 3, (nq, 2100)).astype(np.float32)
    for l2 in (False, True):
        keys, ids = rowscan.quantized_topk(rows, bits, queries, l2, 40, 2)
        want_keys, want_ids = topk.topk_numpy(rowscan.quantized_keys_numpy(rows, bits, queries, 2100, l2), 40)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(keys, want_keys)


@pytest.mark.parametrize("bits", [8, 4, 2, 16, 32])
def test_tiled_scan_matches_one_query_at_a_time_at_tile_and_block_edges(bits: int) -> None:
    # exact sums, so the tiled scan (4+ queries) and the scan of each query alone agree bit for bit:
    # row counts around a tile of 4 and a block of 256, query counts around a tile, an odd d (int4's
    # padding nibble), k past n, and rows whose keys tie
    rng = np.random.default_rng(9)
    for n in (1, 3, 4, 5, 255, 256, 257, 517):
        rows = _stored(rng, n, 7, bits, True)
        if bits == 4:  # d = 7: the last byte's high nibble is padding, and must not count
            rows[:, 3] |= 0xF0
        if bits == 2:  # d = 7: the last byte's top two bits are padding
            rows[:, 1] |= 0xC0
        for nq in (4, 5, 8):
            queries = rng.integers(-2, 3, (nq, 7)).astype(np.float32)
            for l2 in (False, True):
                for nchunks in (1, 3):
                    keys, ids = rowscan.quantized_topk(rows, bits, queries, l2, 300, nchunks)
                    for qi in range(nq):
                        alone_keys, alone_ids = rowscan.quantized_topk(rows, bits, queries[qi : qi + 1], l2, 300, 1)
                        np.testing.assert_array_equal(ids[qi], alone_ids[0])
                        np.testing.assert_array_equal(keys[qi], alone_keys[0])


def test_tiled_fp16_keys_are_the_dot_products_alone() -> None:
    # fp16 rows have no bias term: a query sum that overflows float32 must not reach the keys
    # (0 * inf would make every key NaN, and no row would enter the heaps)
    rows = np.full((8, 4), 0.001, np.float16).view(np.uint16)
    queries = np.full((4, 4), 3e38, np.float32)
    keys, ids = rowscan.quantized_topk(rows, 16, queries, False, 3, 1)
    alone_keys, alone_ids = rowscan.quantized_topk(rows, 16, queries[:1], False, 3, 1)
    assert keys.shape == (4, 3)
    np.testing.assert_array_equal(ids, np.repeat(alone_ids, 4, axis=0))
    np.testing.assert_allclose(keys, np.repeat(alone_keys, 4, axis=0), rtol=1e-6)  # summed in another order


@given(st.integers(0, 2**31), st.sampled_from([8, 4, 2, 16, 32]), st.integers(0, 50), st.integers(1, 20))
def test_decoded_norms_match_twin(seed: int, bits: int, n: int, dim: int) -> None:
    rows = _stored(np.random.default_rng(seed), n, dim, bits, False)
    got = np.array([rowscan.decoded_norm(rows, bits, dim, r) for r in range(n)], dtype=np.float32)
    np.testing.assert_allclose(got, rowscan.decoded_norms_numpy(rows, bits, dim), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("codec", ["int8", "int4", "int2", "fp16", "fp32"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_codec_search_agrees_with_decoded_rows(codec: str, metric: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    table = runtime.compress(x, codec)
    queries = rng.standard_normal((5, 24)).astype(np.float32)
    ids, scores = table.search(queries, 20, metric=metric)
    decoded = table.lookup(np.arange(3000))
    if metric == "ip":
        full = queries @ decoded.T
        order = np.argsort(-full, axis=1, kind="stable")[:, :20]
    else:
        full = ((queries[:, None, :] - decoded[None]) ** 2).sum(-1)
        order = np.argsort(full, axis=1, kind="stable")[:, :20]
    np.testing.assert_allclose(scores, np.take_along_axis(full, order, axis=1), rtol=1e-3, atol=1e-3)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids.tolist(), order.tolist(), strict=True)])
    assert overlap >= 0.95


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "int2"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_equal_rows_tie_by_the_lower_id_in_any_batch(codec: str, metric: str) -> None:
    # a matrix product per block (fp32 and int2 scanned so before) scored two equal rows apart in
    # the last bits, by the number of queries and the rows' places in the block; every row of one
    # scan is summed alike, so equal rows score equal and the lower id comes first
    for n in (5, 49, 2003):
        x = np.random.default_rng(n).standard_normal((n, 48)).astype(np.float32)
        x[n - 1] = x[0]
        table = runtime.compress(x, codec)
        twins = table.lookup(np.array([0, n - 1]))
        np.testing.assert_array_equal(twins[0], twins[1])
        for nq in (1, 2, 3, 4, 7):
            queries = np.repeat(twins[:1], nq, axis=0)
            ids, scores = table.search(queries, 2, metric=metric)
            assert ids.tolist() == [[0, n - 1]] * nq, (n, nq, ids)
            assert (scores[:, 0] == scores[:, 1]).all()
