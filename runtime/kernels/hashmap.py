"""Open-addressing hash map from int64 keys to int32 row numbers, built once when a keyed table loads.

Layout: two parallel arrays of S slots, S a power of two >= 2 n (load factor <= 1/2):
slot_keys (S,) int64 and slot_rows (S,) int32, slot_rows = -1 for an empty slot (so every int64
key, 0 and the extremes included, is a valid key). A key's home slot is splitmix64(key) & (S - 1);
collisions probe linearly. Lookup of an absent key answers -1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = -1
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def slot_count(n: int) -> int:
    """Slots for n keys: the power of two >= 2 n, at least 8."""
    return 1 << max(3, int(2 * max(n, 1) - 1).bit_length())


@njit(inline="always", nogil=True, cache=True)
def _home(key: np.int64, mask: np.uint64) -> np.uint64:
    """splitmix64's finalizer: every key bit moves every slot bit, so sequential or strided keys spread."""
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    x = x ^ (x >> np.uint64(31))
    return x & mask


@njit(nogil=True, cache=True)
def build(keys: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray, int]:
    """keys (n,) int64 -> slot_keys (slots,) int64, slot_rows (slots,) int32, and the position of
    the first key that repeats an earlier one (-1 when all are distinct)."""
    slot_keys = np.zeros(slots, dtype=np.int64)
    slot_rows = np.full(slots, EMPTY, dtype=np.int32)
    mask = np.uint64(slots - 1)
    for row in range(keys.shape[0]):
        key = keys[row]
        s = _home(key, mask)
        while slot_rows[s] != EMPTY:
            if slot_keys[s] == key:
                return slot_keys, slot_rows, row
            s = (s + np.uint64(1)) & mask
        slot_keys[s] = key
        slot_rows[s] = row
    return slot_keys, slot_rows, -1


@njit(nogil=True, cache=True)
def lookup(slot_keys: np.ndarray, slot_rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """keys (b,) int64 -> rows (b,) int64 (-1 where absent) and how many were absent."""
    mask = np.uint64(slot_keys.shape[0] - 1)
    out = np.empty(keys.shape[0], dtype=np.int64)
    missing = 0
    for i in range(keys.shape[0]):
        key = keys[i]
        s = _home(key, mask)
        row = np.int64(EMPTY)
        while slot_rows[s] != EMPTY:
            if slot_keys[s] == key:
                row = np.int64(slot_rows[s])
                break
            s = (s + np.uint64(1)) & mask
        out[i] = row
        if row == EMPTY:
            missing += 1
    return out, missing


def home_numpy(keys: np.ndarray, slots: int) -> np.ndarray:
    """(n,) int64 -> (n,) int64 home slots; numpy integer arrays wrap on overflow like the kernel."""
    x = keys.astype(np.int64).view(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    x = x ^ (x >> np.uint64(31))
    return (x & np.uint64(slots - 1)).astype(np.int64)


def build_numpy(keys: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The plain twin of `build`."""
    slot_keys = np.zeros(slots, dtype=np.int64)
    slot_rows = np.full(slots, EMPTY, dtype=np.int32)
    homes = home_numpy(keys, slots)
    for row, (key, s) in enumerate(zip(keys.tolist(), homes.tolist(), strict=True)):
        while slot_rows[s] != EMPTY:
            if slot_keys[s] == key:
                return slot_keys, slot_rows, row
            s = (s + 1) % slots
        slot_keys[s] = key
        slot_rows[s] = row
    return slot_keys, slot_rows, -1


def lookup_numpy(slot_keys: np.ndarray, slot_rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """The plain twin of `lookup`."""
    slots = slot_keys.shape[0]
    out = np.full(keys.shape[0], EMPTY, dtype=np.int64)
    for i, (key, s) in enumerate(zip(keys.tolist(), home_numpy(keys, slots).tolist(), strict=True)):
        while slot_rows[s] != EMPTY:
            if slot_keys[s] == key:
                out[i] = slot_rows[s]
                break
            s = (s + 1) % slots
    return out, int((out == EMPTY).sum())


class KeyMap:
    """keys (n,) int64, distinct -> row numbers; holds the two slot arrays (counted in nbytes)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)
        self.slot_keys, self.slot_rows, duplicate = build(self.keys, slot_count(self.keys.shape[0]))
        self.duplicate = duplicate

    @property
    def nbytes(self) -> int:
        return int(self.slot_keys.nbytes + self.slot_rows.nbytes)

    def rows(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """keys (b,) int64 -> rows (b,) int64 (-1 where absent), number absent."""
        rows, missing = lookup(self.slot_keys, self.slot_rows, keys)
        return rows, int(missing)
