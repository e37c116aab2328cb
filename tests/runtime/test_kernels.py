"""Every numba kernel against its plain-numpy twin, on random, empty, single-row and tied input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.kernels import checks, dense, rowwise, scan, topk
from runtime.kernels.intrinsics import start_threading_layer
from runtime.kernels.rowwise import DEFAULT_PARALLEL_MIN_IDS


def gathered(rows: np.ndarray, ids: np.ndarray, dim: int, bits: int, nchunks: int = 1) -> np.ndarray:
    """rows ids dequantized by `nchunks` tasks of `rowwise._gather_chunks_into` (the parallel
    gather), or by `rowwise._gather_into` on this thread when nchunks is 1."""
    out = np.full((ids.size, dim), np.nan, np.float32)
    if nchunks == 1:
        rowwise._gather_into(rows, ids, 0, ids.size, dim, bits, out)
    else:
        rowwise._gather_chunks_into(rows, ids, dim, bits, nchunks, out)
    return out


def fp16_gathered(bits16: np.ndarray, ids: np.ndarray, nchunks: int = 1) -> np.ndarray:
    """`gathered` of fp16 rows (raw bits, (n, d) uint16)."""
    out = np.full((ids.size, bits16.shape[1]), np.nan, np.float32)
    if nchunks == 1:
        dense._fp16_gather_into(bits16, ids, 0, ids.size, out)
    else:
        dense._fp16_gather_chunks_into(bits16, ids, nchunks, out)
    return out


def _keys(draw: st.DrawFn, nq: int, n: int, ties: bool) -> np.ndarray:
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many ties that only the id can break
        return rng.integers(-3, 3, size=(nq, n)).astype(np.float32)
    return rng.standard_normal((nq, n)).astype(np.float32)


@st.composite
def key_blocks(draw: st.DrawFn) -> tuple[np.ndarray, int, list[int]]:
    nq = draw(st.integers(0, 4))
    n = draw(st.integers(0, 300))
    k = draw(st.integers(1, 320))
    keys = _keys(draw, nq, n, draw(st.booleans()))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return keys, k, cuts


@given(key_blocks())
def test_block_topk_matches_full_sort(case: tuple[np.ndarray, int, list[int]]) -> None:
    keys, k, cuts = case
    top = topk.BlockTopK(keys.shape[0], k)
    bounds = [0, *cuts, keys.shape[1]]
    for a, b in itertools.pairwise(bounds):
        top.push(keys[:, a:b], a)
    got_keys, got_ids = top.result()
    want_keys, want_ids = topk.topk_numpy(keys, k)
    if keys.shape[0]:
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_keys, want_keys)


@st.composite
def chunked_keys(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-chunk sorted heaps built from random keys, for merge_partials."""
    nq = draw(st.integers(1, 3))
    nchunks = draw(st.integers(1, 5))
    n = draw(st.integers(1, 200))
    k = draw(st.integers(1, 60))
    keys = _keys(draw, nq, n, draw(st.booleans()))
    size = -(-n // nchunks)
    kk = min(k, n)
    part_keys = np.zeros((nq, nchunks, kk), np.float32)
    part_ids = np.zeros((nq, nchunks, kk), np.int64)
    sizes = np.zeros((nq, nchunks), np.int64)
    for c in range(nchunks):
        a, b = min(n, c * size), min(n, (c + 1) * size)
        if b > a:
            ck, ci = topk.topk_numpy(keys[:, a:b], kk, a)
            part_keys[:, c, : ck.shape[1]] = ck
            part_ids[:, c, : ci.shape[1]] = ci
            sizes[:, c] = ck.shape[1]
    return keys, (part_keys, part_ids, sizes), k  # type: ignore[return-value]


@given(chunked_keys())
def test_merge_partials_matches_full_sort(case) -> None:  # type: ignore[no-untyped-def]
    keys, (part_keys, part_ids, sizes), k = case
    got_keys, got_ids = topk.merge_partials(part_keys, part_ids, sizes, k)
    want_keys, want_ids = topk.topk_numpy(keys, k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_keys, want_keys)


@st.composite
def quantized_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    bits = draw(st.sampled_from([8, 4, 2]))
    n = draw(st.integers(1, 50))
    dim = draw(st.integers(1, 37))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = (rng.standard_normal((n, dim)) * draw(st.sampled_from([1e-3, 1.0, 100.0]))).astype(np.float32)
    if draw(st.booleans()):
        x[0] = x[0, 0]  # a constant row: scale 0
    ids = rng.integers(0, n, size=draw(st.integers(0, 80))).astype(np.int64)
    return rowwise.quantize_numpy(x, bits), ids, dim, bits


@given(quantized_rows(), st.integers(1, 9))
def test_rowwise_gather_matches_numpy(case: tuple[np.ndarray, np.ndarray, int, int], nchunks: int) -> None:
    rows, ids, dim, bits = case  # more chunks than ids leaves some empty
    got = gathered(rows, ids, dim, bits, nchunks)
    np.testing.assert_allclose(got, rowwise.dequantize_numpy(rows, ids, dim, bits), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gathered(rows, ids, dim, bits), got)
    if ids.size:
        start, stop = int(ids.min()), int(ids.max()) + 1
        rng_ids = np.arange(start, stop, dtype=np.int64)
        np.testing.assert_array_equal(
            rowwise.gather_range(rows, start, stop, dim, bits),
            gathered(rows, rng_ids, dim, bits, 3),
        )


@given(quantized_rows(), st.data())
def test_checked_gathers_match_numpy(case: tuple[np.ndarray, np.ndarray, int, int], data: st.DataObject) -> None:
    start_threading_layer()  # as Codec.direct_gather does before the kernels' first call
    # the bounds are checked inside the gather: every row or, for an id outside [0, n), its
    # position and an untouched output (ids at both edges and one past them are drawn); a
    # min_ids at or below the batch's size takes the parallel tasks (with more than one thread)
    rows, ids, dim, bits = case
    n = rows.shape[0]
    if ids.size and data.draw(st.booleans()):
        ids = ids.copy()
        ids[data.draw(st.integers(0, ids.size - 1))] = data.draw(st.sampled_from([-1, n, n + 7, -(2**63), 2**63 - 1]))
    min_ids = data.draw(st.sampled_from([0, 1, 3, DEFAULT_PARALLEL_MIN_IDS]))
    want = checks.first_out_of_range_numpy(ids, n)
    out = np.full((ids.size, dim), 7.0, np.float32)
    assert rowwise.gather_checked_into(rows, dim, bits, min_ids, ids, out) == want
    if want < 0:
        np.testing.assert_array_equal(out, gathered(rows, ids, dim, bits))
    else:
        assert (out == 7.0).all()
    values = rowwise.dequantize_numpy(rows, np.arange(n), dim, bits).astype(np.float16)
    half_out = np.full((ids.size, dim), 7.0, np.float32)
    assert dense.fp16_gather_checked_into(values.view(np.uint16), min_ids, ids, half_out) == want
    if want < 0:
        np.testing.assert_array_equal(half_out, dense.fp16_gather_numpy(values, ids))
    else:
        assert (half_out == 7.0).all()


@given(quantized_rows(), st.integers(1, 9), st.data())
def test_rowwise_merged_gather_matches_numpy(
    case: tuple[np.ndarray, np.ndarray, int, int], nchunks: int, data: st.DataObject
) -> None:
    # a base and a delta of the same codec; each position reads the delta, the base or nothing
    base, ids, dim, bits = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    delta = rowwise.quantize_numpy(rng.standard_normal((data.draw(st.integers(1, 9)), dim)).astype(np.float32), bits)
    source = rng.integers(0, 3, ids.size)  # 0 base, 1 delta, 2 neither (missing or deleted)
    rows = np.where(source == 0, ids, -1).astype(np.int64)
    slots = np.where(source == 1, rng.integers(0, delta.shape[0], ids.size), rng.integers(-2, 0, ids.size))
    want = rowwise.gather_merged_numpy(base, delta, rows, slots, dim, bits)
    got = rowwise.gather_merged(base, delta, rows, slots, dim, bits, nchunks)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rowwise.gather_merged_serial(base, delta, rows, slots, dim, bits), got)
    assert not want[source == 2].any()


