"""Bad input to the library: each is refused with a typed error that names the problem."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime import DimensionMismatch, IdOutOfRange, InvalidRequest, UnknownCodec, UnsupportedMetric
from runtime.kernels import checks
from runtime.validation import (
    check_ids,
    check_int_array,
    check_keys,
    check_offsets,
    check_queries,
    parse_bytes,
    refuse_booleans_among_numbers,
    refuse_booleans_in_json,
)
from tests.conftest import low_rank_table


@pytest.fixture(scope="module")
def table() -> runtime.Table:
    return runtime.compress(low_rank_table(100, 16), "int8")


def test_table_input_is_cast_or_refused() -> None:
    assert runtime.compress(np.arange(32).reshape(4, 8), "fp32").lookup([1]).dtype == np.float32
    x = np.ones((5, 4), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(InvalidRequest, match=r"table\[3\] contains NaN"):
        runtime.compress(x, "int8")
    with pytest.raises(InvalidRequest, match="numeric"):
        runtime.compress(np.array([["a"]]), "int8")
    with pytest.raises(InvalidRequest, match="2-D"):
        runtime.compress(np.ones(5), "int8")
    with pytest.raises(InvalidRequest, match="fp16"):
        runtime.compress(np.full((2, 2), 1e6, np.float32), "fp16")
    with pytest.raises(UnknownCodec, match="known codecs"):
        runtime.compress(np.ones((2, 2)), "zip")
    with pytest.raises(InvalidRequest, match="divide"):
        runtime.compress(np.ones((4, 10)), "pq", subspaces=3)
    with pytest.raises(InvalidRequest, match="no option"):
        runtime.compress(np.ones((4, 8)), "int8", subspaces=2)


def test_ids_out_of_range_name_the_id_and_position(table: runtime.Table) -> None:
    with pytest.raises(IdOutOfRange, match=r"ids\[2\] = 100") as info:
        table.lookup([0, 1, 100, -1])
    assert info.value.value == 100 and info.value.position == 2
    with pytest.raises(IdOutOfRange, match=r"ids\[0\] = -1"):
        table.lookup([-1])
    with pytest.raises(InvalidRequest, match="integers"):
        table.lookup([1.5])
    with pytest.raises(InvalidRequest, match="integers"):
        table.lookup(["a"])
    with pytest.raises(IdOutOfRange, match="query_ids"):
        table.search_by_id([100], 3)
    with pytest.raises(IdOutOfRange, match="candidate_ids"):
        table.score([[1, 200]], query_ids=[0])


@pytest.mark.parametrize("codec", ["int8", "int4", "int2", "fp16", "pq"])
def test_small_lookups_check_bounds_in_the_kernel_and_name_the_bad_id(codec: str) -> None:
    # int64 arrays take the one-call path (bounds checked inside the gather); what it answers and
    # what it refuses must be what the general path answers and refuses
    x = low_rank_table(300, 16)
    options: dict[str, Any] = {"subspaces": 4} if codec == "pq" else {}
    table = runtime.compress(x, codec, **options)
    threshold = table.tiers[0].richest.parallel_min_ids
    for n in (1, 2, 63, threshold - 1, threshold):
        ids = np.random.default_rng(n).integers(0, 300, n)
        want = table.tiers[0].richest.decode(ids)
        np.testing.assert_array_equal(table.lookup(ids), want)
        np.testing.assert_array_equal(table.lookup_counted(ids)[0], want)
        read_only = np.frombuffer(ids.tobytes(), dtype=np.int64)
        np.testing.assert_array_equal(table.lookup(read_only), want)
        np.testing.assert_array_equal(table.lookup(ids.tolist()), want)
        # the one-call gather is compiled for ids of any layout: strided and reversed views too
        spread = np.zeros(2 * n, np.int64)
        spread[::2] = ids
        np.testing.assert_array_equal(table.lookup(spread[::2]), want)
        np.testing.assert_array_equal(table.lookup(ids[::-1]), want[::-1])
        unaligned = np.frombuffer(b"\0" + ids.tobytes(), dtype=np.int64, offset=1)
        np.testing.assert_array_equal(table.lookup(unaligned), want)
        for bad, position in ((300, n - 1), (-1, 0), (np.iinfo(np.int64).max, n // 2)):
            wrong = ids.copy()
            wrong[position] = bad
            with pytest.raises(IdOutOfRange, match=rf"ids\[{position}\] = {bad}") as info:
                table.lookup(wrong)
            assert info.value.position == position
            with pytest.raises(IdOutOfRange):
                table.lookup_counted(wrong)
    assert table.lookup(np.zeros(0, np.int64)).shape == (0, 16)


def test_ids_past_int64_are_refused_not_wrapped(table: runtime.Table) -> None:
    # what a JSON parser makes of 99999999999999999999 and of 10**19: float64 and uint64; the
    # cast to int64 used to give -9223372036854775808 and a numpy RuntimeWarning (an error here)
    with pytest.raises(InvalidRequest, match=r"ids\[1\] = 1e\+20 is out of the int64 range"):
        table.lookup(np.array([1.0, 99999999999999999999.0]))
    with pytest.raises(InvalidRequest, match=r"ids\[0\] = 10000000000000000000 is out of the int64 range"):
        table.lookup(np.array([10**19], np.uint64))
    with pytest.raises(InvalidRequest, match=r"query_ids\[0\] = 9\.22337e\+18 is out of the int64 range"):
        table.search_by_id(np.array([2.0**63]), 3)
    with pytest.raises(IdOutOfRange, match=r"ids\[0\] = -9223372036854775808 is out of range"):
        table.lookup(np.array([-(2.0**63)]))  # the smallest int64 itself is a valid int64


def test_keys_past_int64_are_refused_by_position() -> None:
    top = np.array([5, 2**63 - 1, 2**63], np.uint64)
    with pytest.raises(InvalidRequest, match=r"keys\[2\] = 9223372036854775808 is out of the int64 range"):
        check_keys(top)
    assert check_keys(top[:2]).tolist() == [5, 2**63 - 1]


@pytest.mark.parametrize("empty", [[[]], [[], []], [[[]]]])
def test_empty_nested_id_lists_are_refused_as_their_filled_kind_is(table: runtime.Table, empty: list[Any]) -> None:
    # [[1, 2]] is not a list of ids, so [[]] is not one either (both used to differ: [[]] answered
    # shape (0, dim)); [] stays no ids
    shape = str(np.asarray(empty).shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(InvalidRequest, match=rf"ids must be 1-D, got shape {shape}"):
        table.lookup(empty)
    with pytest.raises(InvalidRequest, match=rf"keys must be 1-D, got shape {shape}"):
        check_keys(empty)
    with pytest.raises(InvalidRequest, match=rf"lengths must be a flat array of integers, .* shape {shape}"):
        check_int_array(empty, "lengths")
    assert table.lookup([]).shape == (0, 16) and check_keys([]).shape == (0,)
    assert check_int_array([], "lengths").shape == (0,)


def test_an_empty_list_of_vectors_is_no_vector() -> None:
    # JSON's [] reads as shape (0,): an upsert of no rows over JSON was refused, over octet-stream
    # (shape (0, dim)) accepted (found by a probe)
    assert check_queries([], 16).shape == (0, 16) and check_queries(np.zeros((0, 16)), 16).shape == (0, 16)
    assert check_queries(np.ones(16), 16).shape == (1, 16)
    with pytest.raises(InvalidRequest, match=r"must be 2-D \(q, dim\), got shape \(15,\)"):
        check_queries(np.ones(15), 16)


def test_float64_beyond_float32_is_refused_without_a_cast_warning(table: runtime.Table) -> None:
    with pytest.raises(InvalidRequest, match=r"queries\[1\] has a value beyond float32's range"):
        table.search(np.array([[0.0] * table.dim, [1e300] + [0.0] * (table.dim - 1)]), 3)
    with pytest.raises(InvalidRequest, match=r"table\[2\] has a value beyond float32's range"):
        runtime.compress(np.array([[1.0, 2.0], [3.0, 4.0], [1e39, 0.0]]), "fp32")
    with pytest.raises(InvalidRequest, match="NaN or Inf"):
        table.search(np.array([[np.inf] * table.dim]), 3)


def test_k_is_a_positive_integer(table: runtime.Table) -> None:
    q = np.ones((1, 16), np.float32)
    for bad in (0, -3, 2.5, "3", True, None):
        with pytest.raises(InvalidRequest, match="k must be"):
            table.search(q, bad)
    with pytest.raises(InvalidRequest, match="oversample"):
        table.search(q, 3, oversample=0)


def test_queries_must_match_dimension_and_be_finite(table: runtime.Table) -> None:
    with pytest.raises(DimensionMismatch, match="dimension 8 but the table has dimension 16"):
        table.search(np.ones((2, 8)), 3)
    bad = np.ones((3, 16))
    bad[1, 0] = np.inf
    with pytest.raises(InvalidRequest, match=r"queries\[1\]"):
        table.search(bad, 3)
    ids, scores = table.search(np.zeros((0, 16)), 3)
    assert ids.shape == (0, 3) and scores.shape == (0, 3)


def test_metric_must_fit_the_codec(table: runtime.Table) -> None:
    with pytest.raises(UnsupportedMetric, match="hamming"):
        table.search(np.ones((1, 16)), 3, metric="hamming")
    with pytest.raises(UnsupportedMetric, match="one of"):
        table.search(np.ones((1, 16)), 3, metric="cosine")


def test_offsets_and_pool_mode(table: runtime.Table) -> None:
    with pytest.raises(InvalidRequest, match="offsets\\[0\\]"):
        table.lookup_pooled([1, 2], [1])
    with pytest.raises(InvalidRequest, match="non-decreasing"):
        table.lookup_pooled([1, 2, 3], [0, 2, 1])
    with pytest.raises(InvalidRequest, match="exceeds"):
        table.lookup_pooled([1, 2], [0, 3])
    with pytest.raises(InvalidRequest, match="mode"):
        table.lookup_pooled([1, 2], [0], mode="max")
    assert table.lookup_pooled([], []).shape == (0, 16)


def test_score_needs_exactly_one_query_kind(table: runtime.Table) -> None:
    with pytest.raises(InvalidRequest, match="exactly one"):
        table.score([[1]])
    with pytest.raises(InvalidRequest, match="exactly one"):
        table.score([[1]], queries=np.ones((1, 16)), query_ids=[0])
    with pytest.raises(InvalidRequest, match="rows"):
        table.score([[1], [2]], query_ids=[0])
    with pytest.raises(InvalidRequest, match="2-D"):
        table.score([1, 2], query_ids=[0])


@pytest.mark.parametrize("position", [0, 511, 512, 1023, 1999])
def test_first_out_of_range_at_chunk_edges(position: int) -> None:
    ids = np.arange(2000, dtype=np.int64) % 1000
    assert checks.first_out_of_range(ids, 1000) == -1
    ids[position] = 1000
    assert checks.first_out_of_range(ids, 1000) == position
    ids[position] = -1
    assert checks.first_out_of_range(ids, 1000) == position
    assert checks.first_out_of_range(ids, 0) == 0  # no rows: the first id is already out


@given(
    st.integers(0, 2000),
    st.integers(0, 2**31),
    st.lists(st.sampled_from([-1, -(2**63), 2**63 - 1, 0, 999, 1000]), max_size=3),
    st.booleans(),
)
def test_first_out_of_range_over_many_chunks(n: int, seed: int, bad: list[int], strided: bool) -> None:
    # batches longer than one chunk of the vectorized check, bad ids (or edge values) anywhere
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1000, 2 * n if strided else n)
    for value in bad:
        if ids.size:
            ids[rng.integers(0, ids.size)] = value
    view = ids[::2] if strided else ids
    assert checks.first_out_of_range(view, 1000) == checks.first_out_of_range_numpy(view, 1000)


@given(st.lists(st.integers(-3, 12), max_size=40), st.integers(0, 10))
def test_first_out_of_range_matches_twin(values: list[int], rows: int) -> None:
    ids = np.array(values, dtype=np.int64)
    pos = checks.first_out_of_range(ids, rows)
    assert pos == checks.first_out_of_range_numpy(ids, rows)
    if pos >= 0:  # and check_ids names that id and that position
        with pytest.raises(IdOutOfRange) as info:
            check_ids(ids, rows)
        assert info.value.position == pos and info.value.value == ids[pos]
    else:
        assert check_ids(ids, rows) is ids


INT64_EDGES = [-(2**63), -(2**63) + 1, -2, 2**62, 2**63 - 2, 2**63 - 1]
"""Values where a sum or a difference of int64s wraps."""


@given(st.lists(st.integers(-2, 12) | st.sampled_from(INT64_EDGES), max_size=12), st.integers(0, 10))
def test_first_bad_offset_matches_twin(values: list[int], n_ids: int) -> None:
    offsets = np.array(values, dtype=np.int64)
    pos = checks.first_bad_offset(offsets, n_ids)
    assert pos == checks.first_bad_offset_numpy(offsets, n_ids)
    if pos >= 0:  # and check_offsets refuses them, for the reason at that position
        with pytest.raises(InvalidRequest, match=rf"offsets(\[0\]|\[{pos}\]|\[-1\])"):
            check_offsets(offsets, n_ids)
    else:
        assert check_offsets(offsets, n_ids) is offsets


@given(st.lists(st.integers(-3, 9) | st.sampled_from(INT64_EDGES), max_size=12))
def test_offsets_of_lengths_matches_twin(values: list[int]) -> None:
    lengths = np.array(values, dtype=np.int64)
    offsets, negative, total = checks.offsets_of_lengths(lengths)
    want_offsets, want_negative, want_total = checks.offsets_of_lengths_numpy(lengths)
    np.testing.assert_array_equal(offsets, want_offsets)
    assert offsets.dtype == np.int64 and (negative, total) == (want_negative, want_total)


_BELOW_LIMIT = float(np.nextafter(np.float32(checks.VALUE_LIMIT), np.float32(0)))
_SPECIAL_FLOATS = [0.0, -0.0, 1.5, -2.0, 1e-45, _BELOW_LIMIT, -_BELOW_LIMIT, checks.VALUE_LIMIT, -checks.VALUE_LIMIT]
_SPECIAL_FLOATS += [3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan]


@given(st.integers(0, 5), st.integers(0, 40), st.data())
def test_first_unusable_row_matches_twin(nrows: int, dim: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.sampled_from(_SPECIAL_FLOATS), min_size=nrows * dim, max_size=nrows * dim))
    rows = np.array(values, dtype=np.float32).reshape(nrows, dim)
    pos = checks.first_unusable_row(rows)
    assert pos == checks.first_unusable_row_numpy(rows)
    if pos >= 0:  # and check_queries names that row, on its float32 fast path as on the general one
        why = "contains NaN or Inf" if not np.isfinite(rows[pos]).all() else "holds a value of magnitude"
        for given_rows in (rows, rows.astype(np.float64)):
            with pytest.raises(InvalidRequest, match=rf"queries\[{pos}\] {why}"):
                check_queries(given_rows, dim)
    else:
        assert check_queries(rows, dim) is rows


def test_check_queries_copies_what_a_kernel_cannot_take_as_is() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    frozen = rows.copy()
    frozen.flags.writeable = False
    for given_rows in (frozen, rows[:, ::-1], rows.astype(">f4"), rows.tolist()):
        got = check_queries(given_rows, 4)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, np.asarray(given_rows, dtype=np.float32))


def test_a_candidate_is_named_by_its_row_and_column(table: runtime.Table) -> None:
    with pytest.raises(IdOutOfRange, match=r"candidate_ids\[1\]\[1\] = -4 is out of range"):
        table.score([[1, 2], [3, -4]], query_ids=[1, 2])
    keyed = runtime.compress(low_rank_table(10, 16), "int8", keys=np.arange(10, dtype=np.int64) * 3)
    with pytest.raises(runtime.KeyNotFound, match=r"candidate_ids\[1\]\[0\] = 7 is not in the table"):
        keyed.score([[0, 3], [7, 6]], query_ids=[0, 3])


def test_booleans_among_numbers_are_named_by_their_path() -> None:
    with pytest.raises(InvalidRequest, match=r"^inputs\[1\]\.data\[2\]\[0\] is false among numbers"):
        refuse_booleans_among_numbers({"inputs": [{"data": [1]}, {"data": [[1, 2], [3], [False, 0.5]]}]})
    with pytest.raises(InvalidRequest, match=r"^X\.ids\[0\] is true"):
        refuse_booleans_among_numbers({"ids": [True, 1]}, "X")
    # a matrix is one array: rows of booleans beside rows of numbers (found by a review)
    with pytest.raises(InvalidRequest, match=r"^queries\[1\]\[0\] is true among numbers"):
        refuse_booleans_among_numbers({"queries": [[0.5, 0.25], [True, False]]})
    with pytest.raises(InvalidRequest, match=r"^candidate_ids\[2\]\[1\] is false"):
        refuse_booleans_among_numbers({"candidate_ids": [[1, 2], [3, 4], [5, False]]})
    # a long key above many lists: its path is built once, for a message, not for every list
    refuse_booleans_among_numbers({"x": {"k" * 100_000: [[] for _ in range(50_000)]}, "f": True})
    # booleans alone, flags and numbers alone are the fields' own checks' to judge
    refuse_booleans_among_numbers({"flags": [True, False], "exclude_self": True, "ids": [1, 2], "q": [[0.5]], "e": []})


SCALARS = st.one_of(st.booleans(), st.integers(-3, 3), st.floats(-1, 1))


@given(st.lists(st.one_of(SCALARS, st.lists(SCALARS, max_size=4)), max_size=12))
def test_a_matrix_names_its_first_boolean_as_a_walk_of_its_rows_would(matrix: list[Any]) -> None:
    # the rows of a matrix are read at C speed (`_first_boolean_of_matrix`); its twin is this loop
    flat = [([i], v) for i, v in enumerate(matrix) if not isinstance(v, list)]
    flat += [([i, j], w) for i, v in enumerate(matrix) if isinstance(v, list) for j, w in enumerate(v)]
    flat.sort(key=lambda item: item[0])
    booleans = [(steps, v) for steps, v in flat if isinstance(v, bool)]
    if not booleans or len(booleans) == len(flat):
        refuse_booleans_among_numbers({"m": matrix})
        return
    steps, v = booleans[0]
    path = "m" + "".join(f"[{s}]" for s in steps)
    with pytest.raises(InvalidRequest, match=rf"^{re.escape(path)} is {str(v).lower()} among numbers"):
        refuse_booleans_among_numbers({"m": matrix})


def test_booleans_in_json_bodies_cost_a_scan_and_a_bounded_walk() -> None:
    # found by a probe: a deep body of 180 KB with a literal true took seconds and hundreds of MB
    deep = b'{"ids":' + b"[" * 1000 + b"[1]," * 30_000 + b"true" + b"]" * 1000 + b"}"
    with pytest.raises(InvalidRequest, match=r"\[30000\] is true among numbers"):
        refuse_booleans_in_json(deep, orjson.loads(deep))
    # past the walk's budget (50,000 containers) a body passes unread, as before the check: a
    # refusal by byte named strings and skipped members too (found by a review)
    wide = b'{"id": "run[true]", "ids":[' + b'{"a":[1]},' * 300_000 + b"true]}"
    refuse_booleans_in_json(wide, orjson.loads(wide))
    # a matrix's rows are read with it, not one visit of the budget each: a 300,000-row body
    # passed unread, a true in it looked up as id 1 (found by a review)
    tall = b'{"inputs":[{"name":"ids","data":[' + b"[1]," * 300_000 + b"[2,true]]}]}"
    with pytest.raises(InvalidRequest, match=r"^inputs\[0\]\.data\[300000\]\[1\] is true among numbers"):
        refuse_booleans_in_json(tall, orjson.loads(tall))
    # the first boolean in document order, whichever array holds it (found by a review)
    for body, path in (
        (b'{"x":[1,false,{"y":[1,true]}]}', r"^x\[1\] is false"),
        (b'{"x": [{"y": [1, true]}, 1, false]}', r"^x\[0\]\.y\[1\] is true"),
        (b'{"x":[[true,{"a":[1,true]}],[1]]}', r"^x\[0\]\[0\] is true"),
    ):
        with pytest.raises(InvalidRequest, match=path):
            refuse_booleans_in_json(body, orjson.loads(body))
    # the word in a string, with no boolean in an array, is no reason to walk or refuse
    named = b'{"id": "run[true]", "mode": "a,false", "ids": [1, 2]}'
    refuse_booleans_in_json(named, orjson.loads(named))
    # flags are object members: not looked into; OIP parameters, whose unknown entries are ignored, neither
    flags = b'{"ids": [1, 2], "exclude_self": true, "parameters": {"tag": [1, true]}}'
    refuse_booleans_in_json(flags, orjson.loads(flags))


def test_byte_sizes_parse_one_way_everywhere() -> None:
    # found by a review: rq's table_limit took "1.5" as 1 byte and refused "1e3", which a budget
    # took; one parser now reads both
    assert parse_bytes("64MiB") == 64 << 20 and parse_bytes("16 MB") == 16_000_000 and parse_bytes(0) == 0
    assert parse_bytes("2k") == 2000 and parse_bytes("1.5GiB") == 3 << 29 and parse_bytes("512b") == 512
    assert parse_bytes("1e6") == 10**6 and parse_bytes("1.1MB") == 1_100_000 and parse_bytes(" 1.5 KiB") == 1536
    # sizes past int64 are none (a second review: 1e1000000 raised decimal.Overflow, 1e400 planned)
    for bad in (
        "x",
        -1,
        "64i",
        "1.5",
        "0.3B",
        "1e-3",
        True,
        2.0,
        None,
        "nan",
        "inf",
        "12 parsecs",
        "",
        "1e1000000",
        "1e400",
        "8EiB",
        2**63,
    ):
        assert parse_bytes(bad) is None, bad
    with pytest.raises(InvalidRequest, match="table_limit must be a size in bytes"):
        runtime.compress(low_rank_table(300, 16), "rq", codebooks=2, table_limit="1.5")


@pytest.mark.parametrize("name", ["", "a/b", "x" * 129, "a\x00b", "a\nb", "a\u202eb", ".", "..", 7])
def test_table_names_that_would_forge_paths_logs_or_labels_are_refused(name: Any) -> None:
    # found by a review: NUL, a newline, a right-to-left override and '..' were served and
    # written to the state file
    from runtime.validation import check_table_name

    with pytest.raises(InvalidRequest, match="printable characters"):
        check_table_name(name)


def test_table_names_may_hold_dots_dashes_and_letters_of_any_script() -> None:
    from runtime.validation import check_table_name

    for name in ("items", "user.v2", "a..b", "特徴", "x" * 128, "with space"):
        assert check_table_name(name) == name
