"""Keyed, tiered and mutable tables, and their format-2 artifacts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runtime
from runtime.errors import ArtifactCorrupt, DeltaFull, InvalidRequest, KeyNotFound
from tests.conftest import low_rank_table

N, D = 400, 32


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return low_rank_table(N, D, seed=21)


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    rng = np.random.default_rng(5)
    extremes = [0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    rest = rng.choice(np.arange(-(10**12), 10**12, 7919), N - len(extremes), replace=False)
    return np.concatenate([extremes, rest]).astype(np.int64)


def test_keyed_lookup_search_and_score_answer_with_keys(x: np.ndarray, keys: np.ndarray) -> None:
    dense = runtime.compress(x, "int8")
    keyed = runtime.compress(x, "int8", keys=keys)
    pick = np.array([3, 0, 399, 2, 1])
    np.testing.assert_array_equal(keyed.lookup(keys[pick]), dense.lookup(pick))
    ids, scores = keyed.search(x[:3], 6)
    want_ids, want_scores = dense.search(x[:3], 6)
    np.testing.assert_array_equal(ids, keys[want_ids])
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    got = keyed.score(keys[pick].reshape(1, 5), query_ids=keys[[7]])
    np.testing.assert_allclose(got, dense.score(pick.reshape(1, 5), query_ids=[7]), rtol=1e-5)
    by_id, _ = keyed.search_by_id(keys[[9]], 4)
    assert keys[9] not in by_id and np.isin(by_id, keys).all()
    assert keyed.nbytes == dense.nbytes + keys.nbytes + keyed.keymap.nbytes  # type: ignore[union-attr]


def test_missing_keys_error_names_the_key_or_give_zeros(x: np.ndarray, keys: np.ndarray) -> None:
    strict = runtime.compress(x, "int8", keys=keys)
    absent = 123456789  # keys are multiples of 7919 plus the extremes
    with pytest.raises(KeyNotFound, match=rf"keys\[1\] = {absent} is not in the table"):
        strict.lookup([keys[5], absent])
    lenient = runtime.compress(x, "int8", keys=keys, missing="zeros")
    rows, missing = lenient.lookup_counted([keys[5], absent, absent + 1])
    assert missing == 2 and not rows[1:].any() and rows[0].any()
    with pytest.raises(InvalidRequest, match="repeats"):
        runtime.compress(x, "int8", keys=np.zeros(N, np.int64))


def _tiers(n: int) -> list[dict[str, object]]:
    hot = np.arange(0, n, 5)
    cold = np.setdiff1d(np.arange(n), hot)
    return [
        {"rows": hot.tolist(), "codec": "int8"},
        {"rows": cold, "codec": "pq", "subspaces": 4, "iterations": 4, "dim": 16, "rerank": "fp16"},
    ]


def test_tiered_table_dispatches_and_merges_one_top_k(x: np.ndarray) -> None:
    t = runtime.compress(x, tiers=_tiers(N))
    assert [tier.rows for tier in t.tiers] == [80, 320] and t.tiers[1].projection is not None
    rows = t.lookup(np.arange(N))
    # exact top-k over what lookups return: tiers' scans, corrected for projection, agree with it
    q = low_rank_table(4, D, seed=9)
    for metric in ("ip", "l2"):
        ids, scores = t.search(q, 10, metric, oversample=N)
        exact = q @ rows.T if metric == "ip" else ((q[:, None, :] - rows[None]) ** 2).sum(-1)
        np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), rtol=1e-3, atol=1e-3)
        best = np.sort(-exact if metric == "ip" else exact, axis=1)[:, :10]
        np.testing.assert_allclose(-scores if metric == "ip" else scores, best, rtol=1e-3, atol=1e-3)
        cands = np.array([[0, 1, 2, 399]] * 4)
        np.testing.assert_allclose(
            t.score(cands, queries=q, metric=metric), np.take_along_axis(exact, cands, 1), rtol=1e-3, atol=1e-3
        )
    hot_error = np.linalg.norm(rows[::5] - x[::5]) / np.linalg.norm(x[::5])
    assert hot_error < 0.02
    # the tier index: each row's slot and each tier's rows, uint16 for a table this small
    assert t.nbytes == sum(tier.nbytes for tier in t.tiers) + N * 2 + N * 2


def test_hamming_is_offered_only_where_every_tier_has_codes_of_one_length(x: np.ndarray) -> None:
    # found by a review: binary tiers of 32 and 8 bits were merged by their counts of differing
    # bits, and the short codes won nearly every place
    same = runtime.compress(
        x, tiers=[{"rows": slice(0, 100), "codec": "binary"}, {"rows": slice(100, N), "codec": "binary"}]
    )
    assert "hamming" in same.metrics
    ids, _ = same.search(x[:2], 5, "hamming")
    assert ids.shape == (2, 5)
    mixed = runtime.compress(
        x, tiers=[{"rows": slice(0, 100), "codec": "binary"}, {"rows": slice(100, N), "codec": "binary", "dim": 8}]
    )
    assert "hamming" not in mixed.metrics and {"ip", "l2"} <= set(mixed.metrics)
    with pytest.raises(InvalidRequest, match="hamming"):
        mixed.search(x[:2], 5, "hamming")


@pytest.mark.parametrize("rerank", ["int8", "pq"])
def test_a_stored_row_as_a_hamming_query_is_its_own_code_with_or_without_a_delta(x: np.ndarray, rerank: str) -> None:
    # found by a review: once the table had a delta, a query row's Hamming code was made from the
    # signs of its rerank codec's reconstruction, and distances to it moved by a bit or two
    params = {"subspaces": 8, "bits": 4} if rerank == "pq" else {}
    table = runtime.compress(x, "binary", rerank=rerank, rerank_options=params)
    ids = np.arange(0, N, 7)
    before = table.search_by_id(ids, 10, "hamming")
    cands = np.tile(np.arange(8), (ids.size, 1))
    scored = table.score(cands, query_ids=ids, metric="hamming")
    codes = np.unpackbits(table.tiers[0].primary.arrays["codes"].view(np.uint8), axis=1)
    want = (codes[ids][:, None, :] != codes[cands]).sum(-1)
    np.testing.assert_array_equal(scored, want)
    table.upsert([N - 1], x[N - 1 :])  # the row it holds, encoded again: nothing should move
    after = table.search_by_id(ids, 10, "hamming")
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(table.score(cands, query_ids=ids, metric="hamming"), want)


def test_tier_specs_must_cover_every_row_once(x: np.ndarray) -> None:
    with pytest.raises(InvalidRequest, match="in no tier"):
        runtime.compress(x, tiers=[{"rows": {"start": 0, "stop": 10}, "codec": "int8"}])
    with pytest.raises(InvalidRequest, match="earlier tier"):
        runtime.compress(x, tiers=[{"rows": slice(0, 300), "codec": "int8"}, {"rows": slice(200, N), "codec": "fp16"}])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"start": "0"}, r"rows\.start must be an integer, got '0'"),
        ({"start": 0.5}, r"rows\.start must be an integer, got 0\.5"),
        ({"start": [0]}, r"rows\.start must be an integer, got \[0\]"),
        ({"stop": float("inf")}, r"rows\.stop must be an integer, got inf"),
        ({"stop": True}, r"rows\.stop must be an integer, got True"),
        ({"start": -5}, r"rows\.start = -5 is outside 0\.\.400"),
        ({"stop": 5000}, r"rows\.stop = 5000 is outside 0\.\.400"),
        ({"start": 10, "stop": 5}, r"start 10 is past stop 5"),
    ],
)
def test_tier_row_bounds_are_integers_within_the_table(x: np.ndarray, rows: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        runtime.compress(x, tiers=[{"rows": rows, "codec": "int8"}])


@pytest.mark.parametrize(
    ("tier", "message"),
    [
        ({"rerank": "fp16", "rerank_options": [1]}, r"tiers\[0\]\.rerank_options must be an object"),
        ({"rerank": "fp16", "rerank_options": "x"}, r"tiers\[0\]\.rerank_options must be an object"),
        ({"rerank_options": {"iterations": 3}}, "given without a rerank codec"),
        ({"codec": ["int8"]}, r"unknown codec \['int8'\]"),
    ],
)
def test_tier_rerank_options_and_codec_names_are_checked(x: np.ndarray, tier: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        runtime.compress(x, tiers=[{"rows": {"start": 0, "stop": N}, "codec": "int8", **tier}])
    with pytest.raises(InvalidRequest, match=r"rerank_options .* given without a rerank codec"):
        runtime.compress(x, "int8", rerank_options={"iterations": 3})


def test_format2_round_trip_of_keyed_tiered_table(tmp_path: Path, x: np.ndarray, keys: np.ndarray) -> None:
    t = runtime.compress(x, tiers=_tiers(N), keys=keys, missing="zeros")
    t.sequence = 41
    loaded = runtime.load_table(t.save(tmp_path / "v2"))
    assert (loaded.sequence, loaded.missing, loaded.keyed, len(loaded.tiers)) == (41, "zeros", True, 2)
    np.testing.assert_array_equal(loaded.lookup(keys[::7]), t.lookup(keys[::7]))
    q = x[:3]
    np.testing.assert_array_equal(loaded.search(q, 5)[0], t.search(q, 5)[0])
    rows_file = tmp_path / "v2" / "tier1.rows.npy"
    data = bytearray(rows_file.read_bytes())
    data[-1] ^= 1
    rows_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match=r"tier1\.rows"):
        runtime.load_table(tmp_path / "v2")
    # an artifact whose tiers overlap (checksums made to match) is refused too
    t2 = runtime.compress(x, tiers=_tiers(N))
    t2.tier_rows[1][0] = 0  # type: ignore[index]
    with pytest.raises(ArtifactCorrupt, match=r"two tiers|ascending"):
        runtime.load_table(t2.save(tmp_path / "bad"))


def test_upsert_and_delete_are_seen_at_once_and_compact(tmp_path: Path, x: np.ndarray, keys: np.ndarray) -> None:
    t = runtime.compress(x, tiers=_tiers(N), keys=keys, delta_capacity=50)
    new_row = np.full((1, D), 3.0, np.float32)
    before_bytes = t.nbytes
    seq = t.upsert(keys[[5]], new_row)
    # the delta's arrays count: int8 rows grown to 64 slots (36 B), indexes; no second ip table
    assert before_bytes + 64 * 36 < t.nbytes < before_bytes + 64 * 36 + 1024
    assert seq == 1 and t.delta_rows == 1
    np.testing.assert_allclose(t.lookup(keys[[5]]), new_row, atol=0.05)
    ids, _ = t.search(new_row, 3, "ip")
    assert ids[0, 0] == keys[5] and (ids[0] == keys[5]).sum() == 1  # no stale base row of key 5
    t.upsert([777], -new_row, sequence=100)  # a new key goes to the cheapest tier
    assert t.sequence == 100 and t.lookup([777])[0, 0] < -2
    t.delete(keys[[6, 7]])
    with pytest.raises(KeyNotFound, match=str(keys[6])):
        t.lookup(keys[[6]])
    ids, _ = t.search(x[6:8], 20, "ip")
    assert not np.isin(ids, keys[[6, 7]]).any()
    # bad batches change nothing
    before = t.lookup(keys[[5]])
    for bad in (np.full((1, D), np.nan), np.ones((1, D + 1)), np.array([["a"] * D])):
        with pytest.raises(InvalidRequest):
            t.upsert(keys[[5]], bad)
    with pytest.raises(KeyNotFound):
        t.delete([keys[8], 31337])
    assert t.sequence == 101 and np.array_equal(t.lookup(keys[[5]]), before) and t.lookup(keys[[8]]).any()
    with pytest.raises(DeltaFull, match="compact"):
        t.upsert(keys[10:70], x[10:70])
    compacted = t.compact()
    assert compacted.rows == N - 1 and compacted.delta_rows == 0 and compacted.sequence == 101
    for key in (keys[5], 777, keys[100]):
        np.testing.assert_array_equal(compacted.lookup([key]), t.lookup([key]))
    loaded = runtime.load_table(t.save(tmp_path / "c"))
    assert loaded.sequence == 101 and loaded.rows == N - 1
    np.testing.assert_array_equal(loaded.lookup(keys[[5, 100]]), t.lookup(keys[[5, 100]]))


def test_dense_table_takes_upserts_of_its_ids_only(x: np.ndarray) -> None:
    t = runtime.compress(x, "pq", subspaces=8, bits=4, iterations=3)
    with pytest.raises(runtime.IdOutOfRange):
        t.upsert([N], x[:1])
    with pytest.raises(InvalidRequest, match="dense"):
        t.delete([0])
    t.upsert([3], x[10:11])
    np.testing.assert_array_equal(t.lookup([3]), t.lookup([10]))
    # by l2 the encoding of row 10 is the code nearest to x[10] in every subspace, so row 10 and
    # its copy at 3 rank first whatever the codebooks (by ip a longer row may outrank them)
    ids, _ = t.search(x[10:11], 2, "l2")
    assert set(ids[0].tolist()) == {3, 10}


def test_dense_upsert_takes_read_only_ids(x: np.ndarray) -> None:
    """Binary bodies arrive as read-only buffers (np.frombuffer): a dense table's upsert must not
    write into its ids."""
    t = runtime.compress(x, "int8")
    ids = np.frombuffer(np.array([4, 9], "<i8").tobytes(), dtype="<i8")
    rows = np.frombuffer(x[20:22].tobytes(), dtype="<f4").reshape(2, -1)
    assert t.upsert(ids, rows) == 1
    np.testing.assert_array_equal(t.lookup([4, 9]), t.lookup([20, 21]))


@pytest.mark.parametrize("codec", ["int8", "fp16"])
def test_small_lookups_see_an_upsert_at_once(x: np.ndarray, codec: str) -> None:
    """A dense table answers lookups of int64 arrays in one kernel call on the base rows; from the
    first upsert on they must go where the delta is read, even once the parallel threshold is set
    again (which binds that kernel anew)."""
    t = runtime.compress(x, codec)
    t.set_parallel_min_ids(7)  # binds the one-call kernels again, with the new threshold
    assert t._direct_gather is not None and t._direct_gather.args[-1] == 7  # type: ignore[attr-defined]
    assert t._direct_bags is not None and t._direct_bags.args[-1] == 7  # type: ignore[attr-defined]
    t.set_parallel_min_ids(512)
    four = np.array([4], dtype=np.int64)
    many = np.arange(4, 4 + 600, dtype=np.int64) % x.shape[0]  # past the parallel threshold
    halves = np.array([0, 300], dtype=np.int64)
    before, before_many = t.lookup(four), t.lookup(many)
    before_bags = t.lookup_pooled(many, halves)
    np.testing.assert_array_equal(before_bags, t.lookup_pooled(many.tolist(), halves.tolist()))
    np.testing.assert_array_equal(before, t.lookup([4]))
    np.testing.assert_array_equal(before_many, t.lookup(many.tolist()))
    t.upsert(four, x[20:21])
    want = t.lookup([20])
    assert not np.array_equal(before, want)
    want_many = before_many.copy()
    want_many[many == 4] = want[0]
    for parallel_min_ids in (None, 1):
        if parallel_min_ids is not None:
            t.set_parallel_min_ids(parallel_min_ids)
        np.testing.assert_array_equal(t.lookup(four), want)
        np.testing.assert_array_equal(t.lookup_counted(four)[0], want)
        np.testing.assert_array_equal(t.lookup(np.array([4, 5], dtype=np.int64))[0], want[0])
        np.testing.assert_array_equal(t.lookup(many), want_many)
        np.testing.assert_allclose(
            t.lookup_pooled(many, halves),
            np.stack([want_many[:300].sum(0), want_many[300:].sum(0)]),
            rtol=1e-5,
            atol=1e-4,
        )


@pytest.mark.parametrize("codec", ["int8", "fp16"])
def test_one_call_bags_refuse_what_the_general_path_names(x: np.ndarray, codec: str) -> None:
    """int64 arrays take the one-call bag kernel; what it refuses must still end in the error
    that names the problem, with nothing written and the table answering as before."""
    t = runtime.compress(x, codec)
    assert t._direct_bags is not None
    ids = np.array([3, 5, 7, 9], dtype=np.int64)
    offsets = np.array([0, 2], dtype=np.int64)
    good = t.lookup_pooled(ids, offsets, "mean")
    np.testing.assert_allclose(good, [t.lookup([3, 5]).mean(0), t.lookup([7, 9]).mean(0)], rtol=1e-5, atol=1e-5)
    with pytest.raises(runtime.IdOutOfRange, match=rf"ids\[2\] = {N}"):
        t.lookup_pooled(np.array([3, 5, N, 9], dtype=np.int64), offsets)
    with pytest.raises(runtime.IdOutOfRange, match=r"ids\[0\] = -1"):
        t.lookup_pooled(np.array([-1, 5], dtype=np.int64), np.array([0], dtype=np.int64))
    with pytest.raises(InvalidRequest, match=r"offsets\[0\] must be 0"):
        t.lookup_pooled(ids, np.array([1, 2], dtype=np.int64))
    with pytest.raises(InvalidRequest, match="exceeds the number of ids"):
        t.lookup_pooled(ids, np.array([0, 5], dtype=np.int64))
    with pytest.raises(InvalidRequest, match=r"non-decreasing; offsets\[2\] = 2"):
        t.lookup_pooled(ids, np.array([0, 3, 2], dtype=np.int64))
    empty = t.lookup_pooled(np.zeros(0, dtype=np.int64), np.array([0, 0], dtype=np.int64))
    assert empty.shape == (2, x.shape[1]) and not empty.any()
    assert t.lookup_pooled(ids, np.zeros(0, dtype=np.int64)).shape == (0, x.shape[1])
    np.testing.assert_array_equal(t.lookup_pooled(ids, offsets, "mean"), good)


def test_readers_never_see_half_written_rows(x: np.ndarray) -> None:
    t = runtime.compress(x[:100], "int8", keys=np.arange(100, dtype=np.int64) * 3)
    old = t.lookup(np.arange(100) * 3)
    new = runtime.compress(-x[:100], "int8").lookup(np.arange(100))
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = t.lookup(np.arange(100) * 3)
            same = np.all(got == old, axis=1) | np.all(got == new, axis=1)
            if not same.all():
                errors.append(f"row {int(np.flatnonzero(~same)[0])} is neither old nor new")
            ids, scores = t.search(x[:2], 5, "ip")
            if len(set(ids[0].tolist())) != 5:
                errors.append("a key was returned twice")
            # each result scores as its old row or its new row does, never as a mixture
            rows = ids // 3
            as_old = np.einsum("qkd,qd->qk", old[rows], x[:2])
            as_new = np.einsum("qkd,qd->qk", new[rows], x[:2])
            close = np.isclose(scores, as_old, rtol=1e-4, atol=1e-4) | np.isclose(scores, as_new, rtol=1e-4, atol=1e-4)
            if not close.all():
                errors.append(f"search scored key {int(ids[~close][0])} as neither its old nor its new row")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for round_ in range(5):  # new, old, new, old, new: readers overlap many batches
        sign = -1 if round_ % 2 == 0 else 1
        for start in range(0, 100, 5):
            t.upsert(np.arange(start, start + 5) * 3, sign * x[start : start + 5])
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    np.testing.assert_array_equal(t.lookup(np.arange(100) * 3), new)


def test_a_delta_view_answers_as_it_did_when_taken_after_later_batches(x: np.ndarray, keys: np.ndarray) -> None:
    """The delta's indexes are appended to in place; a view taken earlier must not see later batches
    (rows changed again, deleted, new keys, the index tables rebuilt larger)."""
    tiers = [{"rows": np.arange(0, N, 2), "codec": "int8"}, {"rows": np.arange(1, N, 2), "codec": "fp16"}]
    t = runtime.compress(x, tiers=tiers, keys=keys)
    t.upsert(keys[:40], -x[:40])
    t.upsert(np.array([7, 9], np.int64) * 10**13, x[:2])
    t.delete(keys[40:50])
    taken = t._delta.view
    looked_up = t.lookup(keys[:40])
    before: dict[str, Any] = {
        "locate": taken.locate(np.arange(N + 2, dtype=np.int64)),
        "added": taken.added_row_of(np.array([7, 9, 11], np.int64) * 10**13),
        "dead": [taken.dead_slots[i].contains(np.arange(400)) for i in range(2)],
        "stale": [taken.stale_local[i].contains(np.arange(N // 2)) for i in range(2)],
    }
    for round_ in range(6):  # the same rows again, more rows, more new keys: indexes grow past doubling
        t.upsert(keys[: 60 + 40 * round_], x[: 60 + 40 * round_] * (round_ + 2))
        t.upsert(np.arange(11 + 100 * round_, 111 + 100 * round_, dtype=np.int64) * 10**13, x[:100])
    after: dict[str, Any] = {
        "locate": taken.locate(np.arange(N + 2, dtype=np.int64)),
        "added": taken.added_row_of(np.array([7, 9, 11], np.int64) * 10**13),
        "dead": [taken.dead_slots[i].contains(np.arange(400)) for i in range(2)],
        "stale": [taken.stale_local[i].contains(np.arange(N // 2)) for i in range(2)],
    }
    for name in ("locate", "added", "dead", "stale"):
        for was, now in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(was, now, err_msg=name)
    assert taken.changed.size == 52 and taken.added_keys.tolist() == [7 * 10**13, 9 * 10**13]
    assert t._delta.view.added_keys.size == 2 + 600 and t._delta.view.changed.size > 52
    # the current view answers with the newest rows, and a compacted table agrees
    np.testing.assert_allclose(t.lookup(keys[:40]), x[:40] * 7, atol=0.02 * float(np.abs(x[:40] * 7).max()))
    assert not np.allclose(looked_up, t.lookup(keys[:40]))
    np.testing.assert_array_equal(t.compact().lookup(keys[:300]), t.lookup(keys[:300]))


@pytest.mark.parametrize(
    "tier",
    [
        {"codec": "int8"},
        {"codec": "int4"},
        {"codec": "fp16"},
        {"codec": "pq", "subspaces": 8, "bits": 4, "iterations": 3},
        {"codec": "int8", "dim": 8},
    ],
    ids=["int8", "int4", "fp16", "pq", "int8-reduced"],
)
def test_one_tier_lookups_through_a_delta_agree_with_the_compacted_table(
    x: np.ndarray, keys: np.ndarray, tier: dict[str, Any]
) -> None:
    """A one-tier keyed table with a delta resolves keys in one kernel and gathers from base and
    delta together (in one pass for the row-wise codecs): every kind of key in one batch."""
    t = runtime.compress(x, tiers=[{"rows": slice(0, N), **tier}], keys=keys, missing="zeros")
    added = np.array([-(2**63) + 1, 2**63 - 2, 1, 12345], np.int64)
    assert not np.isin(added, keys).any()
    t.upsert(keys[10:60], x[10:60] * -1.5)
    t.upsert(added, x[:4] + 2)
    t.upsert(keys[20:30], x[20:30] * 3)  # rows already in the delta change again
    t.delete(np.concatenate([keys[60:70], added[2:3]]))
    absent = np.array([7, -7], np.int64)
    batch = np.concatenate([keys[:80], added, absent, keys[5:6]])
    order = np.random.default_rng(0).permutation(batch.size)
    got, missing = t.lookup_counted(batch[order])
    gone = np.isin(batch[order], np.concatenate([keys[60:70], added[2:3], absent]))
    assert missing == int(gone.sum()) == 13
    assert not got[gone].any()
    compacted = t.compact()
    # a reduced tier's rows go back to d through a matrix product, whose rounding varies with the
    # batch it is given: equal to a few ulp there, bit for bit otherwise
    want = compacted.lookup(batch[order][~gone])
    if "dim" in tier:
        np.testing.assert_allclose(got[~gone], want, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got[~gone], want)
    strict = runtime.compress(x, tiers=[{"rows": slice(0, N), **tier}], keys=keys)
    strict.delete(keys[60:61])
    with pytest.raises(KeyNotFound, match=str(keys[60])):
        strict.lookup(np.concatenate([keys[:3], keys[60:61]]))


@st.composite
def tier_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int, str]:
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.integers(-2, 3, (n, 4)).astype(np.float32)  # few distinct scores: ties only ids break
    tier_of = rng.integers(0, draw(st.integers(1, 3)), n)
    keys = rng.choice(np.arange(-1000, 1000), n, replace=False).astype(np.int64) if draw(st.booleans()) else None
    q = rng.integers(-2, 3, (2, 4)).astype(np.float32)
    return x, tier_of, keys, q, draw(st.integers(1, 70)), draw(st.sampled_from(["ip", "l2"]))


@given(tier_cases())
def test_tier_merge_is_the_exact_top_k_with_ties_by_ascending_row(
    case: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int, str],
) -> None:
    x, tier_of, keys, q, k, metric = case
    specs = [{"rows": np.flatnonzero(tier_of == t), "codec": "fp32"} for t in np.unique(tier_of)]
    table = runtime.compress(x, tiers=specs, keys=keys)
    ids, scores = table.search(q, k, metric)
    exact = q @ x.T if metric == "ip" else ((q[:, None, :] - x[None]) ** 2).sum(-1)
    names = np.arange(x.shape[0]) if keys is None else keys
    for row in range(q.shape[0]):
        order = np.lexsort((np.arange(x.shape[0]), -exact[row] if metric == "ip" else exact[row]))[:k]
        np.testing.assert_array_equal(ids[row], names[order])
        np.testing.assert_array_equal(scores[row], exact[row][order])


def test_bags_and_search_by_id_on_keyed_tiered_tables(x: np.ndarray, keys: np.ndarray) -> None:
    t = runtime.compress(x, tiers=_tiers(N), keys=keys, missing="zeros")
    rows = t.lookup(keys)
    bag_keys = keys[[1, 2, 3, 9]]
    sums, missing = t.lookup_pooled_counted([*bag_keys.tolist(), 5], [0, 3], "sum")
    np.testing.assert_allclose(sums, [rows[[1, 2, 3]].sum(0), rows[9]], rtol=1e-5, atol=1e-5)
    assert missing == 1  # key 5 is absent: a zero row in the second bag
    ids, scores = t.search_by_id(keys[[0, 11]], 5, "ip", oversample=N)
    assert keys[0] not in ids[0] and keys[11] not in ids[1] and ids.shape == (2, 5)
    exact = rows[[0, 11]] @ rows.T
    position = {int(k): i for i, k in enumerate(keys.tolist())}
    found = np.array([[position[int(k)] for k in row] for row in ids])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, found, 1), rtol=1e-3, atol=1e-3)


@st.composite
def update_scripts(draw: st.DrawFn) -> tuple[int, list[tuple[str, list[int], int]], int]:
    n = draw(st.integers(1, 30))
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["upsert", "delete"]),
                st.lists(st.integers(0, 45), max_size=8, unique=True),
                st.integers(0, 2**31),
            ),
            max_size=8,
        )
    )
    return n, ops, draw(st.integers(1, 40))


@given(update_scripts())
def test_updates_match_a_dict_model(script: tuple[int, list[tuple[str, list[int], int]], int]) -> None:
    n, ops, k = script
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    table = runtime.compress(
        x,
        tiers=[{"rows": np.arange(0, n, 2), "codec": "fp32"}]
        + ([{"rows": np.arange(1, n, 2), "codec": "fp32"}] if n > 1 else []),
        keys=np.arange(n, dtype=np.int64) * 10,
    )
    model = {10 * i: x[i] for i in range(n)}
    for op, picks, seed in ops:
        keys = np.array([10 * p for p in picks], np.int64)
        if op == "upsert":
            rows = np.random.default_rng(seed).standard_normal((keys.size, 4)).astype(np.float32)
            table.upsert(keys, rows)
            model.update({int(key): row for key, row in zip(keys, rows, strict=True)})
        elif all(int(key) in model for key in keys):
            table.delete(keys)
            for key in keys:
                del model[int(key)]
        else:
            with pytest.raises(KeyNotFound):
                table.delete(keys)
    for current in (table, table.compact()):
        live = np.array(sorted(model), np.int64)
        if live.size:
            np.testing.assert_array_equal(current.lookup(live), np.array([model[int(key)] for key in live]))
        for key in set(range(0, 460, 10)) - set(model):
            with pytest.raises(KeyNotFound):
                current.lookup([key])
        q = np.ones((1, 4), np.float32)
        ids, scores = current.search(q, k, "l2")
        if live.size:
            values = np.array([model[int(key)] for key in live])
            exact = ((values - q) ** 2).sum(1)
            assert ids.shape[1] == min(k, live.size)
            np.testing.assert_allclose(scores[0], np.sort(exact)[: ids.shape[1]], rtol=1e-5, atol=1e-6)
            assert set(ids[0].tolist()) <= set(live.tolist()) and len(set(ids[0].tolist())) == ids.shape[1]


def _rewrite_array(path: Path, name: str, value: np.ndarray) -> None:
    """Replace an array and its manifest entry (checksum included): damage only the checks see."""
    import json

    from runtime import artifact

    file = path / f"{name.replace('/', '--')}.npy"
    np.save(file, value)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"][name].update(dtype=value.dtype.str, shape=list(value.shape), sha256=artifact.sha256_file(file))
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_format2_consistency_checks(tmp_path: Path, x: np.ndarray, keys: np.ndarray) -> None:
    path = runtime.compress(x, tiers=_tiers(N), keys=keys).save(tmp_path / "t")
    repeated = keys.copy()
    repeated[9] = repeated[2]
    _rewrite_array(path, "keys", repeated)
    with pytest.raises(ArtifactCorrupt, match=r"keys\[9\].*repeats"):
        runtime.load_table(path)
    path = runtime.compress(x, tiers=_tiers(N), keys=keys).save(tmp_path / "u")
    _rewrite_array(path, "tier1/projection.basis", np.zeros((D, 12), np.float32))
    with pytest.raises(ArtifactCorrupt, match="tier 1"):
        runtime.load_table(path)
    path = runtime.compress(x, tiers=_tiers(N), keys=keys).save(tmp_path / "v")
    _rewrite_array(path, "keys", keys[:-1])
    with pytest.raises(ArtifactCorrupt, match="keys"):
        runtime.load_table(path)


def test_a_one_tier_reduced_dimension_table_answers_in_the_full_dimension(x: np.ndarray) -> None:
    tiers = [{"rows": {"start": 0, "stop": x.shape[0]}, "codec": "fp32", "dim": 4}]
    t = runtime.compress(x, tiers=tiers)
    got = t.lookup(np.arange(5))
    assert got.shape == (5, x.shape[1])
    bags = t.lookup_pooled(np.arange(4), np.array([0, 2]), mode="sum")
    np.testing.assert_allclose(bags, got[:4].reshape(2, 2, -1).sum(axis=1), rtol=1e-5, atol=1e-6)
    ids, scores = t.search(x[:3], 5, "ip")
    assert ids.shape == (3, 5)
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", x[:3], t.lookup(ids[:, 0])), rtol=1e-4, atol=1e-4)
    by_id = t.score(np.arange(6).reshape(2, 3), query_ids=np.array([0, 1]))
    assert by_id.shape == (2, 3)


def test_tier_index_is_one_narrow_integer_per_row_and_addresses_past_uint16(tmp_path: Path) -> None:
    from runtime.table import index_dtype, tier_index_bytes

    assert index_dtype(1 << 16) is np.uint16 and index_dtype((1 << 16) + 1) is np.uint32
    assert index_dtype((1 << 32) + 1) is np.int64 and tier_index_bytes(10, 1) == 0
    n = (1 << 16) + 5
    x = np.random.default_rng(3).standard_normal((n, 4)).astype(np.float32)
    # interleaved tiers, so a slot differs from its row and every row past 65,535 goes through uint32
    rows = np.arange(n)
    t = runtime.compress(
        x, tiers=[{"rows": rows[rows % 3 == 0], "codec": "fp16"}, {"rows": rows[rows % 3 != 0], "codec": "int8"}]
    )
    assert (
        t.nbytes
        == sum(tier.nbytes for tier in t.tiers) + tier_index_bytes(n, 2)
        == sum(tier.nbytes for tier in t.tiers) + 2 * 4 * n
    )
    probe = np.array([0, 1, 2, 65535, 65536, n - 1, n - 2], np.int64)
    got = t.lookup(probe)
    np.testing.assert_allclose(got[probe % 3 == 0], x[probe[probe % 3 == 0]], atol=1e-2)
    np.testing.assert_allclose(got, x[probe], atol=0.05)
    ids, _ = t.search(x[[n - 1, 65536]], 1, "l2")
    assert ids[:, 0].tolist() == [n - 1, 65536]
    loaded = runtime.load_table(t.save(tmp_path / "t"))
    np.testing.assert_array_equal(loaded.lookup(probe), got)


def test_a_table_dropped_is_freed_at_once_not_by_the_garbage_collector(x: np.ndarray, keys: np.ndarray) -> None:
    # found by a review: the delta held a bound method of its table, a cycle only the collector
    # broke, so a deleted table's memory (550 MB in the review) came back at a later collection
    import gc
    import weakref

    def used(tiered: bool) -> weakref.ref[runtime.Table]:
        table = runtime.compress(x, tiers=_tiers(N), keys=keys) if tiered else runtime.compress(x, "int8")
        ids = keys[:4] if tiered else np.arange(4)
        table.lookup(ids)
        table.search(x[:2], 3)
        table.upsert(ids[:2], x[:2])
        table.lookup(ids)
        return weakref.ref(table)

    gc.disable()
    try:
        assert used(False)() is None and used(True)() is None
    finally:
        gc.enable()
