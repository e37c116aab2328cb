"""The update log's entry format and stream-id arithmetic (no Redis needed)."""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import DeltaFull, InvalidRequest
from service.sync import updates

ids = st.tuples(st.integers(0, (1 << 43) - 1), st.integers(0, (1 << updates.SEQ_BITS) - 1))


@given(ids, ids)
def test_stream_ids_become_sequences_in_order_and_back(a: tuple[int, int], b: tuple[int, int]) -> None:
    ida, idb = f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}"
    sa, sb = updates.id_to_sequence(ida), updates.id_to_sequence(idb)
    assert (sa < sb) == (a < b) and (sa == sb) == (a == b)
    assert updates.sequence_to_id(sa) == ida and sa < 1 << 63
    assert updates.id_to_sequence(ida.encode()) == sa


def test_sequence_zero_reads_the_whole_stream() -> None:
    assert updates.sequence_to_id(0) == "0-0"


@pytest.mark.parametrize(
    "bad", ["", "12", "a-1", "1-b", f"1-{1 << updates.SEQ_BITS}", "-1-2", f"{1 << updates.MS_BITS}-0", "\u00b2-1"]
)
def test_malformed_stream_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        updates.id_to_sequence(bad)


def test_entries_round_trip_as_little_endian_bytes() -> None:
    keys = np.array([np.iinfo(np.int64).min, 0, 7, np.iinfo(np.int64).max])
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    fields = updates.encode_entry("upsert", keys, rows, "v1")
    assert fields["keys"] == keys.astype("<i8").tobytes() and fields["dim"] == b"3"
    got = updates.decode_entry({k.encode(): v for k, v in fields.items()}, dim=3)
    assert got.op == "upsert" and got.base_version == "v1"
    np.testing.assert_array_equal(got.keys, keys)
    np.testing.assert_array_equal(got.rows, rows)
    deleted = updates.decode_entry(updates.encode_entry("delete", keys[:2], None), dim=3)
    assert deleted.rows is None and deleted.keys.tolist() == keys[:2].tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"op": b"replace"}, "op must be one of"),
        ({"keys": b"1234567"}, "whole number of int64"),
        ({"keys": b""}, "whole number of int64"),
        ({"dim": b"4"}, "dim must be the table's 3"),
        ({"dim": b"three"}, "dim must be the table's 3"),
        ({"rows": b"\x00" * 20}, "rows must be 2 x 3 float32 (24 bytes)"),
        ({"keys": np.array([5, 5], "<i8").tobytes()}, "keys repeat"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(change: dict[str, bytes], message: str) -> None:
    fields = updates.encode_entry("upsert", np.array([1, 2]), np.ones((2, 3), np.float32))
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        updates.decode_entry({**fields, **change}, dim=3)


def test_the_producer_refuses_what_no_replica_could_apply() -> None:
    class NoRedis:
        def pipeline(self, transaction: bool = False) -> None:
            raise AssertionError("nothing is sent for a refused batch")

    for keys, rows, message in [
        (np.array([1, 1]), np.ones((2, 3)), "keys repeat"),
        (np.array([1, 2]), np.array([[1.0, np.nan, 0], [0, 0, 0]]), "NaN"),
        (np.array([1, 2]), np.array([[1.0, 2.0**50, 0], [0, 0, 0]]), "below 2\\*\\*50"),
        (np.array([1, 2]), np.ones((3, 3)), r"rows must be a float \(2, dim\)"),
        (np.array([1.5]), None, "1-D integer"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            updates.push(NoRedis(), "t", keys, rows)


def test_a_batch_applies_like_its_entries_one_by_one_and_refuses_only_the_bad_ones() -> None:
    import runtime
    from tests.conftest import low_rank_table

    keys = np.arange(40, dtype=np.int64) * 3 + 1
    x = low_rank_table(40, 8, seed=1)
    rng = np.random.default_rng(2)

    def entries() -> list[tuple[str, Mapping[Any, Any]]]:
        r = rng.standard_normal((12, 8)).astype(np.float32)
        return [
            ("5-0", updates.encode_entry("upsert", keys[:4], r[:4])),
            ("5-1", updates.encode_entry("upsert", keys[2:6], r[4:8])),  # keys 2, 3 again: the later row wins
            ("6-0", updates.encode_entry("upsert", keys[:2], np.full((2, 8), np.nan, np.float32))),  # refused
            ("6-1", {**updates.encode_entry("upsert", keys[:1], r[:1]), "dim": b"9"}),  # refused at decode
            ("7-0", updates.encode_entry("delete", keys[10:12], None)),
            ("7-1", updates.encode_entry("upsert", np.array([999], np.int64), r[8:9])),  # a new key
            ("8-0", updates.encode_entry("delete", np.array([424242], np.int64), None)),  # refused: unknown
            ("8-1", updates.encode_entry("upsert", keys[30:33], r[9:12])),
            # refused whatever the batch (a merged run kept the last row of a repeated key)
            ("8-2", updates.encode_entry("upsert", keys[[5, 5]], r[:2])),
            ("9-1", updates.encode_entry("upsert", keys[20:21], r[2:3])),
            # a refused row is refused even when the next entry of the run replaces it
            ("9-2", updates.encode_entry("upsert", keys[34:36], np.stack([r[5], np.full(8, np.nan, np.float32)]))),
            ("9-3", updates.encode_entry("upsert", keys[35:37], r[6:8])),
            # the same for a row the codec cannot hold (int8 keeps its scale in fp16)
            ("9-4", updates.encode_entry("upsert", keys[37:38], np.full((1, 8), 1e6, np.float32))),
            ("9-5", updates.encode_entry("upsert", keys[37:39], r[8:10])),
            # an id with no int64 sequence is refused, and the entries after it apply (it stalled the log)
            (f"9-{1 << updates.SEQ_BITS}", updates.encode_entry("upsert", keys[21:22], r[3:4])),
            ("10-0", updates.encode_entry("upsert", keys[22:23], r[4:5])),
        ]

    batch = entries()
    merged = runtime.compress(x, "int8", keys=keys, missing="zeros")
    one_by_one = runtime.compress(x, "int8", keys=keys, missing="zeros")
    results, stalled = updates.apply_batch(merged, batch)
    singles = [(sid, *updates.apply_entry(one_by_one, sid, fields)) for sid, fields in batch]
    assert stalled == "" and [(s, a, bool(r)) for s, a, r in results] == [(s, a, bool(r)) for s, a, r in singles]
    assert [s for s, _, r in results if r] == ["6-0", "6-1", "8-0", "8-2", "9-2", "9-4", f"9-{1 << updates.SEQ_BITS}"]
    every = np.concatenate([keys, [999]])
    np.testing.assert_array_equal(merged.lookup(every), one_by_one.lookup(every))
    np.testing.assert_array_equal(
        merged.lookup(keys[21:22]), runtime.compress(x, "int8", keys=keys).lookup(keys[21:22])
    )
    assert merged.sequence == one_by_one.sequence == updates.id_to_sequence("10-0")
    assert merged.delta_slots <= one_by_one.delta_slots  # the merged run wrote keys 2, 3 once


def test_a_full_delta_stops_the_batch_where_it_is_and_says_so() -> None:
    import runtime
    from tests.conftest import low_rank_table

    keys = np.arange(20, dtype=np.int64)
    table = runtime.compress(low_rank_table(20, 4, seed=2), "int8", keys=keys, delta_capacity=5)
    ones = np.ones((3, 4), np.float32)
    batch: list[tuple[str, Mapping[Any, Any]]] = [
        ("1-0", updates.encode_entry("upsert", keys[:3], ones)),
        ("2-0", updates.encode_entry("delete", keys[5:6], None)),  # a delete ends the run of upserts
        ("3-0", updates.encode_entry("upsert", keys[3:6], ones)),  # 3 more slots: over the capacity of 5
        ("4-0", updates.encode_entry("upsert", keys[6:7], ones[:1])),
    ]
    results, stalled = updates.apply_batch(table, batch)
    assert [r[0] for r in results] == ["1-0", "2-0"] and "delta" in stalled
    assert table.sequence == updates.id_to_sequence("2-0")  # the next read starts at 3-0 again


def test_a_full_delta_stops_a_merged_run_at_the_entry_that_does_not_fit() -> None:
    # found by a review: a run of upserts too big for the delta as a whole applied none of them,
    # where a replica reading the same entries one by one applied those that fit; replicas
    # stalled at different places, serving different rows
    import runtime
    from tests.conftest import low_rank_table

    keys = np.arange(20, dtype=np.int64)
    ones = np.ones((2, 4), np.float32)
    batch: list[tuple[str, Mapping[Any, Any]]] = [
        (f"{i + 1}-0", updates.encode_entry("upsert", keys[2 * i : 2 * i + 2], ones)) for i in range(4)
    ]

    def fresh() -> Any:
        return runtime.compress(low_rank_table(20, 4, seed=2), "int8", keys=keys, delta_capacity=5)

    merged, one_by_one = fresh(), fresh()
    results, stalled = updates.apply_batch(merged, batch)
    assert [r[0] for r in results] == ["1-0", "2-0"] and "delta" in stalled
    for stream_id, fields in batch[:2]:
        updates.apply_entry(one_by_one, stream_id, fields)
    with pytest.raises(DeltaFull):
        updates.apply_entry(one_by_one, *batch[2])
    assert merged.sequence == one_by_one.sequence == updates.id_to_sequence("2-0")
    np.testing.assert_array_equal(merged.lookup(keys), one_by_one.lookup(keys))


def test_an_entry_larger_than_the_whole_delta_is_refused_not_waited_for() -> None:
    # no compaction makes room for it: a replica would stall on it for good
    import runtime
    from tests.conftest import low_rank_table

    keys = np.arange(20, dtype=np.int64)
    table = runtime.compress(low_rank_table(20, 4, seed=2), "int8", keys=keys, delta_capacity=5)
    batch: list[tuple[str, Mapping[Any, Any]]] = [
        ("1-0", updates.encode_entry("upsert", keys[:6], np.ones((6, 4), np.float32))),
        ("2-0", updates.encode_entry("upsert", keys[6:8], np.ones((2, 4), np.float32))),
    ]
    results, stalled = updates.apply_batch(table, batch)
    assert stalled == "" and [(s, a) for s, a, _ in results] == [("1-0", 0), ("2-0", 2)]
    assert "6 rows exceed the table's delta capacity of 5" in results[0][2]
    assert table.sequence == updates.id_to_sequence("2-0") and table.delta_slots == 2


def test_compaction_folds_a_log_longer_than_the_delta_holds() -> None:
    # found by a review: compaction, the way out of a full delta, stopped at a full delta itself
    import runtime
    from service.sync.compaction import _apply_all
    from tests.conftest import low_rank_table

    keys = np.arange(20, dtype=np.int64)
    x = low_rank_table(20, 4, seed=2)
    rng = np.random.default_rng(3)
    entries: list[tuple[str, dict[Any, Any]]] = []
    for i in range(9):
        picked = rng.choice(20, 3, replace=False)
        entries.append((f"{i + 1}-0", updates.encode_entry("upsert", keys[picked], rng.standard_normal((3, 4)))))
    entries.append(("20-0", updates.encode_entry("delete", keys[:2], None)))
    entries.append(("21-0", updates.encode_entry("delete", keys[:1], None)))  # refused: already deleted
    small = runtime.compress(x, "int8", keys=keys, delta_capacity=5, missing="zeros")
    roomy = runtime.compress(x, "int8", keys=keys, delta_capacity=1000, missing="zeros")
    folded, refused = _apply_all(small, entries)
    assert refused == 1 == sum(bool(updates.apply_entry(roomy, s, f)[1]) for s, f in entries)
    assert folded.sequence == roomy.sequence == updates.id_to_sequence("21-0")
    np.testing.assert_array_equal(folded.compact().lookup(keys), roomy.compact().lookup(keys))
    assert folded.delta_capacity == 5


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a POSIX facility")
def test_update_threads_run_at_a_lower_priority_than_the_threads_serving_requests() -> None:
    seen: dict[str, int] = {}

    def in_update_thread() -> None:
        updates.lower_thread_priority()
        seen["update"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = threading.Thread(target=in_update_thread)
    worker.start()
    worker.join()
    serving = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen["update"] == min(19, serving + updates.UPDATE_THREAD_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == serving  # the caller's is untouched


@pytest.mark.parametrize(
    ("position", "info", "gap"),
    [
        # nothing ever removed: no gap, wherever the replica stands
        ("5-0", {"length": 3, "entries-added": 3, "last-generated-id": b"9-0", "first-entry": (b"5-0", {})}, ""),
        # compaction kept the replica's own entry
        ("5-0", {"length": 2, "entries-added": 4, "last-generated-id": b"9-0", "first-entry": (b"5-0", {})}, ""),
        # entries after the replica's position went before it read them
        ("5-0", {"length": 1, "entries-added": 4, "last-generated-id": b"9-0", "first-entry": (b"9-0", {})}, "trimmed"),
        ("5-0", {"length": 0, "entries-added": 4, "last-generated-id": b"9-0", "first-entry": None}, "trimmed"),
        # everything read, then trimmed to nothing: nothing lost
        ("9-0", {"length": 0, "entries-added": 4, "last-generated-id": b"9-0", "first-entry": None}, ""),
        # a stream recreated below the position
        ("5-0", {"length": 1, "entries-added": 1, "last-generated-id": b"1000-0", "first-entry": None}, ""),
        ("1796603969142-0", {"length": 1, "entries-added": 1, "last-generated-id": b"1000-0"}, "recreated"),
    ],
)
def test_log_gap_names_entries_a_replica_will_never_apply(position: str, info: dict[str, Any], gap: str) -> None:
    found = updates.log_gap(position, info)
    assert (gap in found and found) if gap else found == ""


@pytest.mark.parametrize(
    ("added_before", "info", "reset"),
    [
        (0, None, ""),  # never seen: nothing to compare
        (0, {"entries-added": 2}, ""),
        (5, {"entries-added": 5}, ""),
        (5, {"entries-added": 9}, ""),
        (5, {b"entries-added": 9}, ""),
        (5, {}, ""),  # Redis before 7 has no entries-added: nothing to tell
        # deleted, by a DEL or a FLUSHALL, or Redis restarted without its data
        (5, None, "the update stream is gone"),
        # recreated between two checks, new ids above every position: log_gap cannot tell
        (5, {"entries-added": 2, "last-generated-id": b"1796603969142-0"}, "deleted and recreated"),
        (5, {b"entries-added": b"2"}, "had had 5 entries, now 2"),
    ],
)
def test_log_reset_names_a_stream_deleted_since_the_last_check(
    added_before: int, info: dict[Any, Any] | None, reset: str
) -> None:
    found = updates.log_reset(added_before, info)
    assert (reset in found and found) if reset else found == ""


async def test_a_batch_the_table_shows_applied_is_no_gap() -> None:
    # seen under load: the update thread had applied a batch (the table's sequence says so) and
    # the loop had not yet recorded its position when a gap check ran; the stream, trimmed right
    # after, looked as if entries after that position were lost. The check reads both, after XINFO.
    import weakref
    from concurrent.futures import ThreadPoolExecutor

    import runtime
    from service.metrics import Metrics
    from tests.conftest import low_rank_table

    table = runtime.compress(low_rank_table(16, 4), "fp32", keys=np.arange(16, dtype=np.int64))
    table.upsert(np.array([3]), np.ones((1, 4), np.float32), sequence=updates.id_to_sequence("5-0"))
    reply = {"length": 0, "entries-added": 5, "last-generated-id": "5-0", "first-entry": None}

    class Reader:
        def xinfo_stream(self, stream: str) -> Mapping[str, Any]:
            return reply

    applier = updates.UpdateApplier.__new__(updates.UpdateApplier)
    applier.metrics = Metrics()
    # the replica's side, as a replica that reports its events does it
    applier.sync = types.SimpleNamespace(  # type: ignore[assignment]
        count_event=lambda counter, *labels, amount=1: counter.labels(*labels).inc(amount),
        note_update_problem=lambda name, problem: None,
    )
    applier.read_executor = ThreadPoolExecutor(max_workers=1)
    applier._reader = Reader  # type: ignore[method-assign]
    applier._gaps_seen, applier._entries_added = set(), {}
    applier.positions = {"t": (weakref.ref(table), "4-0")}  # the batch before, as recorded
    try:
        await applier.check_gap("t", table)
        assert applier.metrics.registry.get_sample_value("embserve_update_gaps_total", {"table": "t"}) == 0
        # a table whose sequence is behind: the entries after 4-0 are reported, as before
        behind = runtime.compress(low_rank_table(16, 4), "fp32", keys=np.arange(16, dtype=np.int64))
        applier.positions = {"t": (weakref.ref(behind), "4-0")}
        await applier.check_gap("t", behind)
        assert applier.metrics.registry.get_sample_value("embserve_update_gaps_total", {"table": "t"}) == 1
    finally:
        applier.read_executor.shutdown()


def test_a_huge_refused_entry_leaves_its_size_in_the_dead_letter_not_a_copy() -> None:
    # found by a review: every replica copied every refused entry whole into the dead-letter
    # stream, 50 MB entries included
    small = updates.encode_entry("upsert", np.arange(3), np.ones((3, 4), np.float32))
    assert updates.dead_letter_fields(small) == small
    huge = updates.encode_entry("upsert", np.arange(100_000), np.ones((100_000, 4), np.float32))
    kept = updates.dead_letter_fields(huge)
    assert kept == {b"op": b"upsert", b"fields_bytes": str(sum(len(v) for v in huge.values())).encode()}
