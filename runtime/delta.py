"""The in-memory delta of a mutable table: rows upserted (encoded with their tier's trained state)
and rows deleted since the memory-mapped base was written.

Readers take one `DeltaView` (immutable) per call and read only through it. The writer appends
encoded rows to per-tier arrays past every published view's end (slots are never rewritten; an
update of a row already in the delta takes a new slot), and its keys into hash tables shared
with earlier views, which read only the positions below their own counts; then it publishes a new
view by one reference assignment. So a reader sees a batch entirely or not at all, and never a
half-written row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.kernels.hashmap import BASE, NO_KEYS, AppendOnlyKeys, KeyMap, KeySet, delta_slots, resolve_keys
from runtime.tiers import Tier

EMPTY_I64 = np.zeros(0, np.int64)
NO_LIMIT = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class DeltaView:
    """changed (m,) int64: global rows whose current value is not the base's (updated, deleted or
    new), found through `changed_map` (row -> position); changed_tier (m,) int64 and changed_slot
    (m,) int64 locate the current value (slot -1: deleted). added_keys (p,) int64: keys of the new
    rows base_rows..base_rows+p-1, found through `added_map`. Per tier t: segments[t] is a Tier
    over its delta slots (None while empty), slot_rows[t] (s,) the global row of each slot,
    dead_slots[t] the slots that are no longer their row's current value, stale_local[t] the
    base-local ids (distinct) whose rows changed."""

    base_rows: int
    tiers: int
    changed: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    changed_tier: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    changed_slot: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    changed_map: KeyMap | None = None
    added_keys: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    added_map: KeyMap | None = None
    segments: tuple[Tier | None, ...] = ()
    slot_rows: tuple[np.ndarray, ...] = ()
    dead_slots: tuple[KeySet, ...] = ()
    stale_local: tuple[KeySet, ...] = ()
    slots_used: int = 0
    live_delta_rows: int = 0
    stale_base_rows: int = 0

    @property
    def empty(self) -> bool:
        return self.changed.size == 0

    @property
    def total_rows(self) -> int:
        """Base rows plus every new row ever added (deleted ones included: row numbers are not reused)."""
        return self.base_rows + int(self.added_keys.size)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows (b,) int64 -> (hit (b,) bool, position in `changed` (b,) int64, 0 where not hit)."""
        if self.changed_map is None:
            return np.zeros(rows.shape[0], bool), np.zeros(rows.shape[0], np.int64)
        pos, _ = self.changed_map.rows(rows)
        hit = pos >= 0
        return hit, np.where(hit, pos, 0)

    def slots_of(self, rows: np.ndarray) -> np.ndarray:
        """Global rows (b,) int64 (-1: missing) -> where each row's current value lives, (b,)
        int64: its delta slot (>= 0), hashmap.BASE or hashmap.DELETED. One kernel pass: what
        `locate` and a lookup of `changed_slot` give in several numpy passes."""
        if self.changed_map is None:
            return np.full(rows.shape[0], BASE, np.int64)
        limit = self.changed_map.limit
        return delta_slots(self.changed_map.table, NO_LIMIT if limit is None else limit, self.changed_slot, rows)

    def resolve_keys(self, base_map: KeyMap, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """keys (b,) int64 of a keyed table, base_map its key map -> (global rows (b,) int64, -1
        where absent or deleted; where each row's value lives (`slots_of`), (b,) int64; how many
        are absent or deleted), in one kernel call (`hashmap.resolve_keys`)."""
        if self.changed_map is None:
            rows, missing = base_map.rows(keys)
            return rows, np.full(keys.shape[0], BASE, np.int64), missing
        added = self.added_map
        return resolve_keys(
            base_map.table,
            NO_KEYS if added is None else added.table,
            NO_LIMIT if added is None or added.limit is None else added.limit,
            self.base_rows,
            self.changed_map.table,
            NO_LIMIT if self.changed_map.limit is None else self.changed_map.limit,
            self.changed_slot,
            keys,
        )

    def added_row_of(self, keys: np.ndarray) -> np.ndarray:
        """keys (b,) int64 -> rows of added keys (b,) int64, -1 where not added."""
        if self.added_map is None:
            return np.full(keys.shape[0], -1, np.int64)
        index, _ = self.added_map.rows(keys)
        return np.where(index >= 0, self.base_rows + index, -1)

    def key_of(self, rows: np.ndarray, base_keys: np.ndarray) -> np.ndarray:
        """Global rows (any shape) int64 -> their keys."""
        flat = rows.reshape(-1)
        out = np.empty(flat.shape[0], np.int64)
        base = flat < self.base_rows
        out[base] = base_keys[flat[base]]
        out[~base] = self.added_keys[flat[~base] - self.base_rows]
        return out.reshape(rows.shape)

    @property
    def nbytes(self) -> int:
        arrays = [self.changed, self.changed_tier, self.changed_slot, self.added_keys]
        arrays += list(self.slot_rows)
        maps = [m.nbytes for m in (self.changed_map, self.added_map) if m is not None]
        sets = [s.nbytes for s in (*self.dead_slots, *self.stale_local)]
        return int(sum(a.nbytes for a in arrays) + sum(maps) + sum(sets))


class DeltaStore:
    """The writer's side: growing per-tier row arrays and key indexes (only ever appended to) and
    the current view.

    locate_base(rows) -> (tier (b,), local (b,)) places base rows in their tiers. A batch costs
    hash-table work in its own size; what grows with the delta is copies of two (m,) int64 arrays
    (the current tier and slot of every changed row), which do not hold the interpreter lock."""

    def __init__(
        self, base: list[Tier], base_rows: int, locate_base: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    ) -> None:
        self.base = base
        self.locate_base = locate_base
        self.primary: list[dict[str, np.ndarray]] = [{} for _ in base]
        self.rerank: list[dict[str, np.ndarray]] = [{} for _ in base]
        self.slot_rows: list[dict[str, np.ndarray]] = [{} for _ in base]
        self.counts = [0] * len(base)
        self.changed = AppendOnlyKeys()
        self.added = AppendOnlyKeys()
        self.dead = [AppendOnlyKeys() for _ in base]
        self.stale = [AppendOnlyKeys() for _ in base]
        self.view = DeltaView(
            base_rows,
            len(base),
            segments=(None,) * len(base),
            slot_rows=(EMPTY_I64,) * len(base),
            dead_slots=(KeySet(EMPTY_I64),) * len(base),
            stale_local=(KeySet(EMPTY_I64),) * len(base),
        )

    @property
    def nbytes(self) -> int:
        """The growing row arrays, the view's index arrays, and what the segments' codecs derive
        from the delta's rows (not what they share with the base, such as inner-product tables)."""
        held = sum(a.nbytes for arrays in (*self.primary, *self.rerank) for a in arrays.values())
        for segment in self.view.segments:
            for codec in (None,) if segment is None else (segment.primary, segment.rerank):
                if codec is not None:
                    shared = {id(a) for a in codec.shared.values()}
                    held += sum(a.nbytes for a in codec.derived.values() if id(a) not in shared)
        return int(held + self.view.nbytes)

    @staticmethod
    def _append(store: dict[str, np.ndarray], count: int, rows: dict[str, np.ndarray]) -> None:
        """Write rows at count.. of store's arrays, growing them (by copy) when full. Readers hold
        views of [:count] of the old or new arrays: neither is written below count."""
        for name, values in rows.items():
            current = store.get(name)
            need = count + values.shape[0]
            if current is None or current.shape[0] < need:
                size = max(need, 2 * (0 if current is None else current.shape[0]), 64)
                grown = np.empty((size, *values.shape[1:]), values.dtype)
                if current is not None:
                    grown[:count] = current[:count]
                store[name] = current = grown
            current[count:need] = values

    def apply(
        self,
        rows: np.ndarray,
        tier_of: np.ndarray,
        encoded: dict[int, tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray] | None]],
        deleted: np.ndarray,
        added_keys: np.ndarray,
    ) -> DeltaView:
        """Publish a batch: rows (b,) distinct global rows upserted, each in tier tier_of (b,);
        encoded[t] = (positions in rows, primary row arrays, rerank row arrays) for tier t; deleted
        (e,) distinct global rows (none of them in rows); added_keys (p,) keys of the new rows
        (already numbered total_rows..)."""
        old = self.view
        tiers = len(self.base)
        slot_of = np.full(rows.shape[0], -1, np.int64)
        segments, slot_rows = list(old.segments), list(old.slot_rows)
        for t, (positions, primary, rerank) in encoded.items():
            start = self.counts[t]
            self._append(self.primary[t], start, primary)
            if rerank is not None:
                self._append(self.rerank[t], start, rerank)
            self._append(self.slot_rows[t], start, {"row": rows[positions]})
            stop = start + positions.size
            slot_of[positions] = np.arange(start, stop)
            self.counts[t] = stop
            slot_rows[t] = self.slot_rows[t]["row"][:stop]
            segments[t] = self.base[t].with_rows(
                {n: a[:stop] for n, a in self.primary[t].items()},
                {n: a[:stop] for n, a in self.rerank[t].items()} if rerank is not None else None,
            )
        touched = np.concatenate([rows, deleted])
        new_tier = np.concatenate([tier_of, np.full(deleted.size, -1, np.int64)])
        new_slot = np.concatenate([slot_of, np.full(deleted.size, -1, np.int64)])
        hit, pos = old.locate(touched)
        changed_tier, changed_slot = old.changed_tier.copy(), old.changed_slot.copy()
        # the slots these rows held before are no longer current
        before_tier, before_slot = changed_tier[pos[hit]], changed_slot[pos[hit]]
        dead = list(old.dead_slots)
        for t in range(tiers):
            gone = before_slot[(before_tier == t) & (before_slot >= 0)]
            if gone.size:
                self.dead[t].append(gone)
                dead[t] = self.dead[t].key_set()
        changed_tier[pos[hit]], changed_slot[pos[hit]] = new_tier[hit], new_slot[hit]
        fresh = touched[~hit]
        self.changed.append(fresh)
        changed_tier = np.concatenate([changed_tier, new_tier[~hit]])
        changed_slot = np.concatenate([changed_slot, new_slot[~hit]])
        # base rows changing for the first time become stale in their tier
        fresh_base = fresh[fresh < old.base_rows]
        base_tier, base_local = self.locate_base(fresh_base)
        stale = list(old.stale_local)
        for t in range(tiers):
            if (base_tier == t).any():
                self.stale[t].append(base_local[base_tier == t])
                stale[t] = self.stale[t].key_set()
        if added_keys.size:
            self.added.append(added_keys)
        live_change = int((new_slot >= 0).sum()) - int((before_slot >= 0).sum())
        self.view = DeltaView(
            base_rows=old.base_rows,
            tiers=old.tiers,
            changed=self.changed.values,
            changed_tier=changed_tier,
            changed_slot=changed_slot,
            changed_map=self.changed.key_map(),
            added_keys=self.added.values,
            added_map=self.added.key_map(),
            segments=tuple(segments),
            slot_rows=tuple(slot_rows),
            dead_slots=tuple(dead),
            stale_local=tuple(stale),
            slots_used=sum(self.counts),
            live_delta_rows=old.live_delta_rows + live_change,
            stale_base_rows=int(old.stale_base_rows + fresh_base.size),
        )
        return self.view
