"""Open-addressing hash map from int64 keys to int32 row numbers, built once when a keyed table loads.

Layout: one (S, 2) int64 array of S slots, S a power of two >= 2 n (load factor <= 1/2); slot s
holds [key, row], row = -1 for an empty slot (so every int64 key, 0 and the extremes included, is
a valid key). Key and row share a cache line: a probe costs one miss, not two. A key's home slot is
splitmix64(key) & (S - 1); collisions probe linearly. Lookup of an absent key answers -1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from runtime.kernels.intrinsics import prefetch_row

EMPTY = -1
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def slot_count(n: int) -> int:
    """Slots for n keys: the power of two >= 2 n, at least 8."""
    return 1 << max(3, int(2 * max(n, 1) - 1).bit_length())


@njit(inline="always", nogil=True, cache=True)
def home_slot(key: np.int64, mask: np.uint64) -> np.uint64:
    """splitmix64's finalizer: every key bit moves every slot bit, so sequential or strided keys spread."""
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    x = x ^ (x >> np.uint64(31))
    return x & mask


@njit(nogil=True, cache=True)
def insert(table: np.ndarray, keys: np.ndarray, first_row: int) -> int:
    """Insert keys (n,) int64 with rows first_row.. into the slot table in place; returns the
    position in keys of the first key already present (-1 when none is; the keys before it are in).

    Each slot's key is stored before its row: a reader probing concurrently (`lookup_below`) sees
    a slot as taken only once its row is set, and skips rows at or past its limit."""
    mask = np.uint64(table.shape[0] - 1)
    for i in range(keys.shape[0]):
        key = keys[i]
        s = home_slot(key, mask)
        while table[s, 1] != EMPTY:
            if table[s, 0] == key:
                return i
            s = (s + np.uint64(1)) & mask
        table[s, 0] = key
        table[s, 1] = first_row + i
    return -1


def build(keys: np.ndarray, slots: int) -> tuple[np.ndarray, int]:
    """keys (n,) int64 -> the slot table (slots, 2) int64, and the position of the first key that
    repeats an earlier one (-1 when all are distinct).

    The table is allocated by numpy, not inside a kernel: numpy asks Linux for transparent huge
    pages on large arrays (where THP is in `madvise` mode, as on the machines here), numba's own
    allocator does not. A 1M-key map is 32 MiB, 8,192 pages of 4 KiB, and nearly every probe
    lands on a page whose translation the TLB no longer holds; on an AMD EPYC huge pages took 4 %
    off probing 1,024 keys."""
    table = np.empty((slots, 2), dtype=np.int64)
    table[:, 0] = 0
    table[:, 1] = EMPTY
    return table, int(insert(table, keys, 0))


PROBE_AHEAD = 32
"""Keys ahead whose home slot a lookup prefetches: a slot table of a large keyed table misses
cache on every key, and this keeps that many misses in flight instead of one."""


@njit(inline="always", nogil=True, cache=True)
def find_from(table: np.ndarray, key: np.int64, s: np.uint64, mask: np.uint64) -> np.int64:
    """The row of one key (-1 when absent), probing linearly from its home slot s."""
    while table[s, 1] != EMPTY:
        if table[s, 0] == key:
            return table[s, 1]
        s = (s + np.uint64(1)) & mask
    return np.int64(EMPTY)


@njit(nogil=True, cache=True)
def probe_into(table: np.ndarray, keys: np.ndarray, lo: int, hi: int, out: np.ndarray) -> int:
    """Rows of keys[lo:hi] into out[lo:hi] (-1 where absent); returns how many were absent.

    Every home slot is hashed first, in a tight loop of its own into a local array, and the probe
    loop is left with the prefetch and the compare: on an AMD EPYC 5-7% faster than hashing each
    key in the probe loop. Hashing into `out` itself gains nothing: the compiler cannot tell it
    from `table`, so the probe loop's loads are not reordered past its stores."""
    mask = np.uint64(table.shape[0] - 1)
    homes = np.empty(hi - lo, dtype=np.int64)
    for i in range(hi - lo):
        homes[i] = np.int64(home_slot(keys[lo + i], mask))
    for i in range(min(PROBE_AHEAD, hi - lo)):
        prefetch_row(table, homes[i], 0)
    missing = 0
    for i in range(hi - lo):
        if i + PROBE_AHEAD < hi - lo:
            prefetch_row(table, homes[i + PROBE_AHEAD], 0)
        row = find_from(table, keys[lo + i], np.uint64(homes[i]), mask)
        out[lo + i] = row
        if row == EMPTY:
            missing += 1
    return missing


