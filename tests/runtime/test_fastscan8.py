"""The 8-bit fast-scan kernel against its numpy twins and against the float ADC scan it replaces."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.kernels import fastscan, fastscan8, scan, topk
from tests.runtime.lut_cases import assert_quantized_sums_within_slack, draw_luts

needs_vbmi = pytest.mark.skipif(
    not fastscan8.AVAILABLE, reason="the permute kernel needs AVX-512 VBMI (CPU and numba target)"
)
EMPTY = np.empty(0, np.float32)


@st.composite
def eight_bit_tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """-> row-major codes (n, M) uint8 with M a width the kernel takes, luts (q, M, 256) float32."""
    m = draw(st.sampled_from(fastscan8.WIDTHS))
    n = draw(st.integers(0, 300))
    nq = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    codes = rng.integers(0, 256, (n, m)).astype(np.uint8)
    luts = draw_luts(draw, rng, nq, m, 256)
    return codes, luts


@pytest.mark.parametrize("width", fastscan8.WIDTHS)
def test_transpose_plan_is_a_transpose(width: int) -> None:
    block = np.random.default_rng(width).integers(0, 256, (64, width)).astype(np.uint8)
    np.testing.assert_array_equal(fastscan8.transpose_network_numpy(block), block.T)
    rounds, _ = fastscan8._transpose_network(width)
    assert len(rounds) == int(np.log2(width)) and all(len(ops) == width for ops in rounds)


def test_supported_widths() -> None:
    for width in (3, 12, 24, 48, 128):
        assert not fastscan8.supported(width)


@given(eight_bit_tables())
def test_quantized_256_entry_sums_stay_within_the_slack(case) -> None:  # type: ignore[no-untyped-def]
    codes, luts = case
    tables, bias, scale, slack = fastscan.quantize_luts(luts)
    assert tables.shape == (luts.shape[0], luts.shape[1], 512)
    for got, want in zip((tables, bias, scale, slack), fastscan.quantize_luts_numpy(luts), strict=True):
        np.testing.assert_array_equal(got, want)
    assert_quantized_sums_within_slack(codes.astype(np.int64), luts, scan.adc_sums_numpy(codes, luts, False))


@needs_vbmi
@given(eight_bit_tables())
def test_permute_kernel_matches_numpy(case) -> None:  # type: ignore[no-untyped-def]
    codes, luts = case
    tables = fastscan.quantize_luts(luts)[0]
    assert tables.shape[2] == 512
    for qi in range(luts.shape[0]):
        np.testing.assert_array_equal(
            fastscan8.block_sums(codes, tables[qi]), fastscan8.block_sums_numpy(codes, tables[qi])
        )


@needs_vbmi
def test_permute_kernel_keeps_neighbouring_rows_apart() -> None:
    # even and odd rows share a 16-bit lane until the end: the largest sums (64 subspaces of 255,
    # what quantize_luts gives at M = 64) next to other large ones, and the top quarter's last
    # entry next to the second quarter's last, must come apart exactly
    codes = np.full((65, 64), 0xFF, dtype=np.uint8)
    codes[1::2] = 0x7F
    tables = np.full((64, 256), 255, dtype=np.uint8)
    tables[:, 127] = 254
    doubled = np.ascontiguousarray(np.concatenate([tables, tables], axis=1))
    got = fastscan8.block_sums(codes, doubled)
    np.testing.assert_array_equal(got, fastscan8.block_sums_numpy(codes, doubled))
    assert got[0, 0::2].tolist() == [64 * 255] * 32 and got[0, 1::2].tolist() == [64 * 254] * 32
    assert got[1].tolist() == [64 * 255] * 64  # row 64, then padding rows reading code 0


@needs_vbmi
def test_kernels_refuse_codes_they_cannot_read() -> None:
    luts = np.zeros((1, 16, 256), np.float32)
    # the entry points' shared check, called alone: a strided array is another compile of the
    # whole kernel (26 s with a cold cache)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastscan8._check_codes(np.zeros((100, 32), np.uint8)[:, :16])
    fastscan8._check_codes(np.zeros((0, 32), np.uint8)[:, :16])  # no rows: nothing to read
    with pytest.raises(ValueError, match="width"):
        fastscan8.block_sums(np.zeros((100, 12), np.uint8), np.zeros((12, 512), np.uint8))
    with pytest.raises(ValueError, match="luts must be"):
        fastscan8.fastscan8_topk(np.zeros((100, 8), np.uint8), luts, 5, 1)


@needs_vbmi
@given(eight_bit_tables(), st.integers(1, 320), st.integers(1, 6))
def test_fastscan8_topk_is_the_float_scan(case, k: int, nchunks: int) -> None:  # type: ignore[no-untyped-def]
    codes, luts = case
    keys, ids = fastscan8.fastscan8_topk(codes, luts, k, nchunks)
    want_keys, want_ids = topk.topk_numpy(scan.adc_sums_numpy(codes, luts, False), k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(keys, want_keys)
    scalar_keys, scalar_ids = scan.adc_topk(codes, luts, EMPTY, EMPTY, k, nchunks, False)
    np.testing.assert_array_equal(ids, scalar_ids)
    np.testing.assert_array_equal(keys, scalar_keys)


@needs_vbmi
@pytest.mark.parametrize("n", [63, 64, 65, 128, 1025, 2049, 4097])
@pytest.mark.parametrize("width", [8, 16])
def test_fastscan8_topk_at_block_and_group_edges(n: int, width: int) -> None:
    # up to 65 blocks: whole and partial last blocks, several groups of 16, and the heap's bound
    # carried from group to group and chunk to chunk
    rng = np.random.default_rng(n + width)
    codes = rng.integers(0, 256, (n, width)).astype(np.uint8)
    luts = rng.standard_normal((2, width, 256)).astype(np.float32)
    for k, nchunks in ((1, 1), (100, 3), (n, 2)):
        keys, ids = fastscan8.fastscan8_topk(codes, luts, k, nchunks)
        want_keys, want_ids = scan.adc_topk(codes, luts, EMPTY, EMPTY, k, nchunks, False)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(keys, want_keys)


@needs_vbmi
def test_fastscan8_topk_on_one_row_and_many_queries() -> None:
    codes = np.array([[7, 200]], dtype=np.uint8)
    luts = np.random.default_rng(3).standard_normal((5, 2, 256)).astype(np.float32)
    keys, ids = fastscan8.fastscan8_topk(codes, luts, 10, 4)
    assert ids.tolist() == [[0]] * 5
    np.testing.assert_array_equal(keys[:, 0], luts[:, 0, 7] + luts[:, 1, 200])
    keys, ids = fastscan8.fastscan8_topk(codes[:0], luts, 10, 4)
    assert keys.shape == ids.shape == (5, 0)


@needs_vbmi
@pytest.mark.parametrize(("codec", "options"), [("pq", {"subspaces": 8}), ("rq", {"codebooks": 7})])
def test_eight_bit_tables_search_as_the_scalar_scan(monkeypatch, codec: str, options: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    # RQ codes carry a norm code after the M codebooks: 7 codebooks make rows of 8 bytes
    x = np.random.default_rng(5).standard_normal((3000, 16)).astype(np.float32)
    table = runtime.compress(x, codec, bits=8, iterations=2, **options)
    queries = x[:4] + 0.01
    calls: list[int] = []
    kernel = fastscan8.fastscan8_topk

    def counted(*args: Any) -> Any:
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(fastscan8, "fastscan8_topk", counted)
    fast = {metric: table.search(queries, 40, metric) for metric in ("ip", "l2")}
    by_id = table.search_by_id(np.array([3, 2999]), 40)
    assert len(calls) == 3
    monkeypatch.setattr(fastscan8, "supported", lambda width: False)
    for metric in ("ip", "l2"):
        ids, scores = table.search(queries, 40, metric)
        np.testing.assert_array_equal(fast[metric][0], ids)
        np.testing.assert_array_equal(fast[metric][1], scores)
    ids, scores = table.search_by_id(np.array([3, 2999]), 40)
    np.testing.assert_array_equal(by_id[0], ids)
    np.testing.assert_array_equal(by_id[1], scores)