@given(quantized_rows(), st.data())
def test_rowwise_bags_match_numpy(case: tuple[np.ndarray, np.ndarray, int, int], data: st.DataObject) -> None:
    rows, ids, dim, bits = case
    offsets = np.array(sorted(data.draw(st.lists(st.integers(0, ids.size), max_size=6))), dtype=np.int64)
    if offsets.size:
        offsets[0] = 0
    mean = data.draw(st.booleans())
    got = rowwise.bags(rows, ids, offsets, dim, bits, mean)
    want = rowwise.bags_numpy(rowwise.dequantize_numpy(rows, ids, dim, bits), offsets, mean)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # the serial kernel and the chunked one (more chunks than bags leaves some empty) agree exactly
    serial = rowwise.bags_serial(rows, ids, offsets, dim, bits, mean)
    np.testing.assert_allclose(serial, want, rtol=1e-5, atol=1e-4)
    nchunks = data.draw(st.integers(1, 8))
    np.testing.assert_array_equal(rowwise.bags_chunked(rows, ids, offsets, dim, bits, mean, nchunks), serial)
    np.testing.assert_allclose(
        dense.pool(rowwise.dequantize_numpy(rows, ids, dim, bits), offsets, mean), want, rtol=1e-5, atol=1e-4
    )


@given(quantized_rows(), st.data())
def test_checked_bags_match_numpy(case: tuple[np.ndarray, np.ndarray, int, int], data: st.DataObject) -> None:
    start_threading_layer()  # as Codec.direct_bags does before the kernels' first call
    # ids and offsets are checked inside the one-call bag kernels: every bag pooled, or, for an id
    # outside [0, n) (its position) or broken offsets (0), an untouched output. Contiguous ids and
    # offsets only, the layout the tables bind them for (each other layout is a long compile)
    rows, ids, dim, bits = case
    n = rows.shape[0]
    offsets = np.array(sorted(data.draw(st.lists(st.integers(0, ids.size), max_size=6))), dtype=np.int64)
    if offsets.size:
        offsets[0] = 0
    if ids.size and data.draw(st.booleans()):
        ids = ids.copy()
        ids[data.draw(st.integers(0, ids.size - 1))] = data.draw(st.sampled_from([-1, n, n + 7, -(2**63), 2**63 - 1]))
    if offsets.size and data.draw(st.booleans()):
        offsets = offsets.copy()
        offsets[data.draw(st.integers(0, offsets.size - 1))] = data.draw(st.sampled_from([-1, 1, ids.size + 1]))
    mean = data.draw(st.booleans())
    min_ids = data.draw(st.sampled_from([0, 1, 3, DEFAULT_PARALLEL_MIN_IDS]))
    want = checks.first_out_of_range_numpy(ids, n)
    if want < 0 and checks.first_bad_offset_numpy(offsets, ids.size) >= 0:
        want = 0
    out = np.full((offsets.size, dim), 7.0, np.float32)
    assert rowwise.bags_checked_into(rows, dim, bits, min_ids, ids, offsets, mean, out) == want
    if want < 0:
        twin = rowwise.bags_numpy(rowwise.dequantize_numpy(rows, ids, dim, bits), offsets, mean)
        np.testing.assert_allclose(out, twin, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(out, rowwise.bags_serial(rows, ids, offsets, dim, bits, mean))
    else:
        assert (out == 7.0).all()
    values = rowwise.dequantize_numpy(rows, np.arange(n), dim, bits).astype(np.float16)
    half_out = np.full((offsets.size, dim), 7.0, np.float32)
    assert dense.fp16_bags_checked_into(values.view(np.uint16), min_ids, ids, offsets, mean, half_out) == want
    if want < 0:
        np.testing.assert_allclose(half_out, dense.fp16_bags_numpy(values, ids, offsets, mean), rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(half_out, dense.fp16_bags_serial(values.view(np.uint16), ids, offsets, mean))
    else:
        assert (half_out == 7.0).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_a_long_bag_is_as_exact_as_the_sum_of_its_decoded_rows(bits: int) -> None:
    # found by a review: the bag kernels summed scale * code and the biases apart over the whole
    # bag, two large sums that cancel, and a bag of 90,000 int8 rows was off by 4.7 (1 %) where
    # summing the decoded rows in float32 is off by 0.015
    rng = np.random.default_rng(4)
    rows = rowwise.quantize_numpy(rng.standard_normal((5000, 64)).astype(np.float32), bits)
    lengths = [30_000, rowwise.FOLD_ROWS, rowwise.FOLD_ROWS + 1, 2 * rowwise.FOLD_ROWS + 3, 1, 0]
    ids = rng.integers(0, 5000, sum(lengths)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    decoded = rowwise.dequantize_numpy(rows, ids, 64, bits)
    bounds = np.append(offsets, ids.size)
    parts = [decoded[bounds[b] : bounds[b + 1]] for b in range(len(lengths))]
    exact = np.stack([part.sum(axis=0, dtype=np.float64) for part in parts])
    # what a row-by-row float32 sum of the decoded rows gets (torch's EmbeddingBag on them, in effect)
    sequential = np.stack(
        [np.cumsum(part, axis=0, dtype=np.float32)[-1] if len(part) else part.sum(0) for part in parts]
    )
    allowed = 2 * np.abs(sequential - exact).max() + 1e-4
    for got in (
        rowwise.bags_serial(rows, ids, offsets, 64, bits, False),
        rowwise.bags(rows, ids, offsets, 64, bits, False),
    ):
        assert np.abs(got - exact).max() <= allowed, (np.abs(got - exact).max(), allowed)
    counts = np.maximum(np.array(lengths), 1)[:, None]
    mean = rowwise.bags_serial(rows, ids, offsets, 64, bits, True)
    assert np.abs(mean - exact / counts).max() <= allowed / rowwise.FOLD_ROWS


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([8, 4]),
    st.sampled_from([8, 15, 16, 17, 31, 32, 48, 63, 64, 72, 96, 127, 128, 130, 144, 200, 255, 256, 264, 384]),
    st.integers(0, 2**31),
)
def test_rowwise_bags_of_wide_rows_match_numpy(bits: int, dim: int, seed: int) -> None:
    # rows wide enough for every block the bag kernels sum in registers, and each narrower block
    # and the columns left over after them; bags from empty to longer than the prefetch distance
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, dim)).astype(np.float32) * np.float32(rng.choice([1e-3, 1.0, 100.0]))
    rows = rowwise.quantize_numpy(x, bits)
    ids = rng.integers(0, 40, int(rng.integers(0, 120))).astype(np.int64)
    cuts = np.sort(rng.integers(0, ids.size + 1, int(rng.integers(0, 6))))
    offsets = np.concatenate([[0], cuts]).astype(np.int64) if ids.size else cuts.astype(np.int64)
    mean = bool(rng.integers(0, 2))
    want = rowwise.bags_numpy(rowwise.dequantize_numpy(rows, ids, dim, bits), offsets, mean)
    serial = rowwise.bags_serial(rows, ids, offsets, dim, bits, mean)
    np.testing.assert_allclose(serial, want, rtol=1e-5, atol=1e-4 * float(np.abs(x).max() + 1))
    np.testing.assert_array_equal(rowwise.bags_chunked(rows, ids, offsets, dim, bits, mean, 3), serial)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([8, 4, 2]),
    st.sampled_from([8, 15, 16, 17, 31, 32, 48, 63, 64, 72, 96, 127, 128, 130, 144, 200, 255, 256, 264, 384]),
    st.integers(0, 2**31),
)
def test_rowwise_gather_of_wide_rows_matches_numpy(bits: int, dim: int, seed: int) -> None:
    # every block a row is decoded in, its halves and the columns left over; the serial and
    # parallel gathers and the checked one-call kernel decode each row to the same bits
    rng = np.random.default_rng(seed)
    rows = rowwise.quantize_numpy(rng.standard_normal((30, dim)).astype(np.float32), bits)
    ids = rng.integers(0, 30, int(rng.integers(0, 50))).astype(np.int64)
    want = rowwise.dequantize_numpy(rows, ids, dim, bits)
    serial = gathered(rows, ids, dim, bits)
    np.testing.assert_allclose(serial, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gathered(rows, ids, dim, bits, 3), serial)
    start_threading_layer()
    for min_ids in (0, DEFAULT_PARALLEL_MIN_IDS):  # parallel tasks, then the calling thread
        checked = np.empty((ids.size, dim), dtype=np.float32)
        assert rowwise.gather_checked_into(rows, dim, bits, min_ids, ids, checked) == -1
        np.testing.assert_array_equal(checked, serial)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [13, 64, 128, 200])
