"""Searches that leave ids out (exclude_ids, exclude_lengths): each query's answer is its full
ranking with its own ids removed, cut to k' = min(k, the fewest rows a query keeps)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from runtime import IdOutOfRange, InvalidRequest
from tests.conftest import low_rank_table

X = low_rank_table(60, 16, seed=31)
# one-tier tables scan their codes exactly (no rescoring), so a longer top k only appends rows
TABLES = {
    "fp32": runtime.compress(X, "fp32"),
    "int8": runtime.compress(X, "int8"),
    "pq": runtime.compress(X, "pq", subspaces=4, bits=8, iterations=3),
}


def keyed_table_with_delta() -> runtime.Table:
    """Keys 1000 + 3 r, two tiers, a few rows replaced, deleted and added: every merge path."""
    tiers: list[dict[str, Any]] = [
        {"rows": {"start": 0, "stop": 20}, "codec": "int8"},
        {"rows": {"start": 20, "stop": 60}, "codec": "fp16"},
    ]
    table = runtime.compress(X, tiers=tiers, keys=1000 + 3 * np.arange(60, dtype=np.int64))
    table.upsert([1003, 5000, 5001], X[[40, 41, 42]] * 1.5)
    table.delete([1006, 1120])
    return table


def without(ranked: np.ndarray, scores: np.ndarray, left_out: list[np.ndarray], k: int) -> tuple[np.ndarray, ...]:
    """The oracle: each full ranking (q, n) with its ids left out, cut to the common width."""
    kept = [
        (ids[~np.isin(ids, out)], s[~np.isin(ids, out)]) for ids, s, out in zip(ranked, scores, left_out, strict=True)
    ]
    width = min(k, min(len(ids) for ids, _ in kept))
    return np.array([ids[:width] for ids, _ in kept]), np.array([s[:width] for _, s in kept])


def split(values: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1]) if lengths else []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(sorted(TABLES)),
    metric=st.sampled_from(["ip", "l2"]),
    nq=st.integers(1, 4),
    k=st.integers(1, 70),
    data=st.data(),
)
def test_each_query_leaves_out_its_own_ids(codec: str, metric: str, nq: int, k: int, data: st.DataObject) -> None:
    table = TABLES[codec]
    q = np.random.default_rng(k).standard_normal((nq, 16)).astype(np.float32)
    lengths = data.draw(st.lists(st.integers(0, 62), min_size=nq, max_size=nq))
    values = np.array(data.draw(st.lists(st.integers(0, 59), min_size=sum(lengths), max_size=sum(lengths))), np.int64)
    got = table.search(q, k, metric, exclude_ids=values, exclude_lengths=lengths)
    ranked = table.search(q, table.rows, metric)
    want = without(*ranked, split(values, lengths), k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("codec", sorted(TABLES))
def test_ids_without_lengths_leave_every_query_and_repeats_count_once(codec: str) -> None:
    table = TABLES[codec]
    q = X[[1, 7, 30]]
    top = table.search(q, 5)[0]
    left_out = np.concatenate([top[:, 0], top[:, 0]])  # each query's best, twice
    got = table.search(q, 5, exclude_ids=left_out)
    ranked = table.search(q, 60)
    want = without(*ranked, [np.unique(left_out)] * 3, 5)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].shape == (3, 5) and not np.isin(got[0], left_out).any()


@pytest.mark.parametrize("codec", sorted(TABLES))
def test_leaving_out_more_than_k_of_the_top_searches_again_with_every_candidate(codec: str) -> None:
    # the first try takes 2 k candidates; here a query's whole top 2 k + 3 is left out
    table, k = TABLES[codec], 4
    q = X[[3, 33]]
    ranked = table.search(q, 60)
    left_out = ranked[0][0, : 2 * k + 3]
    got = table.search(q, k, exclude_ids=left_out, exclude_lengths=[left_out.size, 0])
    np.testing.assert_array_equal(got[0][0], ranked[0][0, 2 * k + 3 : 3 * k + 3])
    np.testing.assert_array_equal(got[0][1], ranked[0][1, :k])
    by_id = table.search_by_id([3], k, exclude_ids=table.search_by_id([3], 2 * k + 3)[0][0])
    np.testing.assert_array_equal(by_id[0][0], table.search_by_id([3], 3 * k + 3)[0][0, 2 * k + 3 :])


def test_search_by_id_leaves_out_itself_and_the_ids_given() -> None:
    table = TABLES["int8"]
    ranked = table.search_by_id([4, 9], 60, exclude_self=False)
    for exclude_self in (True, False):
        got = table.search_by_id([4, 9], 8, exclude_self=exclude_self, exclude_ids=[4, 11, 9], exclude_lengths=[2, 1])
        own = [[4, 11] + ([4] if exclude_self else []), [9] + ([9] if exclude_self else [])]
        want = without(*ranked, [np.array(o) for o in own], 8)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_keyed_tables_leave_out_keys_and_accept_keys_they_do_not_hold() -> None:
    table = keyed_table_with_delta()
    # JSON integers past uint64 arrive as floats: out of range, as on dense tables (found by a probe)
    with pytest.raises(InvalidRequest, match=r"exclude_ids\[1\] = 1\.84467e\+19 is out of the int64 range"):
        table.search(X[:1], 3, exclude_ids=np.array([3.0, 2.0**64]))
    q = X[[2, 50]]
    ranked = table.search(q, 200)
    assert ranked[0].shape[1] == 60  # 60 rows, 2 added, 2 deleted
    left_out = [np.array([ranked[0][0, 0], 1006, 5000, -7]), np.array([ranked[0][1, 1], 2**63 - 1])]
    got = table.search(q, 10, exclude_ids=np.concatenate(left_out), exclude_lengths=[4, 2])
    want = without(*ranked, left_out, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    by_id = table.search_by_id([5000], 4, exclude_ids=[1003])
    want_by_id = without(*table.search_by_id([5000], 200), [np.array([1003])], 4)
    np.testing.assert_array_equal(by_id[0], want_by_id[0])


def test_a_small_table_answers_what_every_query_has_left() -> None:
    table = runtime.compress(X[:5], "fp32")
    ids, scores = table.search(X[:2], 5, exclude_ids=[0, 1, 2, 4], exclude_lengths=[1, 3])
    assert ids.shape == scores.shape == (2, 2)  # query 1 keeps rows 0 and 3 only
    assert set(ids[1]) == {0, 3} and 0 not in ids[0]
    everything = table.search(X[:1], 3, exclude_ids=[0, 1, 2, 3, 4])
    assert everything[0].shape == (1, 0)
    nothing_left_out = table.search(X[:2], 3, exclude_ids=[], exclude_lengths=[0, 0])
    np.testing.assert_array_equal(nothing_left_out[0], table.search(X[:2], 3)[0])
    no_queries = table.search(np.zeros((0, 16), np.float32), 3, exclude_ids=[], exclude_lengths=[])
    assert no_queries[0].shape == (0, 3)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"exclude_ids": [3, 60]}, IdOutOfRange, r"exclude_ids\[1\] = 60 is out of range"),
        ({"exclude_ids": [-1]}, IdOutOfRange, r"exclude_ids\[0\] = -1 is out of range"),
        ({"exclude_lengths": [1, 0]}, InvalidRequest, "exclude_lengths needs exclude_ids"),
        ({"exclude_ids": [1, 2], "exclude_lengths": [1, 0]}, InvalidRequest, "exclude_lengths sum to 1 but 2"),
        ({"exclude_ids": [1], "exclude_lengths": [2, -1]}, InvalidRequest, r"exclude_lengths\[1\] = -1 is negative"),
        ({"exclude_ids": [1], "exclude_lengths": [1]}, InvalidRequest, "exclude_lengths has 1 entries for 2 queries"),
        ({"exclude_ids": [1.5]}, InvalidRequest, "exclude_ids must be integers"),
        ({"exclude_ids": [[1]]}, InvalidRequest, "exclude_ids must be 1-D"),
        ({"exclude_ids": [1], "exclude_lengths": [0.5, 0.5]}, InvalidRequest, "exclude_lengths must be a flat array"),
        ({"exclude_ids": [1], "exclude_lengths": np.array([2**64 - 1, 0], np.uint64)}, InvalidRequest, "int64 range"),
    ],
)
def test_bad_exclusions_are_refused_by_name(fields: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        TABLES["int8"].search(X[:2], 3, **fields)
    with pytest.raises(error, match=message):
        TABLES["int8"].search_by_id([0, 1], 3, **fields)


@pytest.mark.parametrize(
    "options",
    [
        {"codec": "pq", "subspaces": 4, "bits": 8, "iterations": 3, "rerank": "int8"},
        {"codec": "binary", "rerank": "fp32"},
    ],
)
def test_a_rescoring_table_rescores_the_candidates_it_would_without_the_ids_left_out(options: dict[str, Any]) -> None:
    # found by a probe: leaving out a query's worst row changed its top 10, the rescoring having
    # taken (k + e) x oversample cheap candidates instead of k x oversample
    x = low_rank_table(400, 16, seed=33)
    options = dict(options)
    table = runtime.compress(x, str(options.pop("codec")), **options)
    q = x[[5, 50, 150]] + 0.05
    metric = "l2" if options["rerank"] == "fp32" else "ip"
    plain = table.search(q, 10, metric, 2)
    # rows among the 60 worst of every query, by float32 scores: no query's cheap candidates
    closeness = q @ x.T if metric == "ip" else -((q[:, None, :] - x[None]) ** 2).sum(axis=2)
    worst_of_each = np.argsort(closeness, axis=1)[:, :60]
    left_out = np.array(sorted(set.intersection(*(set(row.tolist()) for row in worst_of_each))), np.int64)
    assert left_out.size
    unchanged = table.search(q, 10, metric, 2, exclude_ids=left_out)
    np.testing.assert_array_equal(unchanged[0], plain[0])
    np.testing.assert_array_equal(unchanged[1], plain[1])
    by_id = table.search_by_id([5, 50], 10, metric, 2)
    np.testing.assert_array_equal(table.search_by_id([5, 50], 10, metric, 2, exclude_ids=left_out)[0], by_id[0])
    # leaving out each query's best: never answered, and still 10 a query
    best = plain[0][:, :3]
    got = table.search(q, 10, metric, 2, exclude_ids=best.reshape(-1), exclude_lengths=[3, 3, 3])
    assert got[0].shape == (3, 10) and not any(np.isin(got[0][i], best[i]).any() for i in range(3))


@pytest.mark.parametrize("codec", ["fp32", "pq"])
def test_leaving_out_a_querys_own_id_costs_no_result(codec: str) -> None:
    # found by a review: the own row left out before `_drop_self` made it drop a real result
    small = runtime.compress(X[:5], "fp32")
    assert small.search_by_id([0], 5, exclude_ids=[0, 1])[0].shape == (1, 3)
    nine = runtime.compress(X[:9], "fp32")
    kept = nine.search_by_id([3, 4], 3, exclude_ids=[0, 1, 2, 3, 4, 5, 6])[0]
    assert kept.shape == (2, 2) and all(set(row) == {7, 8} for row in kept.tolist())
    options: dict[str, Any] = {"subspaces": 4, "rerank": "int8"} if codec == "pq" else {}
    rescoring = runtime.compress(X, codec, **options)
    plain = rescoring.search_by_id([0, 7], 6, oversample=2)
    own = rescoring.search_by_id([0, 7], 6, oversample=2, exclude_ids=[0, 7])
    np.testing.assert_array_equal(own[0], plain[0])
    np.testing.assert_array_equal(own[1], plain[1])


# Tiered tables with rescoring tiers and a delta: the oracle is the same table with the rows
# deleted, searched one query at a time (deleted rows never reach a tier's scan, so each tier
# rescores what it would hold without them).
Y = low_rank_table(300, 16, seed=37)
KEYS = 500 + 7 * np.arange(300, dtype=np.int64)
TIERED_SPECS: dict[str, list[dict[str, Any]]] = {
    "pq+int8 rerank, int8": [
        {"rows": {"start": 0, "stop": 200}, "codec": "pq", "subspaces": 2, "bits": 4, "rerank": "int8"},
        {"rows": {"start": 200, "stop": 300}, "codec": "int8"},
    ],
    "binary+fp32 rerank, pq+fp16 rerank": [
        {"rows": {"start": 0, "stop": 100}, "codec": "binary", "rerank": "fp32"},
        {"rows": {"start": 100, "stop": 300}, "codec": "pq", "subspaces": 2, "bits": 4, "rerank": "fp16"},
    ],
}


def tiered_table(spec: str, with_delta: bool, keyed: bool = True) -> runtime.Table:
    """Y in two tiers (keys KEYS, or dense); with_delta: rows replaced, added and deleted."""
    table = runtime.compress(Y, tiers=TIERED_SPECS[spec], keys=KEYS if keyed else None)
    if with_delta:
        table.upsert([*KEYS[[3, 150, 250]].tolist(), 9001, 9002], np.concatenate([Y[[50, 10, 11]] * 1.3, Y[[5, 80]]]))
        table.delete(KEYS[[4, 220]])
    return table


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(sorted(TIERED_SPECS)),
    with_delta=st.booleans(),
    nq=st.integers(1, 3),
    k=st.integers(1, 12),
    oversample=st.integers(1, 3),
    by_id=st.booleans(),
    data=st.data(),
)
def test_tiered_and_updated_tables_answer_as_if_the_rows_were_deleted(
    spec: str, with_delta: bool, nq: int, k: int, oversample: int, by_id: bool, data: st.DataObject
) -> None:
    table = tiered_table(spec, with_delta)
    held = table.search(Y[:1], 400)[0][0]  # every key the table holds
    candidates = np.concatenate([held, [KEYS[4], 123456]])  # and one deleted, one never held
    metric = "ip" if spec.startswith("pq") else "l2"
    queries = data.draw(st.lists(st.sampled_from(held.tolist()), min_size=nq, max_size=nq, unique=True))
    lists = [
        np.array(data.draw(st.lists(st.sampled_from(candidates.tolist()), max_size=250)), np.int64) for _ in queries
    ]
    lists = [out[out != own] for out, own in zip(lists, queries, strict=True)] if by_id else lists
    q = Y[[(key - 500) // 7 % 300 for key in queries]] + 0.01
    left_out, lengths = np.concatenate(lists), [out.size for out in lists]
    if by_id:
        got = table.search_by_id(queries, k, metric, oversample, exclude_ids=left_out, exclude_lengths=lengths)
    else:
        got = table.search(q, k, metric, oversample, exclude_ids=left_out, exclude_lengths=lengths)
    answers = []
    for i, out in enumerate(lists):
        oracle = tiered_table(spec, with_delta)
        present = np.intersect1d(out, held)
        if present.size:
            oracle.delete(present)
        if by_id:
            answers.append(oracle.search_by_id([queries[i]], k, metric, oversample))
        else:
            answers.append(oracle.search(q[i : i + 1], k, metric, oversample))
    width = min(ids.shape[1] for ids, _ in answers)
    want_ids = np.concatenate([ids[:, :width] for ids, _ in answers])
    want_scores = np.concatenate([s[:, :width] for _, s in answers])
    np.testing.assert_allclose(got[1], want_scores, rtol=1e-5, atol=1e-5)
    # a batch and a single query may round a score differently (another kernel path): ids may
    # then trade places with a neighbour whose score is as good, nowhere else
    for row, column in zip(*np.nonzero(got[0] != want_ids), strict=True):
        neighbours = want_scores[row, max(column - 1, 0) : column + 2]
        assert np.isclose(neighbours, want_scores[row, column], rtol=1e-5, atol=1e-5).sum() > 1, (row, column)
        assert got[0][row, column] in want_ids[row], (row, column)


@pytest.mark.parametrize("spec", sorted(TIERED_SPECS))
def test_a_dense_tiered_table_leaves_out_ids_as_its_keyed_twin_deletes_them(spec: str) -> None:
    dense, keyed = tiered_table(spec, False, keyed=False), tiered_table(spec, False)
    metric = "ip" if spec.startswith("pq") else "l2"
    top = dense.search(Y[[8, 261]], 12, metric, 2)[0]
    np.testing.assert_array_equal(KEYS[top], keyed.search(Y[[8, 261]], 12, metric, 2)[0])  # twins
    left_out = [top[0, ::2], top[1, :7]]  # every other of query 0's best, query 1's best 7
    got = dense.search(Y[[8, 261]], 12, metric, 2, exclude_ids=np.concatenate(left_out), exclude_lengths=[6, 7])
    for i, out in enumerate(left_out):
        oracle = tiered_table(spec, False)
        oracle.delete(KEYS[out])
        ids, scores = oracle.search(Y[[8, 261]][i : i + 1], 12, metric, 2)
        np.testing.assert_array_equal(KEYS[got[0][i]], ids[0])
        np.testing.assert_allclose(got[1][i], scores[0], rtol=1e-6)


def test_one_querys_exclusions_do_not_narrow_anothers_rescoring() -> None:
    # found by a review: in one batch on a small table, the rescored pool was as wide as the
    # fewest candidates any query kept, so a query leaving most rows out changed the others' answers
    x = low_rank_table(20, 16, seed=41)
    table = runtime.compress(x, "binary", rerank="fp32")
    q = x[[2, 9]] + 0.05
    alone = table.search(q[1:], 5, "l2", 4)
    together = table.search(q, 5, "l2", 4, exclude_ids=np.arange(14), exclude_lengths=[14, 0])
    np.testing.assert_array_equal(together[0][1], alone[0][0])
    np.testing.assert_array_equal(together[0][0], table.search(q[:1], 5, "l2", 4, exclude_ids=np.arange(14))[0][0])