@njit(nogil=True, cache=True)
def lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """keys (b,) int64 -> rows (b,) int64 (-1 where absent) and how many were absent."""
    out = np.empty(keys.shape[0], dtype=np.int64)
    missing = probe_into(table, keys, np.int64(0), keys.shape[0], out)
    return out, missing


@njit(inline="always", nogil=True, cache=True)
def find_below(table: np.ndarray, key: np.int64, mask: np.uint64, limit: int) -> np.int64:
    """The row of one key if it is below limit, else -1. A slot whose row is past the limit is
    probed past, not taken as the end of the chain: its key may not be visible yet (see `insert`)."""
    return find_below_from(table, key, home_slot(key, mask), mask, limit)


@njit(inline="always", nogil=True, cache=True)
def find_below_from(table: np.ndarray, key: np.int64, s: np.uint64, mask: np.uint64, limit: int) -> np.int64:
    """`find_below`, probing linearly from the key's home slot s."""
    while True:
        row = table[s, 1]
        if row == EMPTY:
            return np.int64(EMPTY)
        if row < limit and table[s, 0] == key:
            return row
        s = (s + np.uint64(1)) & mask


@njit(nogil=True, cache=True)
def lookup_below(table: np.ndarray, keys: np.ndarray, limit: int) -> np.ndarray:
    """keys (b,) int64 -> rows (b,) int64, -1 where absent or where the key's row is >= limit
    (inserted after the reader's snapshot)."""
    mask = np.uint64(table.shape[0] - 1)
    out = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        out[i] = find_below(table, keys[i], mask, limit)
    return out


BASE = -1
"""`delta_slots`: the row's current value is the base's (or the row is missing)."""
DELETED = -2
"""`delta_slots`: the row was deleted."""


@njit(nogil=True, cache=True)
def delta_slots(table: np.ndarray, limit: int, changed_slot: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Where each row's current value lives: rows (b,) int64 global rows (-1: missing) -> (b,)
    int64, the delta slot holding it, BASE, or DELETED. table: the slot table of the changed rows
    (row -> position in changed_slot; positions >= limit not visible to this reader);
    changed_slot (m,) int64: position -> slot, -1 for a deleted row. The delta's map is probed
    once a row as `probe_into` probes: every home slot hashed first, then prefetched ahead (the
    map of a delta of 10k rows is already past L2)."""
    mask = np.uint64(table.shape[0] - 1)
    n = rows.shape[0]
    homes = np.empty(n, dtype=np.int64)
    for i in range(n):
        homes[i] = np.int64(home_slot(rows[i], mask))
    for i in range(min(PROBE_AHEAD, n)):
        prefetch_row(table, homes[i], 0)
    out = np.full(n, BASE, dtype=np.int64)
    for i in range(n):
        if i + PROBE_AHEAD < n:
            prefetch_row(table, homes[i + PROBE_AHEAD], 0)
        if rows[i] < 0:
            continue
        position = find_below_from(table, rows[i], np.uint64(homes[i]), mask, limit)
        if position >= 0:
            slot = changed_slot[position]
            out[i] = slot if slot >= 0 else DELETED
    return out


NO_KEYS = np.full((1, 2), EMPTY, np.int64)
"""A slot table holding no key (for `resolve_keys` when nothing was added)."""


@njit(nogil=True, cache=True)
def resolve_keys(
    base: np.ndarray,
    added: np.ndarray,
    added_limit: int,
    base_rows: int,
    changed: np.ndarray,
    changed_limit: int,
    changed_slot: np.ndarray,
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """keys (b,) int64 of a keyed table with a delta -> (rows (b,) int64: global rows, -1 where the
    key is absent or deleted; slots (b,) int64: where each row's value lives, as `delta_slots`
    answers, BASE for an absent key; how many keys are absent or deleted).

    base: the table's key map (key -> base row); added: the keys the delta added (key -> index
    below added_limit, row base_rows + index; `NO_KEYS` when none); changed, changed_limit and
    changed_slot as in `delta_slots`. One call for what the key map, the added keys' map and
    `delta_slots` gave in three, with numpy passes between them."""
    n = keys.shape[0]
    rows = np.empty(n, dtype=np.int64)
    probe_into(base, keys, np.int64(0), n, rows)
    added_mask = np.uint64(added.shape[0] - 1)
    for i in range(n):
        if rows[i] == EMPTY:
            index = find_below(added, keys[i], added_mask, added_limit)
            if index != EMPTY:
                rows[i] = base_rows + index
    slots = delta_slots(changed, changed_limit, changed_slot, rows)
    missing = 0
    for i in range(n):
        if slots[i] == DELETED:
            rows[i] = EMPTY
        if rows[i] == EMPTY:
            missing += 1
    return rows, slots, missing


def resolve_keys_numpy(
    base: np.ndarray,
    added: np.ndarray,
    added_limit: int,
    base_rows: int,
    changed: np.ndarray,
    changed_limit: int,
    changed_slot: np.ndarray,
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The plain twin of `resolve_keys`."""
    rows, _ = lookup_numpy(base, keys)
    index = lookup_below_numpy(added, keys, added_limit)
    rows = np.where((rows == EMPTY) & (index != EMPTY), base_rows + index, rows)
    slots = delta_slots_numpy(changed, changed_limit, changed_slot, rows)
    rows = np.where(slots == DELETED, EMPTY, rows)
    return rows, slots, int((rows == EMPTY).sum())