def test_rowwise_rows_of_any_layout_decode_and_pool_alike(bits: int, dim: int) -> None:
    # rows inside a wider buffer (numba types them as 'A' layout: the vector loads go through the
    # stride) and the same rows contiguous give the same bits
    rng = np.random.default_rng(dim)
    packed = rowwise.quantize_numpy(rng.standard_normal((50, dim)).astype(np.float32), bits)
    wide = np.zeros((50, packed.shape[1] + 12), dtype=np.uint8)
    wide[:, 5 : 5 + packed.shape[1]] = packed
    strided = wide[:, 5 : 5 + packed.shape[1]]
    spread = np.zeros((50, 2 * packed.shape[1]), dtype=np.uint8)
    spread[:, ::2] = packed
    every_other = spread[:, ::2]  # a byte's neighbour two bytes on
    assert not strided.flags.c_contiguous and not every_other.flags.c_contiguous
    ids = rng.integers(0, 50, 96).astype(np.int64)
    offsets = np.array([0, 7, 40, 40, 90], dtype=np.int64)
    for rows in (strided, every_other):
        np.testing.assert_array_equal(gathered(rows, ids, dim, bits), gathered(packed, ids, dim, bits))
        np.testing.assert_array_equal(
            rowwise.bags_serial(rows, ids, offsets, dim, bits, False),
            rowwise.bags_serial(packed, ids, offsets, dim, bits, False),
        )
    out = np.zeros((5, dim + 3), dtype=np.float32)[:, 1 : dim + 1]  # rows of out strided too
    pool_into = rowwise._bags8_into if bits == 8 else rowwise._bags4_into
    pool_into(packed, ids, offsets, 0, 5, dim, True, out)
    np.testing.assert_array_equal(out, rowwise.bags_serial(packed, ids, offsets, dim, bits, True))


