"""The in-memory delta of a mutable table: rows upserted (encoded with their tier's trained state)
and rows deleted since the memory-mapped base was written.

Readers take one `DeltaView` (immutable) per call and read only through it. The writer appends
encoded rows to per-tier arrays past every published view's end (slots are never rewritten; an
update of a row already in the delta takes a new slot), then publishes a new view by one
reference assignment; so a reader sees a batch entirely or not at all, and never a half-written row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.tiers import Tier

EMPTY_I64 = np.zeros(0, np.int64)


@dataclass(frozen=True)
class DeltaView:
    """changed (m,) int64 sorted: global rows whose current value is not the base's (updated,
    deleted or new); changed_tier (m,) int64 and changed_slot (m,) int64 locate the current value
    (slot -1: deleted). added_keys (p,) int64: keys of new rows base_rows..base_rows+p-1, with
    added_sorted/added_rows for key lookups. Per tier t: segments[t] is a Tier over its delta slots
    (None while empty), slot_rows[t] (s,) the global row of each slot, dead_slots[t] the sorted
    slots no longer current, stale_local[t] the sorted base-local ids whose rows changed."""

    base_rows: int
    tiers: int
    changed: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    changed_tier: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    changed_slot: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    added_keys: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    added_sorted: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    added_rows: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    segments: tuple[Tier | None, ...] = ()
    slot_rows: tuple[np.ndarray, ...] = ()
    dead_slots: tuple[np.ndarray, ...] = ()
    stale_local: tuple[np.ndarray, ...] = ()
    slots_used: int = 0

    @property
    def empty(self) -> bool:
        return self.changed.size == 0

    @property
    def total_rows(self) -> int:
        """Base rows plus every new row ever added (deleted ones included: row numbers are not reused)."""
        return self.base_rows + int(self.added_keys.size)

    @property
    def live_delta_rows(self) -> int:
        return int((self.changed_slot >= 0).sum())

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows (b,) int64 -> (hit (b,) bool, position in `changed` (b,) int64)."""
        if self.changed.size == 0:
            return np.zeros(rows.shape[0], bool), np.zeros(rows.shape[0], np.int64)
        pos = np.minimum(np.searchsorted(self.changed, rows), self.changed.size - 1)
        return self.changed[pos] == rows, pos

    def added_row_of(self, keys: np.ndarray) -> np.ndarray:
        """keys (b,) int64 -> rows of added keys (b,) int64, -1 where not added."""
        if self.added_sorted.size == 0:
            return np.full(keys.shape[0], -1, np.int64)
        pos = np.minimum(np.searchsorted(self.added_sorted, keys), self.added_sorted.size - 1)
        return np.where(self.added_sorted[pos] == keys, self.added_rows[pos], -1)

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
        arrays = [self.changed, self.changed_tier, self.changed_slot, self.added_keys, self.added_sorted]
        arrays += [self.added_rows, *self.slot_rows, *self.dead_slots, *self.stale_local]
        return int(sum(a.nbytes for a in arrays))


class DeltaStore:
    """The writer's side: growing per-tier row arrays (only ever appended to) and the current view.

    locate_base(rows) -> (tier (b,), local (b,)) places base rows in their tiers."""

    def __init__(
        self, base: list[Tier], base_rows: int, locate_base: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    ) -> None:
        self.base = base
        self.locate_base = locate_base
        self.primary: list[dict[str, np.ndarray]] = [{} for _ in base]
        self.rerank: list[dict[str, np.ndarray]] = [{} for _ in base]
        self.counts = [0] * len(base)
        self.view = DeltaView(
            base_rows,
            len(base),
            segments=(None,) * len(base),
            slot_rows=(EMPTY_I64,) * len(base),
            dead_slots=(EMPTY_I64,) * len(base),
            stale_local=(EMPTY_I64,) * len(base),
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
                grown = np.empty(
                    (max(need, 2 * (0 if current is None else current.shape[0]), 64), *values.shape[1:]), values.dtype
                )
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
        """Publish a batch: rows (b,) global rows upserted, each in tier tier_of (b,); encoded[t] =
        (positions in rows, primary row arrays, rerank row arrays) for tier t; deleted (e,) global
        rows; added_keys (p,) keys of the new rows (already numbered total_rows..)."""
        old = self.view
        slot_of = np.full(rows.shape[0], -1, np.int64)
        segments = list(old.segments)
        slot_rows = list(old.slot_rows)
        for t, (positions, primary, rerank) in encoded.items():
            start = self.counts[t]
            self._append(self.primary[t], start, primary)
            if rerank is not None:
                self._append(self.rerank[t], start, rerank)
            stop = start + positions.size
            slot_of[positions] = np.arange(start, stop)
            self.counts[t] = stop
            slot_rows[t] = np.concatenate([old.slot_rows[t], rows[positions]])
            tier = self.base[t]
            segments[t] = tier.with_rows(
                {n: a[:stop] for n, a in self.primary[t].items()},
                {n: a[:stop] for n, a in self.rerank[t].items()} if rerank is not None else None,
            )
        # the newest entry of a row wins: deletions after this batch's upserts never share a row
        all_rows = np.concatenate([old.changed, rows, deleted])
        all_tier = np.concatenate([old.changed_tier, tier_of, np.full(deleted.size, -1, np.int64)])
        all_slot = np.concatenate([old.changed_slot, slot_of, np.full(deleted.size, -1, np.int64)])
        last = all_rows.size - 1 - np.unique(all_rows[::-1], return_index=True)[1]
        changed, changed_tier, changed_slot = all_rows[last], all_tier[last], all_slot[last]
        dead, stale = [], []
        base_changed = changed[changed < old.base_rows]
        base_tier, base_local = self.locate_base(base_changed)
        for t in range(len(self.base)):
            live = changed_slot[(changed_tier == t) & (changed_slot >= 0)]
            dead.append(np.setdiff1d(np.arange(self.counts[t], dtype=np.int64), live))
            stale.append(np.sort(base_local[base_tier == t]))
        keys = np.concatenate([old.added_keys, added_keys])
        order = np.argsort(keys, kind="stable")
        self.view = DeltaView(
            old.base_rows,
            old.tiers,
            changed,
            changed_tier,
            changed_slot,
            keys,
            keys[order],
            old.base_rows + order.astype(np.int64),
            tuple(segments),
            tuple(slot_rows),
            tuple(dead),
            tuple(stale),
            sum(self.counts),
        )
        return self.view
