"""The 4-bit fast-scan kernel against its numpy twins and against the float ADC scan it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.kernels import fastscan, scan, topk
from tests.runtime.lut_cases import assert_quantized_sums_within_slack, draw_luts

needs_avx2 = pytest.mark.skipif(not fastscan.AVAILABLE, reason="the shuffle kernel needs AVX2 (CPU and numba target)")


@st.composite
def four_bit_tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> row-major packed codes (n, M/2) uint8, unpacked codes (n, M) int64, luts (q, M, 16) float32."""
    m = draw(st.sampled_from([2, 4, 6, 16, 32]))
    n = draw(st.integers(0, 200))
    nq = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    unpacked = rng.integers(0, 16, (n, m))
    codes = np.ascontiguousarray((unpacked[:, 0::2] | (unpacked[:, 1::2] << 4)).astype(np.uint8))
    luts = draw_luts(draw, rng, nq, m, 16)
    return codes, unpacked, luts


@given(four_bit_tables())
def test_blocked_layout_round_trips(case) -> None:  # type: ignore[no-untyped-def]
    codes, _, _ = case
    blocked = fastscan.blocked_layout(codes)
    assert blocked.shape == (-(-codes.shape[0] // 32), codes.shape[1], 32) and blocked.flags.c_contiguous
    ids = np.arange(codes.shape[0], dtype=np.int64)
    np.testing.assert_array_equal(fastscan.row_codes(blocked, ids), codes)
    np.testing.assert_array_equal(fastscan.row_codes(blocked, ids[::-1]), codes[::-1])


@given(four_bit_tables())
def test_quantized_sums_stay_within_the_slack(case) -> None:  # type: ignore[no-untyped-def]
    codes, unpacked, luts = case
    tables = fastscan.quantize_luts(luts)[0]
    assert tables.dtype == np.uint8 and tables.shape == (luts.shape[0], luts.shape[1], 32)
    np.testing.assert_array_equal(tables[:, :, :16], tables[:, :, 16:])
    assert_quantized_sums_within_slack(unpacked, luts, scan.adc_sums_numpy(codes, luts, True))


@given(four_bit_tables())
def test_quantize_luts_matches_its_twin(case) -> None:  # type: ignore[no-untyped-def]
    luts = case[2]
    for got, want in zip(fastscan.quantize_luts(luts), fastscan.quantize_luts_numpy(luts), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_quantize_luts_of_constant_and_empty_tables() -> None:
    for luts in (np.zeros((2, 3, 16), np.float32), np.zeros((1, 0, 16), np.float32), np.zeros((0, 4, 16), np.float32)):
        for got, want in zip(fastscan.quantize_luts(luts), fastscan.quantize_luts_numpy(luts), strict=True):
            np.testing.assert_array_equal(got, want)


@given(st.integers(0, 3), st.integers(0, 13), st.integers(0, 2**31))
def test_quad_tables_matches_its_twin(nq: int, m: int, seed: int) -> None:
    # subspace counts that are and are not multiples of four: a last odd pair's rows stay put
    tables = np.random.default_rng(seed).integers(0, 256, (nq, m, 32)).astype(np.uint8)
    got = fastscan.quad_tables(tables)
    np.testing.assert_array_equal(got, fastscan.quad_tables_numpy(tables))
    for g in range(m // 4):
        for slot, source in enumerate((0, 2, 1, 3)):
            np.testing.assert_array_equal(got[:, 4 * g + slot], tables[:, 4 * g + source])
    np.testing.assert_array_equal(got[:, m - m % 4 :], tables[:, m - m % 4 :])


@needs_avx2
@given(four_bit_tables())
def test_shuffle_kernel_matches_numpy(case) -> None:  # type: ignore[no-untyped-def]
    codes, _, luts = case
    blocked = fastscan.blocked_layout(codes)
    tables = fastscan.quantize_luts(luts)[0]
    for qi in range(luts.shape[0]):
        np.testing.assert_array_equal(
            fastscan.block_sums(blocked, tables[qi]), fastscan.block_sums_numpy(blocked, tables[qi])
        )


@needs_avx2
def test_shuffle_kernel_wraps_like_uint16_lanes() -> None:
    # 257 pairs of 255s overflow a uint16 lane: the twin must wrap exactly as the kernel does
    blocked = np.full((1, 257, 32), 0xFF, dtype=np.uint8)
    tables = np.full((514, 32), 255, dtype=np.uint8)
    got = fastscan.block_sums(blocked, tables)
    np.testing.assert_array_equal(got, fastscan.block_sums_numpy(blocked, tables))
    assert int(got[0, 0]) == (514 * 255) & 0xFFFF


@needs_avx2
@given(four_bit_tables(), st.integers(1, 320), st.integers(1, 6))
def test_fastscan_topk_is_the_float_scan(case, k: int, nchunks: int) -> None:  # type: ignore[no-untyped-def]
    codes, _, luts = case
    n = codes.shape[0]
    if n == 0:
        return
    keys, ids = fastscan.fastscan_topk(fastscan.blocked_layout(codes), luts, n, k, nchunks)
    want_keys, want_ids = topk.topk_numpy(scan.adc_sums_numpy(codes, luts, True), k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(keys, want_keys)
    empty = np.empty(0, np.float32)
    scalar_keys, scalar_ids = scan.adc_topk(codes, luts, empty, empty, k, nchunks, True)
    np.testing.assert_array_equal(ids, scalar_ids)
    np.testing.assert_array_equal(keys, scalar_keys)


@needs_avx2
def test_fastscan_topk_on_one_row_and_many_queries() -> None:
    codes = np.array([[0x21]], dtype=np.uint8)
    luts = np.random.default_rng(3).standard_normal((5, 2, 16)).astype(np.float32)
    keys, ids = fastscan.fastscan_topk(fastscan.blocked_layout(codes), luts, 1, 10, 4)
    assert ids.tolist() == [[0]] * 5
    np.testing.assert_array_equal(keys[:, 0], luts[:, 0, 1] + luts[:, 1, 2])


@needs_avx2
def test_loaded_four_bit_table_scans_the_blocked_layout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(5).standard_normal((1000, 16)).astype(np.float32)
    table = runtime.compress(x, "pq", subspaces=8, bits=4, iterations=4)
    loaded = runtime.load_table(table.save(tmp_path / "pq4"))
    codec = loaded.primary
    assert "blocked_codes" in codec.derived and "codes" not in codec.held_arrays()
    assert codec.nbytes == sum(a.nbytes for a in codec.held_arrays().values())
    np.testing.assert_array_equal(loaded.lookup(np.arange(1000)), table.lookup(np.arange(1000)))
    queries = x[:3] + 0.01
    for metric in ("ip", "l2"):
        got, want = loaded.search(queries, 50, metric), table.search(queries, 50, metric)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # the row-major pages were released, not lost: saving reads them back from the file
    again = runtime.load_table(loaded.save(tmp_path / "again"))
    np.testing.assert_array_equal(again.primary.arrays["codes"], table.primary.arrays["codes"])