def test_rowwise_quantization_error_is_bounded() -> None:
    x = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
    for bits in (8, 4, 2):
        rows = rowwise.quantize_numpy(x, bits)
        back = rowwise.dequantize_numpy(rows, np.arange(100), 64, bits)
        step = (x.max(1) - x.min(1)) / ((1 << bits) - 1)
        # half a step of rounding, plus fp16 rounding of scale and bias
        assert (np.abs(back - x).max(axis=1) <= 0.5 * step + 2e-3 * np.abs(x).max(axis=1) + 1e-6).all()


@given(st.integers(0, 2**31), st.integers(0, 40), st.integers(1, 20), st.integers(0, 60), st.integers(1, 9))
def test_fp16_gather_matches_numpy(seed: int, n: int, dim: int, nids: int, nchunks: int) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((max(n, 1), dim)) * 1000).astype(np.float16)
    ids = rng.integers(0, values.shape[0], nids).astype(np.int64)
    got = fp16_gathered(values.view(np.uint16), ids, nchunks)
    np.testing.assert_array_equal(got, dense.fp16_gather_numpy(values, ids))
    np.testing.assert_array_equal(fp16_gathered(values.view(np.uint16), ids), got)


@given(st.integers(0, 2**31), st.integers(1, 40), st.integers(1, 20), st.integers(0, 60), st.data())
def test_fp16_bags_match_numpy(seed: int, n: int, dim: int, nids: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((n, dim)) * 1000).astype(np.float16)
    ids = rng.integers(0, n, nids).astype(np.int64)
    offsets = np.array(sorted(data.draw(st.lists(st.integers(0, nids), max_size=6))), dtype=np.int64)
    if offsets.size:
        offsets[0] = 0
    mean = data.draw(st.booleans())
    want = dense.fp16_bags_numpy(values, ids, offsets, mean)
    serial = dense.fp16_bags_serial(values.view(np.uint16), ids, offsets, mean)
    np.testing.assert_allclose(serial, want, rtol=1e-5, atol=1e-2)
    # more chunks than bags leaves some empty; every split sums each bag in the same order
    nchunks = data.draw(st.integers(1, 8))
    np.testing.assert_array_equal(dense.fp16_bags_chunked(values.view(np.uint16), ids, offsets, mean, nchunks), serial)
    np.testing.assert_array_equal(dense.fp16_bags(values.view(np.uint16), ids, offsets, mean, min_ids=1), serial)
    decoded = dense.fp16_gather_numpy(values, ids)
    np.testing.assert_array_equal(dense.pool_chunked(decoded, offsets, mean, nchunks), serial)
    np.testing.assert_array_equal(dense.pool(decoded, offsets, mean, min_ids=1), serial)


