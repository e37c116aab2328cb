"""The key -> row hash map against its numpy twin: collisions, key 0, negative keys, int64 extremes."""

from __future__ import annotations

import numpy as np
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