def delta_slots_numpy(table: np.ndarray, limit: int, changed_slot: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The plain twin of `delta_slots`."""
    position = lookup_below_numpy(table, np.maximum(rows, 0), limit)
    found = (rows >= 0) & (position >= 0)
    slot = changed_slot[np.where(found, position, 0)] if changed_slot.size else np.zeros(rows.shape[0], np.int64)
    return np.where(found, np.where(slot >= 0, slot, DELETED), BASE).astype(np.int64)


def home_numpy(keys: np.ndarray, slots: int) -> np.ndarray:
    """(n,) int64 -> (n,) int64 home slots; numpy integer arrays wrap on overflow like the kernel."""
    x = keys.astype(np.int64).view(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    x = x ^ (x >> np.uint64(31))
    return (x & np.uint64(slots - 1)).astype(np.int64)


def insert_numpy(table: np.ndarray, keys: np.ndarray, first_row: int) -> int:
    """The plain twin of `insert`."""
    slots = table.shape[0]
    for i, (key, s) in enumerate(zip(keys.tolist(), home_numpy(keys, slots).tolist(), strict=True)):
        while table[s, 1] != EMPTY:
            if table[s, 0] == key:
                return i
            s = (s + 1) % slots
        table[s] = key, first_row + i
    return -1


def build_numpy(keys: np.ndarray, slots: int) -> tuple[np.ndarray, int]:
    """The plain twin of `build`."""
    table = np.zeros((slots, 2), dtype=np.int64)
    table[:, 1] = EMPTY
    return table, insert_numpy(table, keys, 0)


def lookup_numpy(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """The plain twin of `lookup`."""
    slots = table.shape[0]
    out = np.full(keys.shape[0], EMPTY, dtype=np.int64)
    for i, (key, s) in enumerate(zip(keys.tolist(), home_numpy(keys, slots).tolist(), strict=True)):
        while table[s, 1] != EMPTY:
            if table[s, 0] == key:
                out[i] = table[s, 1]
                break
            s = (s + 1) % slots
    return out, int((out == EMPTY).sum())


def lookup_below_numpy(table: np.ndarray, keys: np.ndarray, limit: int) -> np.ndarray:
    """The plain twin of `lookup_below`."""
    slots = table.shape[0]
    out = np.full(keys.shape[0], EMPTY, dtype=np.int64)
    for i, (key, s) in enumerate(zip(keys.tolist(), home_numpy(keys, slots).tolist(), strict=True)):
        while table[s, 1] != EMPTY:
            if table[s, 1] < limit and table[s, 0] == key:
                out[i] = table[s, 1]
                break
            s = (s + 1) % slots
    return out


SLOT_BYTES = 2 * 8
"""One slot of the table `build` allocates: key and row, int64 each."""


class KeyMap:
    """keys (n,) int64, distinct -> their positions 0..n-1; holds the slot table (counted in nbytes).

    A map over a table that is still being appended to (`AppendOnlyKeys.key_map`) has a limit:
    rows at or past it were added after it was taken and read as absent."""

    @staticmethod
    def bytes_for(n: int) -> int:
        """The bytes a map of n keys holds, without building it (the budget planner counts it)."""
        return slot_count(n) * SLOT_BYTES

    def __init__(self, keys: np.ndarray) -> None:
        self.table, self.duplicate = build(np.ascontiguousarray(keys, dtype=np.int64), slot_count(keys.shape[0]))
        self.limit: int | None = None

    @classmethod
    def over(cls, table: np.ndarray, limit: int) -> KeyMap:
        """A map reading `table` (shared, appended to by its owner) up to row `limit`."""
        keymap = cls.__new__(cls)
        keymap.table, keymap.duplicate, keymap.limit = table, -1, limit
        return keymap

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def rows(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """keys (b,) int64 -> rows (b,) int64 (-1 where absent), number absent."""
        if self.limit is None:
            rows, missing = lookup(self.table, keys)
            return rows, int(missing)
        rows = lookup_below(self.table, keys, self.limit)
        return rows, int((rows < 0).sum())


class KeySet:
    """A set of int64 values (rows left out of a scan) with a vectorized membership test."""

    def __init__(self, values: np.ndarray, keymap: KeyMap | None = None) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.int64)
        if keymap is None and self.values.size:
            keymap = KeyMap(self.values)
        self.map = keymap

    @property
    def size(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (self.map.nbytes if self.map is not None else 0))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """ids (any shape) int64 -> bool mask of the same shape."""
        if self.map is None:
            return np.zeros(ids.shape, bool)
        found, _ = self.map.rows(np.ascontiguousarray(ids, dtype=np.int64).reshape(-1))
        return (found >= 0).reshape(ids.shape)


class AppendOnlyKeys:
    """Distinct int64 keys appended in batches, each mapped to its position, with snapshots that
    later appends leave as they were: the writer side of a table's delta index.

    An append costs time in the batch's size, not the total's: keys go past the end of a buffer
    readers hold only a prefix of, and into the shared slot table in place (readers skip positions
    past their snapshot's count). When the table would pass half full it is rebuilt at twice the
    size in a new array, so snapshots holding the old one are never written again. One writer at
    a time (the caller serializes appends)."""

    def __init__(self) -> None:
        self._keys = np.zeros(0, np.int64)
        self._table = np.zeros((0, 2), np.int64)
        self.count = 0

    @property
    def values(self) -> np.ndarray:
        """The keys appended so far, (count,) int64, in order (a read-only view)."""
        view = self._keys[: self.count]
        view.flags.writeable = False
        return view

    def append(self, new: np.ndarray) -> None:
        """Append new (m,) int64 keys, distinct and none present yet (ValueError otherwise, and
        nothing is appended)."""
        new = np.ascontiguousarray(new, dtype=np.int64)
        start, stop = self.count, self.count + new.shape[0]
        if new.shape[0] == 0:
            return
        if np.unique(new).shape[0] != new.shape[0] or (start and (lookup_below(self._table, new, start) >= 0).any()):
            raise ValueError("appended keys must be distinct and new")
        if self._keys.shape[0] < stop:
            grown = np.empty(max(stop, 2 * self._keys.shape[0], 64), np.int64)
            grown[:start] = self._keys[:start]
            self._keys = grown
        self._keys[start:stop] = new
        if self._table.shape[0] < slot_count(stop):
            self._table = build(self._keys[:stop], slot_count(2 * stop))[0]
        else:
            insert(self._table, new, start)
        self.count = stop

    def key_map(self) -> KeyMap | None:
        """The keys so far -> their positions; None while there are none."""
        return KeyMap.over(self._table, self.count) if self.count else None

    def key_set(self) -> KeySet:
        """The keys so far as a set."""
        return KeySet(self.values, self.key_map()) if self.count else KeySet(np.zeros(0, np.int64))