@st.composite
def binary_codes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    n = draw(st.integers(1, 600))  # several 256-row blocks
    words = draw(st.sampled_from([1, 2, 3, 4, 5]))
    nq = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):  # sparse bits: many equal distances
        sparse = rng.random((n, words * 64)) < 0.02
        codes = np.packbits(sparse, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    else:
        codes = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64) * np.uint64(2) + rng.integers(
            0, 2, (n, words), dtype=np.uint64
        )
    queries = codes[rng.integers(0, n, nq)] ^ rng.integers(0, 2**63, size=(nq, words), dtype=np.uint64)
    return (
        np.ascontiguousarray(codes),
        np.ascontiguousarray(queries),
        draw(st.integers(1, 320)),
        draw(st.integers(1, 7)),
    )


@given(binary_codes())
def test_hamming_topk_matches_numpy(case: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    codes, queries, k, nchunks = case
    keys, ids = scan.hamming_topk(codes, queries, k, nchunks)
    dist = scan.hamming_distances_numpy(codes, queries)
    want_keys, want_ids = topk.topk_numpy(-dist.astype(np.float32), k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(keys, want_keys)
    cands = want_ids
    np.testing.assert_array_equal(scan.hamming_distances(codes, cands, queries), np.take_along_axis(dist, cands, 1))


def _adc_luts(rng: np.random.Generator, shape: tuple[int, ...], levels: int) -> np.ndarray:
    """Few levels (multiples of 1/4) give many tied sums; levels 0 gives random floats, whose
    float32 sums depend on the order they are added in, so kernels must add in the twin's."""
    if levels == 0:
        return rng.standard_normal(shape).astype(np.float32)
    return (rng.integers(0, levels, shape) / 4).astype(np.float32)


@st.composite
def pq_codes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, bool]:
    four_bit = draw(st.booleans())
    # 8-bit widths that are whole words (8, 16, 24, 32) take the word-load path, the rest bytes
    # (every remainder mod 4); 4-bit codes pack two subspaces a byte, so their M is even
    m = draw(st.sampled_from([1, 2, 3, 4, 6, 7, 8, 16, 24, 32]))
    if four_bit and m % 2:
        m += 1
    ksub = 16 if four_bit else 256
    n = draw(st.integers(1, 300))
    nq = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    unpacked = rng.integers(0, ksub, (n, m)).astype(np.uint8)
    codes = (unpacked[:, 0::2] | (unpacked[:, 1::2] << 4)).astype(np.uint8) if four_bit else unpacked
    luts = _adc_luts(rng, (nq, m, ksub), draw(st.sampled_from([3, ksub, 0])))
    mul = rng.random(n).astype(np.float32) if draw(st.booleans()) else np.empty(0, np.float32)
    add = rng.random(n).astype(np.float32) if draw(st.booleans()) else np.empty(0, np.float32)
    return np.ascontiguousarray(codes), luts, mul, add, draw(st.integers(1, 320)), draw(st.integers(1, 6)), four_bit


@given(pq_codes())
def test_adc_topk_matches_numpy(case) -> None:  # type: ignore[no-untyped-def]
    codes, luts, mul, add, k, nchunks, four_bit = case
    keys, ids = scan.adc_topk(codes, luts, mul, add, k, nchunks, four_bit)
    sums = scan.adc_sums_numpy(codes, luts, four_bit)
    if mul.size:
        sums = sums * mul[None, :]
    if add.size:
        sums = sums + add[None, :]
    want_keys, want_ids = topk.topk_numpy(sums.astype(np.float32), k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(keys, want_keys)
    raw = scan.adc_sums_numpy(codes, luts, four_bit)
    np.testing.assert_array_equal(
        scan.adc_candidates(codes, want_ids, luts, four_bit), np.take_along_axis(raw, want_ids, 1)
    )


@pytest.mark.parametrize("levels", [3, 256, 0])
@pytest.mark.parametrize("k", [1, 7, 600])
def test_adc_topk_over_many_blocks_matches_numpy(levels: int, k: int) -> None:
    """Rows past the first ROW_BLOCK of a chunk meet a full heap, where whole blocks are skipped
    when no key beats the worst kept one; few LUT levels make many keys equal to it (they lose),
    random floats hold the word-load path to the twin's order of additions."""
    rng = np.random.default_rng(levels + k)
    n = 5 * scan.ROW_BLOCK + 37
    codes = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    # the same codes at an odd address: word loads must not assume alignment
    unaligned = np.empty(codes.size + 1, np.uint8)[1:].reshape(codes.shape)
    unaligned[:] = codes
    luts = _adc_luts(rng, (2, 16, 256), levels)
    empty = np.empty(0, np.float32)
    for nq in (1, 2):
        want_keys, want_ids = topk.topk_numpy(scan.adc_sums_numpy(codes, luts[:nq], False), k)
        for nchunks in (1, 2):
            for stored in (codes, unaligned):
                keys, ids = scan.adc_topk(stored, luts[:nq], empty, empty, k, nchunks, False)
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_array_equal(keys, want_keys)


@given(st.integers(0, 2**31), st.integers(0, 200), st.integers(1, 40), st.integers(1, 8))
def test_nearest_centroid_matches_numpy(seed: int, n: int, nc: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, dim)).astype(np.float32)
    centroids = rng.standard_normal((nc, dim)).astype(np.float32)
    if nc > 1:
        centroids[-1] = centroids[0]  # a duplicate centroid: the lower index must win
    assign, dist = scan.nearest_centroid(points, centroids)
    want_assign, want_dist = scan.nearest_centroid_numpy(points, centroids)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-5, atol=1e-5)
    # equal up to near-ties in float rounding: the kernel's choice is as close as the twin's
    exact = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    if n:
        np.testing.assert_allclose(exact[np.arange(n), assign], exact[np.arange(n), want_assign], rtol=1e-5, atol=1e-5)
        assert (assign != nc - 1).all() or nc == 1


