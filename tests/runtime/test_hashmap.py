"""The key -> row hash map against its numpy twin: collisions, key 0, negative keys, int64 extremes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.kernels import hashmap

INT64 = st.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max)
EXTREMES = [0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1]


@st.composite
def key_sets(draw: st.DrawFn) -> np.ndarray:
    keys = draw(st.lists(st.one_of(INT64, st.sampled_from(EXTREMES), st.integers(-50, 50)), max_size=300))
    return np.array(keys, dtype=np.int64)


@given(key_sets(), st.lists(st.one_of(INT64, st.sampled_from(EXTREMES), st.integers(-60, 60)), max_size=100))
def test_hash_map_matches_twin_and_a_dict(keys: np.ndarray, probes: list[int]) -> None:
    distinct = np.array(list(dict.fromkeys(keys.tolist())), dtype=np.int64)
    slots = hashmap.slot_count(distinct.size)
    got = hashmap.build(distinct, slots)
    want = hashmap.build_numpy(distinct, slots)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1] == -1
    queries = np.array([*distinct.tolist(), *probes], dtype=np.int64)
    rows, missing = hashmap.lookup(got[0], queries)
    twin_rows, twin_missing = hashmap.lookup_numpy(got[0], queries)
    np.testing.assert_array_equal(rows, twin_rows)
    truth = {k: i for i, k in enumerate(distinct.tolist())}
    assert rows.tolist() == [truth.get(k, -1) for k in queries.tolist()]
    assert missing == twin_missing == sum(k not in truth for k in queries.tolist())
    if keys.size > distinct.size:  # a repeated key is reported at its first repeat
        first_repeat = next(i for i, k in enumerate(keys.tolist()) if k in keys.tolist()[:i])
        assert hashmap.build(keys, hashmap.slot_count(keys.size))[1] == first_repeat
        assert hashmap.build_numpy(keys, hashmap.slot_count(keys.size))[1] == first_repeat


def test_colliding_keys_probe_past_each_other() -> None:
    # keys that share a home slot in an 8-slot table
    candidates = np.arange(-5000, 5000, dtype=np.int64)
    homes = hashmap.home_numpy(candidates, 8)
    same = candidates[homes == homes[0]][:4]
    table, dup = hashmap.build(same, 8)
    assert dup == -1 and (table[:, 1] >= 0).sum() == 4
    rows, missing = hashmap.lookup(table, same)
    assert rows.tolist() == [0, 1, 2, 3] and missing == 0


def test_empty_map_answers_missing() -> None:
    keymap = hashmap.KeyMap(np.zeros(0, np.int64))
    rows, missing = keymap.rows(np.array([0, 7], np.int64))
    assert rows.tolist() == [-1, -1] and missing == 2
    assert keymap.nbytes == 8 * 16


@given(key_sets(), st.integers(0, 3), st.lists(st.one_of(INT64, st.sampled_from(EXTREMES)), max_size=50))
def test_insert_and_lookup_below_match_their_twins(keys: np.ndarray, cut: int, probes: list[int]) -> None:
    distinct = np.array(list(dict.fromkeys(keys.tolist())), dtype=np.int64)
    slots = hashmap.slot_count(2 * max(distinct.size, 1))
    split = distinct.size * cut // 3
    table = np.zeros((slots, 2), np.int64)
    table[:, 1] = hashmap.EMPTY
    twin = table.copy()
    for part, first in ((distinct[:split], 0), (distinct[split:], split)):
        assert hashmap.insert(table, part, first) == hashmap.insert_numpy(twin, part, first) == -1
    np.testing.assert_array_equal(table, twin)
    queries = np.array([*distinct.tolist(), *probes], dtype=np.int64)
    position = {k: i for i, k in enumerate(distinct.tolist())}
    for limit in sorted({0, split, distinct.size}):
        got = hashmap.lookup_below(table, queries, limit)
        np.testing.assert_array_equal(got, hashmap.lookup_below_numpy(table, queries, limit))
        want = [position[k] if position.get(k, limit) < limit else -1 for k in queries.tolist()]
        assert got.tolist() == want
    if distinct.size:  # inserting a present key reports it and stops there
        again = np.array([distinct[-1]], np.int64)
        assert hashmap.insert(table.copy(), again, 0) == hashmap.insert_numpy(twin.copy(), again, 0) == 0


def test_lookup_below_probes_past_a_slot_whose_key_is_not_visible_yet() -> None:
    # a concurrent reader may see a slot's row before its key: such a slot (row past the limit,
    # key still the zeroed 0) must not hide key 0 stored further along the chain
    candidates = np.arange(-5000, 5000, dtype=np.int64)
    homes = hashmap.home_numpy(candidates, 8)
    zero_home = homes[candidates == 0][0]
    table = np.zeros((8, 2), np.int64)
    table[:, 1] = hashmap.EMPTY
    table[zero_home] = 0, 5  # torn: row 5 written, key not yet (reads as 0)
    table[(zero_home + 1) % 8] = 0, 1  # key 0 at row 1, visible below the limit
    assert hashmap.lookup_below(table, np.array([0], np.int64), 3).tolist() == [1]
    assert hashmap.lookup_below_numpy(table, np.array([0], np.int64), 3).tolist() == [1]


@given(st.lists(key_sets(), min_size=1, max_size=6))
def test_append_only_keys_snapshots_stay_as_taken(batches: list[np.ndarray]) -> None:
    keys = hashmap.AppendOnlyKeys()
    seen: list[int] = []
    snapshots = []
    for batch in batches:
        new = [k for k in dict.fromkeys(batch.tolist()) if k not in seen]
        keys.append(np.array(new, np.int64))
        seen += new
        snapshots.append((keys.key_map(), keys.key_set(), list(seen)))
    probe = np.array([*seen, *EXTREMES, 12345], np.int64)
    for keymap, keyset, held in snapshots:  # every snapshot answers for the keys it was taken with
        position = {k: i for i, k in enumerate(held)}
        want = [position.get(k, -1) for k in probe.tolist()]
        got = [-1] * probe.size if keymap is None else keymap.rows(probe)[0].tolist()
        assert got == want
        assert keyset.contains(probe).tolist() == [k in position for k in probe.tolist()]
        assert keyset.values.tolist() == held and keyset.size == len(held)
    assert keys.values.tolist() == seen


def test_append_only_keys_refuse_repeats_and_keep_what_they_hold() -> None:
    keys = hashmap.AppendOnlyKeys()
    keys.append(np.array([3, 7], np.int64))
    with pytest.raises(ValueError, match="distinct and new"):
        keys.append(np.array([9, 7], np.int64))
    with pytest.raises(ValueError, match="distinct and new"):
        keys.append(np.array([9, 9], np.int64))
    assert keys.values.tolist() == [3, 7]
    keymap = keys.key_map()
    assert keymap is not None and keymap.rows(np.array([7, 9], np.int64))[0].tolist() == [1, -1]


@given(
    st.lists(st.integers(0, 400), max_size=120, unique=True),
    st.integers(0, 3),
    st.lists(st.integers(-3, 420), max_size=80),
    st.data(),
)
def test_delta_slots_match_their_twin(changed: list[int], cut: int, probes: list[int], data: st.DataObject) -> None:
    # changed rows (distinct global rows, in the order they were changed) -> their current slot,
    # -1 for the deleted ones; a reader sees only the first `limit` of them
    rows = np.array(changed, np.int64)
    current = np.array([data.draw(st.integers(-1, 50)) for _ in changed], np.int64)
    table, repeat = hashmap.build(rows, hashmap.slot_count(rows.size))
    assert repeat == -1
    queries = np.array([*changed, *probes], np.int64)
    for limit in sorted({0, rows.size * cut // 3, rows.size}):
        got = hashmap.delta_slots(table, limit, current, queries)
        np.testing.assert_array_equal(got, hashmap.delta_slots_numpy(table, limit, current, queries))
        visible = {r: int(s) for r, s in zip(changed[:limit], current[:limit].tolist(), strict=True)}
        want = [
            hashmap.BASE if q < 0 or q not in visible else (visible[q] if visible[q] >= 0 else hashmap.DELETED)
            for q in queries.tolist()
        ]
        assert got.tolist() == want


def test_delta_slots_of_nothing() -> None:
    table, _ = hashmap.build(np.zeros(0, np.int64), 8)
    empty = np.zeros(0, np.int64)
    assert hashmap.delta_slots(table, 0, empty, empty).shape == (0,)
    assert hashmap.delta_slots_numpy(table, 0, empty, empty).shape == (0,)
    one = np.array([5], np.int64)
    assert hashmap.delta_slots(table, 0, empty, one).tolist() == [hashmap.BASE]
    assert hashmap.delta_slots_numpy(table, 0, empty, one).tolist() == [hashmap.BASE]


@given(
    st.lists(st.one_of(INT64, st.sampled_from(EXTREMES)), max_size=60, unique=True),
    st.data(),
)
def test_resolve_keys_matches_its_twin_and_the_three_maps(base_list: list[int], data: st.DataObject) -> None:
    # a keyed table of len(base_list) rows, a delta that added keys (rows base_rows..) and changed
    # some rows (to a slot, or deleted: -1); the reader sees prefixes `added_limit`, `changed_limit`
    base_keys = np.array(base_list, np.int64)
    others = data.draw(st.lists(INT64.filter(lambda k: k not in set(base_list)), max_size=20, unique=True))
    added_keys = np.array(others, np.int64)
    base_rows = base_keys.size
    total = base_rows + added_keys.size
    changed_list = data.draw(st.lists(st.integers(0, max(total - 1, 0)), max_size=total, unique=True)) if total else []
    changed = np.array(changed_list, np.int64)
    current = np.array([data.draw(st.integers(-1, 30)) for _ in changed_list], np.int64)
    base_table, _ = hashmap.build(base_keys, hashmap.slot_count(base_keys.size))
    added_table = (
        hashmap.build(added_keys, hashmap.slot_count(added_keys.size))[0] if added_keys.size else hashmap.NO_KEYS
    )
    changed_table, _ = hashmap.build(changed, hashmap.slot_count(changed.size))
    added_limit = data.draw(st.integers(0, added_keys.size))
    changed_limit = data.draw(st.integers(0, changed.size))
    strangers = data.draw(st.lists(st.one_of(INT64, st.sampled_from(EXTREMES)), max_size=10))
    keys = np.array([*base_list, *others, *strangers], np.int64)
    keys = keys[np.random.default_rng(data.draw(st.integers(0, 99))).permutation(keys.size)]
    args = (base_table, added_table, added_limit, base_rows, changed_table, changed_limit, current, keys)
    rows, slots, missing = hashmap.resolve_keys(*args)
    twin_rows, twin_slots, twin_missing = hashmap.resolve_keys_numpy(*args)
    np.testing.assert_array_equal(rows, twin_rows)
    np.testing.assert_array_equal(slots, twin_slots)
    assert missing == twin_missing
    row_of = {k: r for r, k in enumerate(base_list)}
    row_of.update({k: base_rows + i for i, k in enumerate(others[:added_limit])})
    slot_of = dict(zip(changed_list[:changed_limit], current[:changed_limit].tolist(), strict=True))
    for key, row, slot in zip(keys.tolist(), rows.tolist(), slots.tolist(), strict=True):
        want_row = row_of.get(key, -1)
        want_slot = slot_of.get(want_row, hashmap.BASE) if want_row >= 0 else hashmap.BASE
        if want_slot == -1 and want_row in slot_of:
            want_row, want_slot = -1, hashmap.DELETED
        assert (row, slot) == (want_row, want_slot)
    assert missing == int((rows < 0).sum())


def test_resolve_keys_of_no_keys() -> None:
    table, _ = hashmap.build(np.array([4], np.int64), 8)
    empty = np.zeros(0, np.int64)
    rows, slots, missing = hashmap.resolve_keys(table, hashmap.NO_KEYS, 0, 1, table, 1, empty, empty)
    assert rows.shape == slots.shape == (0,) and missing == 0