@pytest.mark.parametrize("k", [1, 5, 1000])
def test_empty_and_single_row_scans(k: int) -> None:
    one = np.array([[5]], dtype=np.uint64)
    keys, ids = scan.hamming_topk(one, np.array([[4]], dtype=np.uint64), k, 3)
    assert ids.tolist() == [[0]] and keys.tolist() == [[-1.0]]
    empty_q = np.zeros((0, 1), dtype=np.uint64)
    keys, ids = scan.hamming_topk(one, empty_q, k, 2)
    assert ids.shape[0] == 0
    luts = np.ones((1, 2, 256), np.float32)
    keys, ids = scan.adc_topk(
        np.zeros((1, 2), np.uint8), luts, np.empty(0, np.float32), np.empty(0, np.float32), k, 4, False
    )
    assert ids.tolist() == [[0]] and keys.tolist() == [[2.0]]


@given(quantized_rows(), st.integers(1, 9), st.integers(0, 3))
def test_rowwise_gather_by_keys_matches_probe_then_numpy(
    case: tuple[np.ndarray, np.ndarray, int, int], nchunks: int, absent: int
) -> None:
    from runtime.kernels import hashmap

    rows, ids, dim, bits = case
    n = rows.shape[0]
    # keys at the int64 extremes and 0 among them; `absent` keys that are not in the map
    keys = np.concatenate([[np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max], np.arange(1, n) * -7919])[:n]
    slots, _ = hashmap.build(keys.astype(np.int64), hashmap.slot_count(n))
    wanted = keys[ids]
    if absent and ids.size:
        wanted = wanted.copy()
        wanted[: min(absent, ids.size)] = 123_456_789_123  # never a key of this map
    got, missing = rowwise.gather_keys(rows, slots, wanted, dim, bits, nchunks)
    found, want_missing = hashmap.lookup_numpy(slots, wanted)
    assert missing == want_missing
    if want_missing == 0:
        np.testing.assert_allclose(got, rowwise.dequantize_numpy(rows, found, dim, bits), rtol=1e-6, atol=1e-6)
    serial, serial_missing = rowwise.gather_key_rows(rows, slots, wanted, dim, bits, min_ids=1 << 30)
    assert serial_missing == want_missing and (serial is None) == (want_missing > 0)
    if serial is not None:
        np.testing.assert_array_equal(serial, got)
