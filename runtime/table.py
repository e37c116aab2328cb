"""One loaded table: tiers of rows (each a codec, an optional richer rerank codec and an optional
projection), an optional int64 key map, and an in-memory delta of upserts and deletes.

Every public method validates its input (typed errors from `runtime.errors`) and then calls the
tiers; results are sorted best first with ties broken by ascending row (a dense table's id; a
keyed table's position of the key as compressed, new keys after).
Rows are numbered 0..n-1 in the base; a keyed table's new keys get the numbers n, n+1, ...
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from runtime.codecs import Codec, Progress
from runtime.delta import DeltaStore, DeltaView
from runtime.errors import DeltaFull, InvalidRequest, KeyNotFound, RowRefused
from runtime.exclusions import Candidates
from runtime.kernels import checks, dense, weighted
from runtime.kernels.hashmap import DELETED, EMPTY, KeyMap, delta_slots, lookup_below, resolve_keys
from runtime.kernels.rowwise import PARALLEL_MIN_IDS
from runtime.tiers import Tier, top_by_score, train_tier
from runtime.validation import (
    FLOAT32,
    INT64,
    check_flag,
    check_id_matrix,
    check_ids,
    check_k,
    check_keys,
    check_lengths,
    check_metric,
    check_offsets,
    check_path,
    check_queries,
    check_seed,
    check_table_input,
    check_weights,
    direct_bag_arrays,
    direct_gather_ids,
)

__version__ = "0.1.0"
POOL_MODES = ("sum", "mean")
MISSING_POLICIES = ("error", "zeros")
DEFAULT_DELTA_CAPACITY = 1 << 20
EMPTY_ROWS = np.zeros(0, np.int64)
# a search's exclusions placed where rows are stored: for each tier, each query's sorted local rows
# (then each query's sorted delta slots), None for a part no query leaves anything out of
PartsLeftOut = tuple[list[list[np.ndarray] | None], list[list[np.ndarray] | None]]


def index_dtype(rows: int) -> type[np.unsignedinteger[Any]] | type[np.int64]:
    """The narrowest integer dtype that holds every row number 0..rows-1 (the tier index's)."""
    if rows <= 1 << 16:
        return np.uint16
    return np.uint32 if rows <= 1 << 32 else np.int64


def tier_index_bytes(rows: int, tiers: int) -> int:
    """Bytes of a table's tier index: each tier's rows and each row's slot, one narrow int each."""
    return 0 if tiers <= 1 else 2 * rows * np.dtype(index_dtype(rows)).itemsize


_EMPTY = np.empty
"""np.empty bound once: a lookup of one id spends ~4 % of its time finding it through the module."""
_NDARRAY = np.ndarray


SEQUENCE_MAX = 2**63 - 1
"""A sequence is an int64 on the wire (gRPC, the update log) and in the artifact."""


def checked_sequence(value: Any) -> int:
    """An update's log position as an int: an integer in [0, SEQUENCE_MAX], else InvalidRequest."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= SEQUENCE_MAX:
        raise InvalidRequest(f"sequence must be an integer from 0 to {SEQUENCE_MAX}, got {value!r}")
    return int(value)


def locate_base(
    tier_starts: np.ndarray | None, slot_of: np.ndarray | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Base global rows (b,) -> tier (b,) int64, local (b,) int64, by a table's tier index
    (`Table._tier_index`; None for one tier)."""
    if tier_starts is None or slot_of is None:
        return np.zeros(rows.shape[0], np.int64), rows
    slot = slot_of[rows].astype(np.int64)
    tier = np.searchsorted(tier_starts, slot, side="right") - 1
    return tier, slot - tier_starts[tier]


class Table:
    """A compressed `(rows, dim)` embedding table held in memory (or memory-mapped).

    Table(primary, rerank) is a one-tier dense table; `tiers` with `tier_rows` (the sorted global
    rows each tier holds, together every row once) make a tiered one; `keys` (rows,) int64,
    distinct, make it keyed."""

    def __init__(
        self,
        primary: Codec | None = None,
        rerank: Codec | None = None,
        *,
        tiers: list[Tier] | None = None,
        tier_rows: list[np.ndarray] | None = None,
        keys: np.ndarray | None = None,
        missing: str = "error",
        new_key_tier: int | None = None,
        sequence: int = 0,
        delta_capacity: int = DEFAULT_DELTA_CAPACITY,
        version: str = "",
        provenance: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        if tiers is None:
            if primary is None:
                raise InvalidRequest("a table needs a primary codec or tiers")
            if rerank is not None and (rerank.rows, rerank.dim) != (primary.rows, primary.dim):
                raise InvalidRequest("rerank codec must cover the same rows and dim as the primary codec")
            tiers = [Tier(primary, rerank)]
        if not tiers or len(tiers) > 255:
            raise InvalidRequest(f"a table has 1 to 255 tiers, got {len(tiers)}")
        self.tiers = list(tiers)
        self._dim = self._check_dims(self.tiers)
        self._rows = sum(t.rows for t in self.tiers)
        # every search checks its metric against these: worked out once (the tiers are fixed)
        self._metrics = tuple(m for m in self.tiers[0].metrics if all(m in t.metrics for t in self.tiers))
        if len({t.primary.dim for t in self.tiers}) > 1:
            # a score between codes (Hamming's count of differing bits) of 16 and one of 64 do
            # not rank against each other: merged, the short codes won nearly every place
            own_space = {m for t in self.tiers for m in t.primary.code_space_metrics}
            self._metrics = tuple(m for m in self._metrics if m not in own_space)
        self.tier_rows = None if len(self.tiers) == 1 else self._check_tier_rows(tier_rows)
        self._tier_starts, self._slot_of = self._tier_index()
        if missing not in MISSING_POLICIES:
            raise InvalidRequest(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
        self.missing = missing
        self.keys = None if keys is None else np.ascontiguousarray(keys)
        self.keymap = None if keys is None else self._build_keymap()
        cheapest = min(range(len(self.tiers)), key=lambda t: self.tiers[t].row_bytes)
        self.new_key_tier = cheapest if new_key_tier is None else int(new_key_tier)
        if not 0 <= self.new_key_tier < len(self.tiers):
            raise InvalidRequest(f"new_key_tier {new_key_tier} is not a tier (0..{len(self.tiers) - 1})")
        self.sequence = sequence
        if isinstance(delta_capacity, bool) or not isinstance(delta_capacity, (int, np.integer)) or delta_capacity < 0:
            raise InvalidRequest(f"delta_capacity must be a non-negative integer, got {delta_capacity!r}")
        self.delta_capacity = int(delta_capacity)
        # the index itself, not a bound method: a method would hold the table from its own delta,
        # a cycle only the garbage collector breaks (a deleted table's memory came back late)
        self._delta = DeltaStore(
            self.tiers, self._rows, functools.partial(locate_base, self._tier_starts, self._slot_of)
        )
        # the format-1 shape: rows are the one codec's rows in the table's own dimension, so a
        # lookup is the codec's decode with nothing to map or project back
        self._dense_one_tier = len(self.tiers) == 1 and self.keys is None and self.tiers[0].projection is None
        # the same with keys: the map's rows are the codec's rows, so a lookup is a probe then a decode
        self._keyed_one_tier = len(self.tiers) == 1 and self.keymap is not None and self.tiers[0].projection is None
        self._richest = self.tiers[0].richest
        self._direct_gather = self._richest.direct_gather() if self._dense_one_tier else None
        self._direct_bags = self._richest.direct_bags() if self._dense_one_tier else None
        self._write_lock = threading.Lock()
        self.version = version
        self.provenance = dict(provenance or {})
        self.path = path

    # ---- construction checks -------------------------------------------------------------------
    @staticmethod
    def _check_dims(tiers: list[Tier]) -> int:
        dims = {t.projection.basis.shape[0] if t.projection is not None else t.primary.dim for t in tiers}
        if len(dims) != 1:
            raise InvalidRequest(f"every tier must decode to one dimension, got {sorted(dims)}")
        for t in tiers:
            if t.rerank is not None and (t.rerank.rows, t.rerank.dim) != (t.primary.rows, t.primary.dim):
                raise InvalidRequest("rerank codec must cover the same rows and dim as the primary codec")
        return dims.pop()

    def _check_tier_rows(self, tier_rows: list[np.ndarray] | None) -> list[np.ndarray]:
        """Each tier's global rows, validated, held in the narrowest dtype that numbers every row."""
        if tier_rows is None or len(tier_rows) != len(self.tiers):
            raise InvalidRequest("a table of several tiers needs the rows of each tier")
        seen = np.zeros(self._rows, dtype=bool)
        narrow = index_dtype(self._rows)
        out = []
        for t, (tier, rows) in enumerate(zip(self.tiers, tier_rows, strict=True)):
            arr = np.asarray(rows)
            if arr.dtype.kind not in "iu" or arr.shape != (tier.rows,):
                raise InvalidRequest(f"tier {t} rows must be integers ({tier.rows},), got {arr.dtype} {arr.shape}")
            if arr.size and (arr.min() < 0 or arr.max() >= self._rows or (np.diff(arr.astype(np.int64)) <= 0).any()):
                raise InvalidRequest(f"tier {t} rows must be ascending, distinct and in 0..{self._rows - 1}")
            if seen[arr].any():
                raise InvalidRequest(f"row {int(arr[seen[arr]][0])} is in two tiers")
            seen[arr] = True
            out.append(np.ascontiguousarray(arr, dtype=narrow))
        return out

    def _tier_index(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Tier boundaries (tiers + 1,) int64 and each row's slot (rows,) in the tiers laid end to
        end (tier t holds slots starts[t]..starts[t+1]-1); none for one tier. One narrow integer a
        row, not a tier id and a position: at the small budgets the planner meets, the index is a
        large share of the table."""
        if self.tier_rows is None:
            return None, None
        starts = np.zeros(len(self.tiers) + 1, np.int64)
        starts[1:] = np.cumsum([t.rows for t in self.tiers])
        slot_of = np.empty(self._rows, index_dtype(self._rows))
        for t, rows in enumerate(self.tier_rows):
            slot_of[rows] = np.arange(starts[t], starts[t + 1], dtype=slot_of.dtype)
        return starts, slot_of

    def _build_keymap(self) -> KeyMap:
        keys = self.keys
        if keys is None or keys.dtype != np.int64 or keys.shape != (self._rows,):
            raise InvalidRequest(f"keys must be int64 ({self._rows},), got {getattr(keys, 'dtype', None)}")
        keymap = KeyMap(keys)
        if keymap.duplicate >= 0:
            pos = keymap.duplicate
            raise InvalidRequest(f"keys[{pos}] = {int(keys[pos])} repeats an earlier key")
        return keymap

    def _locate_base(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base global rows (b,) -> tier (b,) int64, local (b,) int64."""
        return locate_base(self._tier_starts, self._slot_of, rows)

    # ---- description --------------------------------------------------------------------------
    @property
    def primary(self) -> Codec:
        """Tier 0's primary codec (the only one of a one-tier table)."""
        return self.tiers[0].primary

    @property
    def rerank(self) -> Codec | None:
        return self.tiers[0].rerank

    @property
    def richest(self) -> Codec:
        return self.tiers[0].richest

    @property
    def rows(self) -> int:
        """Rows of the base (memory-mapped) table."""
        return self._rows

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def keyed(self) -> bool:
        return self.keys is not None

    @property
    def codec(self) -> str:
        return self.primary.name

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.primary.params)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self._metrics

    @property
    def delta_rows(self) -> int:
        """Rows whose current value lives in the delta."""
        return self._delta.view.live_delta_rows

    @property
    def delta_slots(self) -> int:
        """Delta slots taken (of `delta_capacity`); `compact` frees them."""
        return self._delta.view.slots_used

    @property
    def sequence(self) -> int:
        return self._sequence

    @sequence.setter
    def sequence(self, value: int) -> None:
        self._sequence = checked_sequence(value)

    @property
    def nbytes(self) -> int:
        """Bytes of every array the table holds: tiers (codecs, projections), tier index, key map, delta."""
        total = sum(t.nbytes for t in self.tiers) + self._delta.nbytes
        for extra in (self._slot_of, self.keys, *(self.tier_rows or [])):
            total += 0 if extra is None else extra.nbytes
        return int(total + (self.keymap.nbytes if self.keymap is not None else 0))

    @property
    def fp32_nbytes(self) -> int:
        return self.rows * self.dim * 4

    @property
    def compression_ratio(self) -> float:
        return self.fp32_nbytes / self.nbytes

    def describe(self) -> dict[str, Any]:
        first = self.tiers[0]
        return {
            "rows": self.rows,
            "dim": self.dim,
            "codec": self.codec,
            "params": self.params,
            "rerank": None if first.rerank is None else {"codec": first.rerank.name, "params": first.rerank.params},
            "metrics": list(self.metrics),
            "nbytes": self.nbytes,
            "fp32_nbytes": self.fp32_nbytes,
            "compression_ratio": round(self.compression_ratio, 4),
            "version": self.version,
            "keyed": self.keyed,
            "missing": self.missing,
            "tiers": [t.describe() for t in self.tiers],
            "delta_rows": self.delta_rows,
            "delta_slots": self.delta_slots,
            "delta_capacity": self.delta_capacity,
            "sequence": self.sequence,
        }

    # ---- addressing ----------------------------------------------------------------------------
    def _one_base(self, view: DeltaView) -> bool:
        """One tier in the table's own dimension and no delta: the paths of a format-1 table,
        unchanged (keys mapped around them)."""
        return len(self.tiers) == 1 and self.tiers[0].projection is None and view.empty

    def _resolve(self, ids: Any, view: DeltaView, field: str = "ids") -> tuple[np.ndarray, int]:
        """ids or keys (b,) -> global rows (b,) int64, -1 where missing, and how many are."""
        rows, _, missing = self._resolve_slots(ids, view, field)
        return rows, missing

    def _resolve_slots(
        self, ids: Any, view: DeltaView, field: str = "ids"
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """`_resolve`, and where each row's current value lives (`DeltaView.slots_of`, (b,) int64;
        None when the delta is empty), for `_decode_rows` to use rather than look up again."""
        if self.keymap is not None:
            keys = check_keys(ids, field)
            if view.empty:
                rows, missing = self.keymap.rows(keys)
                return rows, None, missing
            return view.resolve_keys(self.keymap, keys)
        rows = check_ids(ids, self.rows, field)
        slots = None
        if not view.empty and rows.size:
            slots = view.slots_of(rows)
            rows = np.where(slots == DELETED, -1, rows)
        return rows, slots, int((rows < 0).sum())

    def _require(self, rows: np.ndarray, ids: Any, field: str, columns: int = 0) -> np.ndarray:
        """Refuse a missing key whatever the policy (search and score need real rows). rows and
        ids flattened from a matrix of `columns` columns: the key is named by row and column."""
        if rows.size and rows.min() < 0:
            pos = int(np.flatnonzero(rows < 0)[0])
            key = int(np.asarray(ids).reshape(-1)[pos])
            if columns:
                row, pos = divmod(pos, columns)
                field = f"{field}[{row}]"
            raise KeyNotFound(key, pos, field)
        return rows

    def _decode_rows(
        self, rows: np.ndarray, view: DeltaView, slots: np.ndarray | None = None, metric: str | None = None
    ) -> np.ndarray:
        """Global rows (b,) int64 (-1: a zero row) -> (b, dim) float32, by each tier's richest
        codec or, for stored rows as queries, by the one that scores `metric` (`Tier.decode`).
        slots: `_resolve_slots`' answer for these rows, when the caller has it."""
        if len(self.tiers) == 1 and view.empty and (rows.size == 0 or rows.min() >= 0):
            return self.tiers[0].decode(rows, metric)
        if len(self.tiers) == 1:
            where = view.slots_of(rows) if slots is None else slots
            return self.tiers[0].decode_merged(rows, where, view.segments[0], metric)
        out = np.zeros((rows.shape[0], self.dim), np.float32)
        present = np.flatnonzero(rows >= 0)
        live = rows[present]
        hit, pos = view.locate(live)
        tier, local = self._locate_base(np.where(hit, 0, live))
        for t, base in enumerate(self.tiers):
            pick = ~hit & (tier == t)
            if pick.any():
                out[present[pick]] = base.decode(local[pick], metric)
            if view.empty:
                continue
            moved = hit & (view.changed_tier[pos] == t)
            segment = view.segments[t]
            if moved.any() and segment is not None:
                out[present[moved]] = segment.decode(view.changed_slot[pos[moved]], metric)
        return out

    def _answer_ids(self, rows: np.ndarray, view: DeltaView) -> np.ndarray:
        """Global rows -> what callers address: keys on keyed tables, else the rows."""
        if self.keys is None:
            return rows
        return view.key_of(rows, self.keys)

    # ---- lookup -------------------------------------------------------------------------------
    def lookup(self, ids: Any) -> np.ndarray:
        """ids or keys (n,) -> (n, dim) float32 reconstructed rows (by the richest codec)."""
        # `_direct_lookup` written out, `direct_gather_ids` too: at one id, each Python call and
        # attribute read is ~3 % of the lookup. `_direct_gather` is None from the first upsert on
        # (the delta then applies).
        gather = self._direct_gather
        if gather is not None and type(ids) is _NDARRAY and ids.dtype is INT64 and ids.ndim == 1:
            out = _EMPTY((len(ids), self._dim), FLOAT32)  # len, not shape[0]: no shape tuple built
            if gather(ids, out) < 0:
                return out
        return self.lookup_counted(ids)[0]

    def _direct_lookup(self, ids: Any) -> np.ndarray | None:
        """A dense one-tier table's lookup: one check of the array's type, one allocation and one
        kernel call, the bounds checked and the threads chosen inside it (~1.2 µs for one id,
        warm, against ~3 µs as separate steps; 10.0 against 13.7 µs for 1,024 int8 rows). None
        where that does not apply or an id is out of range: the general path then converts,
        checks and names what is wrong. `lookup` repeats these lines rather than calling this:
        the call is ~5 % of a one-id lookup."""
        gather = self._direct_gather
        if gather is None or not direct_gather_ids(ids):
            return None
        out = _EMPTY((len(ids), self._dim), FLOAT32)
        return out if gather(ids, out) < 0 else None

    def lookup_counted(self, ids: Any) -> tuple[np.ndarray, int]:
        """lookup, and how many keys were missing (answered as zero rows under missing="zeros")."""
        view = self._delta.view
        if self._dense_one_tier and view.empty:
            # a format-1 table's path, with nothing added: lookups of a few ids cost microseconds
            found = self._direct_lookup(ids)
            if found is not None:
                return found, 0
            checked = check_ids(ids, self.rows)
            if checked.size == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._richest.decode(checked), 0
        if self._keyed_one_tier and view.empty and self.keymap is not None:
            keys = check_keys(ids, "keys")
            if keys.size == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            # with a key absent, the general path below applies the missing-key policy
            found, _ = self._richest.decode_keys(self.keymap.table, keys)
            if found is not None:
                return found, 0
        rows, slots, missing = self._resolve_slots(ids, view)
        if missing and self.missing == "error":
            self._require(rows, ids, "keys" if self.keyed else "ids")
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32), 0
        return self._decode_rows(rows, view, slots), missing

    def lookup_pooled(self, ids: Any, offsets: Any, mode: str = "sum", per_sample_weights: Any = None) -> np.ndarray:
        """torch.nn.EmbeddingBag semantics: ids (n,), offsets (B,) -> (B, dim) float32.
        Bag b pools ids[offsets[b]:offsets[b+1]] (the last runs to n); an empty bag is zeros.
        per_sample_weights (n,) float32, mode "sum" only: bag b is sum of weights[t] * row(ids[t])."""
        return self.lookup_pooled_counted(ids, offsets, mode, per_sample_weights)[0]

    def lookup_pooled_counted(
        self, ids: Any, offsets: Any, mode: str = "sum", per_sample_weights: Any = None
    ) -> tuple[np.ndarray, int]:
        if mode not in POOL_MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(POOL_MODES)}, got {mode!r}")
        if per_sample_weights is not None and mode != "sum":
            raise InvalidRequest(f'per_sample_weights are only supported with mode "sum", got {mode!r}')
        # a dense one-tier table's bags in one kernel call, as `lookup`'s gather (None from the
        # first upsert on); anything it refuses takes the path below, which names the problem
        bags = self._direct_bags
        if bags is not None and per_sample_weights is None and direct_bag_arrays(ids, offsets):
            out = _EMPTY((len(offsets), self._dim), FLOAT32)
            if bags(ids, offsets, mode == "mean", out) < 0:
                return out, 0
        view = self._delta.view
        if self._dense_one_tier and view.empty and per_sample_weights is None:
            checked = check_ids(ids, self.rows)
            bounds = check_offsets(offsets, checked.size)
            if bounds.size == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._richest.decode_bags(checked, bounds, mode == "mean"), 0
        rows, slots, missing = self._resolve_slots(ids, view)
        bounds = check_offsets(offsets, rows.size)
        weights = None if per_sample_weights is None else check_weights(per_sample_weights, rows.size)
        if missing and self.missing == "error":
            self._require(rows, ids, "keys" if self.keyed else "ids")
        if bounds.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32), missing
        if weights is not None:
            decoded = self._decode_rows(rows, view, slots) if rows.size else np.zeros((0, self.dim), np.float32)
            return weighted.pool_weighted(decoded, weights, bounds), missing
        if self._one_base(view) and not missing:
            return self.tiers[0].richest.decode_bags(rows, bounds, mode == "mean"), 0
        decoded = self._decode_rows(rows, view, slots)
        return dense.pool(decoded, bounds, mode == "mean", self._richest.parallel_min_ids), missing

    # ---- search -------------------------------------------------------------------------------
    def check_search_args(self, k: Any, metric: Any, oversample: Any) -> tuple[int, str, int]:
        """k, metric and oversample as `search` takes them, checked (InvalidRequest names the
        first bad one) -> (k, metric, oversample)."""
        checked_k = check_k(k)
        checked_metric = check_metric(metric, self.metrics)
        checked_oversample = check_k(oversample, "oversample")
        return checked_k, checked_metric, checked_oversample

    def _live_rows(self, view: DeltaView) -> int:
        if view.empty:
            return self.rows
        return self.rows - view.stale_base_rows + view.live_delta_rows

    def _search_rows(
        self,
        q: np.ndarray,
        k: int,
        metric: str,
        oversample: int,
        view: DeltaView,
        left_out: PartsLeftOut | None = None,
    ) -> Candidates:
        """Every tier and delta segment scanned, one merged top k of each query (`Candidates`):
        ids (keys on keyed tables) and scores. Ties go to the lower row, so a tier's own top k
        (local rows ascend with global rows) always holds the merged answer's share; rows in the
        delta break ties among themselves by the order they were written. left_out: each query's
        rows and slots to leave out, part by part (`_parts_left_out`): every part answers as if
        they were not in it, so the merged answer is the table's without them."""
        base_drop, delta_drop = left_out if left_out is not None else (None, None)
        ids_parts, score_parts, padding_parts, kept = [], [], [], np.zeros(q.shape[0], np.int64)
        for t, tier in enumerate(self.tiers):
            parts = []
            stale = view.stale_local[t]
            if tier.rows - stale.size > 0:
                found = tier.search(q, k, metric, oversample, stale, None if base_drop is None else base_drop[t])
                rows = found.ids if self.tier_rows is None else self.tier_rows[t][found.ids].astype(np.int64)
                parts.append((rows, found))
            segment = view.segments[t]
            if segment is not None and segment.rows - view.dead_slots[t].size > 0:
                drop = None if delta_drop is None else delta_drop[t]
                found = segment.search(q, k, metric, oversample, view.dead_slots[t], drop)
                parts.append((view.slot_rows[t][found.ids], found))
            for rows, found in parts:
                ids_parts.append(rows)
                score_parts.append(found.scores)
                padding_parts.append(found.padding())
                kept += found.kept
        rows, scores = np.concatenate(ids_parts, axis=1), np.concatenate(score_parts, axis=1)
        padding = np.concatenate(padding_parts, axis=1) if left_out is not None else None
        rows, scores = top_by_score(rows, scores, k, metric, padding)
        return Candidates(self._answer_ids(rows, view), scores, np.minimum(kept, k))

    def search(
        self,
        queries: Any,
        k: Any,
        metric: str = "ip",
        oversample: Any = 1,
        exclude_ids: Any = None,
        exclude_lengths: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float -> ids or keys (q, k') int64, scores (q, k') float32,
        k' = min(k, rows). exclude_ids (n,) int64 ids (keys on keyed tables) are left out of the
        results: of every query's, or, with exclude_lengths (q,), the first lengths[0] of query 0's,
        the next lengths[1] of query 1's, and so on; each query's answer is then the table's
        without those rows, and k' is at most the fewest rows a query has left (`exclusions`)."""
        k, metric, oversample = self.check_search_args(k, metric, oversample)
        q = check_queries(queries, self.dim)
        excluded = self.exclusions(exclude_ids, exclude_lengths, q.shape[0])
        view = self._delta.view
        kk = min(k, self._live_rows(view))
        if q.shape[0] == 0 or kk == 0:
            return np.zeros((q.shape[0], kk), np.int64), np.zeros((q.shape[0], kk), np.float32)
        left_out = self._parts_left_out(excluded, view)
        if self._one_base(view):
            found = self.tiers[0].search(q, kk, metric, oversample, drop=None if left_out is None else left_out[0][0])
            ids, scores = found.first(kk)
            return (ids if self.keys is None else self.keys[ids]), scores
        return self._search_rows(q, kk, metric, oversample, view, left_out).first(kk)

    def _parts_left_out(
        self, excluded: list[np.ndarray] | None, view: DeltaView, own: np.ndarray | None = None
    ) -> PartsLeftOut | None:
        """A search's exclusions (`exclusions`: each query's sorted ids or keys) where their rows'
        current values are stored: for each tier t, each query's sorted distinct local rows
        (base[t]) and delta slots (delta[t]), None where no query leaves out any of that part.
        Ids or keys the table does not hold leave nothing out. own (q,) global rows: the queries'
        own rows (search_by_id), never left out here, so that `_drop_self` finds and removes them."""
        if excluded is None:
            return None
        tiers = range(len(self.tiers))
        if self.keymap is None and view.empty and len(self.tiers) == 1:
            # a dense one-tier table's ids are its local rows
            placed = {id(group): ([group], [EMPTY_ROWS]) for group in excluded}
        else:
            distinct = list({id(group): group for group in excluded}.values())
            flat = np.concatenate(distinct)
            rows, _ = self._resolve(flat, view, "exclude_ids")
            tier, index, in_delta = self._locate(rows, view)
            bounds = np.cumsum([0] + [group.size for group in distinct])
            placed = {}
            for group, lo, hi in zip(distinct, bounds[:-1], bounds[1:], strict=True):
                held = slice(lo, hi)
                live = rows[held] >= 0
                t_of, at, moved = tier[held][live], index[held][live], in_delta[held][live]
                # distinct ids or keys are distinct rows, each stored once: sorting is enough
                placed[id(group)] = (
                    [np.sort(at[(t_of == t) & ~moved]) for t in tiers],
                    [np.sort(at[(t_of == t) & moved]) for t in tiers],
                )
        base: list[list[np.ndarray]] = [[] for _ in tiers]
        delta: list[list[np.ndarray]] = [[] for _ in tiers]
        for group in excluded:
            for t in tiers:
                base[t].append(placed[id(group)][0][t])
                delta[t].append(placed[id(group)][1][t])
        if own is not None:
            own_tier, own_index, own_moved = self._locate(own, view)
            for i, (t, at, moved) in enumerate(
                zip(own_tier.tolist(), own_index.tolist(), own_moved.tolist(), strict=True)
            ):
                part = delta if moved else base
                part[t][i] = part[t][i][part[t][i] != at]
        return (
            [lists if any(a.size for a in lists) else None for lists in base],
            [lists if any(a.size for a in lists) else None for lists in delta],
        )

    def _locate(self, rows: np.ndarray, view: DeltaView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global rows (b,) int64 -> where each one's current value is stored: tier (b,) int64,
        local row or delta slot (b,) int64, in the delta (b,) bool; a row -1 (none) gets an
        answer that means nothing."""
        hit, pos = view.locate(np.maximum(rows, 0))
        tier, index = self._locate_base(np.where(hit | (rows < 0), 0, rows))
        if hit.any():
            tier = np.where(hit, view.changed_tier[pos], tier)
            index = np.where(hit, view.changed_slot[pos], index)
        return tier, index, hit

    def exclusions(self, exclude_ids: Any, exclude_lengths: Any, nq: int) -> list[np.ndarray] | None:
        """A search's ids to leave out -> the distinct ids (keys on keyed tables) of each of its nq
        queries, sorted int64 arrays, or None when nothing is left out. exclude_ids (n,) int64
        apply to every query, or are split among them by exclude_lengths (nq,) int64.

        On a dense table an id outside it is refused, as in every other request; on a keyed table
        a key it does not hold is allowed and leaves nothing out (a caller's list of items already
        seen may hold one deleted since)."""
        if exclude_ids is None:
            if exclude_lengths is not None:
                raise InvalidRequest("exclude_lengths needs exclude_ids")
            return None
        if self.keymap is not None:
            values = check_keys(exclude_ids, "exclude_ids")
        else:
            values = check_ids(exclude_ids, self.rows, "exclude_ids")
        if exclude_lengths is None:
            shared = np.unique(values)
            return [shared] * nq if shared.size else None
        offsets = check_lengths(exclude_lengths, values.shape[0], "exclude_lengths", "exclude_ids")
        if offsets.shape[0] != nq:
            raise InvalidRequest(f"exclude_lengths has {offsets.shape[0]} entries for {nq} queries")
        bounds = np.append(offsets, values.shape[0])
        groups = [np.unique(values[bounds[i] : bounds[i + 1]]) for i in range(nq)]
        return groups if any(group.size for group in groups) else None

    def _query_rows(self, query_ids: Any, view: DeltaView) -> np.ndarray:
        """query_ids (q,) ids or keys -> their global rows (q,) int64; a query id not held is refused."""
        return self._require(self._resolve(query_ids, view, "query_ids")[0], query_ids, "query_ids")

    def check_query_ids(self, query_ids: Any) -> None:
        """Refuse query_ids as `search_by_id` would now (not ids or keys, or one not held)."""
        self._query_rows(query_ids, self._delta.view)

    def search_by_id(
        self,
        query_ids: Any,
        k: Any,
        metric: str = "ip",
        oversample: Any = 1,
        exclude_self: bool = True,
        exclude_ids: Any = None,
        exclude_lengths: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search with stored rows as queries. query_ids (q,) -> ids (q, k'), scores (q, k') where
        k' = min(k, rows - 1) with exclude_self (the query's own id is dropped), else min(k, rows);
        exclude_ids and exclude_lengths leave ids out as in `search`."""
        k, metric, oversample = self.check_search_args(k, metric, oversample)
        exclude_self = check_exclude_self(exclude_self)
        view = self._delta.view
        rows = self._query_rows(query_ids, view)
        excluded = self.exclusions(exclude_ids, exclude_lengths, rows.size)
        live = self._live_rows(view)
        kk = min(k, live - 1) if exclude_self else min(k, live)
        if rows.size == 0 or kk <= 0:
            return np.zeros((rows.size, max(kk, 0)), np.int64), np.zeros((rows.size, max(kk, 0)), np.float32)
        extra = 1 if exclude_self else 0
        # the query's own row is `_drop_self`'s to remove: left out before, it would cost the answer
        # a row, and rescore another candidate than without it
        left_out = self._parts_left_out(excluded, view, rows if exclude_self else None)
        if self._one_base(view):
            drop = None if left_out is None else left_out[0][0]
            ids, scores = self.tiers[0].search_by_local_id(rows, kk, metric, oversample, extra, drop).first(kk + extra)
            own = rows
            if self.keys is not None:
                ids, own = self.keys[ids], self.keys[rows]
        else:
            decoded, own = self._decode_rows(rows, view, metric=metric), self._answer_ids(rows, view)
            found = self._search_rows(decoded, kk + extra, metric, oversample, view, left_out)
            ids, scores = found.first(kk + extra)
        if exclude_self:
            ids, scores = _drop_self(ids, scores, own)
        return np.ascontiguousarray(ids[:, :kk]), np.ascontiguousarray(scores[:, :kk])

    def score(self, candidate_ids: Any, queries: Any = None, query_ids: Any = None, metric: str = "ip") -> np.ndarray:
        """Scores of given candidates: candidate_ids (q, c) with queries (q, dim) or query_ids (q,)
        -> (q, c) float32, by the richest codec that has the metric."""
        metric = check_metric(metric, self.metrics)
        if (queries is None) == (query_ids is None):
            raise InvalidRequest("give exactly one of queries or query_ids")
        view = self._delta.view
        if self.keys is None:
            cands = check_id_matrix(candidate_ids, self.rows)
        else:
            matrix = np.asarray(candidate_ids)
            if matrix.ndim != 2:
                raise InvalidRequest(f"candidate_ids must be 2-D (queries, candidates), got shape {matrix.shape}")
            cands = self._resolve(matrix.reshape(-1), view, "candidate_ids")[0].reshape(matrix.shape)
        self._require(cands.reshape(-1), np.asarray(candidate_ids).reshape(-1), "candidate_ids", cands.shape[1])
        if query_ids is not None:
            qrows = self._require(self._resolve(query_ids, view, "query_ids")[0], query_ids, "query_ids")
            if qrows.size != cands.shape[0]:
                raise InvalidRequest(f"{qrows.size} query_ids but candidate_ids has {cands.shape[0]} rows")
            if cands.size == 0:
                return np.zeros(cands.shape, np.float32)
            if self._one_base(view):
                return self.tiers[0].score_by_local_id(cands, qrows, metric)
            q = self._decode_rows(qrows, view, metric=metric)
        else:
            q = check_queries(queries, self.dim)
            if q.shape[0] != cands.shape[0]:
                raise InvalidRequest(f"{q.shape[0]} queries but candidate_ids has {cands.shape[0]} rows")
            if cands.size == 0:
                return np.zeros(cands.shape, np.float32)
        if self._one_base(view):
            return self.tiers[0].score(cands, q, metric)
        return self._score_rows(cands, q, metric, view)

    def _score_rows(self, cands: np.ndarray, q: np.ndarray, metric: str, view: DeltaView) -> np.ndarray:
        """Each candidate scored by the segment that holds its current value."""
        out = np.empty(cands.shape, np.float32)
        hit, pos = view.locate(cands.reshape(-1))
        hit, pos = hit.reshape(cands.shape), pos.reshape(cands.shape)
        tier, local = self._locate_base(np.where(hit, 0, cands).reshape(-1))
        tier, local = tier.reshape(cands.shape), local.reshape(cands.shape)
        for t, base in enumerate(self.tiers):
            pick = ~hit & (tier == t)
            if pick.any():
                out[pick] = base.score(np.where(pick, local, 0), q, metric)[pick]
            if view.empty:
                continue
            moved = hit & (view.changed_tier[pos] == t)
            segment = view.segments[t]
            if moved.any() and segment is not None:
                slots = np.where(moved, view.changed_slot[pos], 0)
                out[moved] = segment.score(slots, q, metric)[moved]
        return out

    def set_parallel_min_ids(self, count: int) -> None:
        """Lookups and bags of fewer than `count` ids run on the calling thread (every codec's
        `parallel_min_ids`, bound again into the direct lookup path's kernel)."""
        for tier in self.tiers:
            for codec in (tier.primary, tier.rerank):
                if codec is not None:
                    codec.parallel_min_ids = count
        with self._write_lock:  # an upsert switches the direct path off: never back on here
            if self._direct_gather is not None:
                self._direct_gather = self._richest.direct_gather()
            if self._direct_bags is not None:
                self._direct_bags = self._richest.direct_bags()

    # ---- updates -------------------------------------------------------------------------------
    def upsert(self, ids: Any, rows: Any, sequence: int | None = None, *, keep_sequence: bool = False) -> int:
        """Insert or replace rows: ids or keys (b,), rows (b, dim) float. Encoded with the owning
        tier's trained state (new keys: `new_key_tier`). All or nothing; returns the new sequence
        (`keep_sequence`: the table's, unchanged, as where an update log owns it)."""
        with self._write_lock:
            view = self._delta.view
            x, keys, target = self._update_rows(ids, rows, view)
            _refuse_repeats(keys, "keys" if self.keyed else "ids")
            if view.slots_used + x.shape[0] > self.delta_capacity:
                raise DeltaFull(
                    f"the delta holds {view.slots_used} of {self.delta_capacity} rows; {x.shape[0]} more do not fit "
                    "(compact the table)"
                )
            new, tier_of, encoded = self._encode_update(x, target, view)
            # before the delta applies: a lookup that starts once this upsert has returned must
            # not take the direct path, which reads the base rows only
            self._direct_gather = None
            self._direct_bags = None
            after = self._next_sequence(sequence, keep_sequence)  # refused before anything changes
            self._delta.apply(target, tier_of, encoded, np.zeros(0, np.int64), keys[new])
            self._sequence = after
            return after

    def check_upsert(self, ids: Any, rows: Any) -> None:
        """Raise what `upsert(ids, rows)` would for these ids and rows themselves (an id out of
        range, a NaN, a value a tier's codec cannot hold), applying nothing. ids may repeat, and the
        delta's room is not checked: for the update log's merged runs, whose rows replaced by a
        later row of the same key are never applied, yet must be refused as their entry alone is."""
        view = self._delta.view
        x, _, target = self._update_rows(ids, rows, view)
        self._encode_update(x, target, view)

    def _update_rows(self, ids: Any, rows: Any, view: DeltaView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An update's rows (b, dim) float32, ids or keys (b,) int64 and their global rows (b,) int64
        (-1 for a key neither the base nor the delta holds), checked."""
        x = check_queries(rows, self.dim, "rows")
        if self.keymap is None:
            target = check_ids(ids, self.rows)
            keys = target
        else:
            keys = check_keys(ids, "keys")
            target, _ = self.keymap.rows(keys)
            absent = target < 0
            if absent.any():
                target[absent] = view.added_row_of(keys[absent])
        if target.size != x.shape[0]:
            raise InvalidRequest(f"{target.size} keys but {x.shape[0]} rows")
        return x, keys, target

    def _encode_update(
        self, x: np.ndarray, target: np.ndarray, view: DeltaView
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, Any, Any]]]:
        """Rows x (b, dim) encoded by the tiers owning target (b,) -> positions of new keys (their
        target set in place to rows after the view's), the owning tier of each row (b,) int64, and
        per tier (positions, primary arrays, rerank arrays); a codec's refusal raises."""
        new = np.flatnonzero(target < 0)
        if new.size:  # only keyed tables add rows; a dense table's ids may be a read-only buffer
            target[new] = view.total_rows + np.arange(new.size)
        tier_of = self._owning_tiers(target, view)
        encoded = {}
        for t in np.unique(tier_of).tolist():
            positions = np.flatnonzero(tier_of == t)
            try:
                primary, rerank = self.tiers[t].encode(x[positions])
            except RowRefused as exc:  # named by its place in the caller's rows, not in the tier's
                raise exc.moved(int(positions[exc.row])) from None
            encoded[int(t)] = (positions, primary, rerank)
        return new, tier_of, encoded

    def delete(self, keys: Any, sequence: int | None = None, *, keep_sequence: bool = False) -> int:
        """Remove keys (b,) from a keyed table; every key must be present. All or nothing; returns
        the new sequence (as `upsert`)."""
        if self.keymap is None:
            raise InvalidRequest("a dense table cannot delete rows (its ids are 0..rows-1); use a keyed table")
        with self._write_lock:
            view = self._delta.view
            wanted = check_keys(keys, "keys")
            _refuse_repeats(wanted, "keys")
            rows = self._require(self._resolve(wanted, view)[0], wanted, "keys")
            after = self._next_sequence(sequence, keep_sequence)
            self._delta.apply(rows[:0], rows[:0], {}, rows, rows[:0])
            self._sequence = after
            return after

    def _owning_tiers(self, target: np.ndarray, view: DeltaView) -> np.ndarray:
        tier_of = np.full(target.size, self.new_key_tier, np.int64)
        base = target < self.rows
        tier_of[base] = self._locate_base(target[base])[0]
        if view.empty:
            return tier_of
        hit, pos = view.locate(target)
        moved = hit & ~base & (view.changed_tier[pos] >= 0)
        tier_of[moved] = view.changed_tier[pos[moved]]
        return tier_of

    def _next_sequence(self, sequence: int | None, keep: bool) -> int:
        if keep:
            if sequence is not None:
                raise InvalidRequest("give a sequence or keep the table's, not both")
            return self._sequence
        if sequence is not None:
            return checked_sequence(sequence)
        if self._sequence == SEQUENCE_MAX:
            raise InvalidRequest(f"the table's sequence is at its largest ({SEQUENCE_MAX}); give the update a sequence")
        return self._sequence + 1

    def compact(self, version: str | None = None) -> Table:
        """A new table with the delta folded in, re-encoded with the same trained states; rows
        keep their order (new keys after the base's), deleted rows are dropped."""
        view = self._delta.view
        if view.empty:
            live_rows = np.arange(self.rows, dtype=np.int64)
        else:
            gone = view.changed[view.changed_slot < 0]
            live_rows = np.setdiff1d(np.arange(view.total_rows, dtype=np.int64), gone)
        renumber = np.full(view.total_rows, -1, np.int64)
        renumber[live_rows] = np.arange(live_rows.size)
        tiers, tier_rows = [], []
        for t, tier in enumerate(self.tiers):
            base_local = np.setdiff1d(np.arange(tier.rows, dtype=np.int64), view.stale_local[t].values)
            base_global = base_local if self.tier_rows is None else self.tier_rows[t][base_local].astype(np.int64)
            moved = (view.changed_tier == t) & (view.changed_slot >= 0)
            slots, delta_global = view.changed_slot[moved], view.changed[moved]
            order = np.argsort(np.concatenate([base_global, delta_global]), kind="stable")
            primary, rerank = tier.row_arrays()
            segment = view.segments[t]
            extra_p, extra_r = segment.row_arrays() if segment is not None else ({}, None)

            new_primary = _merge_rows(primary, base_local, extra_p, slots, order)
            new_rerank = None if rerank is None else _merge_rows(rerank, base_local, extra_r, slots, order)
            tiers.append(tier.with_rows(new_primary, new_rerank))
            tier_rows.append(renumber[np.concatenate([base_global, delta_global])[order]])
        keys = None if self.keys is None else view.key_of(live_rows, self.keys)
        return Table(
            tiers=tiers,
            tier_rows=tier_rows if len(tiers) > 1 else None,
            keys=keys,
            missing=self.missing,
            new_key_tier=self.new_key_tier,
            sequence=self.sequence,
            delta_capacity=self.delta_capacity,
            version=version or f"{self.version}+{self.sequence}",
            provenance={**self.provenance, "compacted_from": self.version},
        )

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table (with its delta folded in, and its sequence) as a format-2 artifact."""
        from runtime.tableio import write_table

        check_path(path, "artifact path")
        table = self if self._delta.view.empty else self.compact(self.version)
        self.path = write_table(table, path)
        return self.path

    def warmup(self) -> None:
        """Compile and run every kernel this table uses on tiny input."""
        for tier in self.tiers:
            tier.warmup()
        view = self._delta.view
        probe = self._decode_rows(np.zeros(1, np.int64), view)
        metric = self.metrics[0] if self.rerank is None else "ip"
        self.tiers[0].search(probe, 1, metric, 2)
        if len(self.tiers) > 1 or self.keys is not None:
            self._search_rows(probe, 1, metric, 2, view)
        # what a request adds around the codecs' kernels: the id, offset, length and query checks'
        # and weighted pooling's
        check_ids(np.zeros(1, np.int64), self.rows)
        check_queries(np.zeros((1, self.dim), np.float32), self.dim)
        check_offsets(np.zeros(1, np.int64), 1)
        checks.offsets_of_lengths(np.zeros(1, np.int64))
        weighted.pool_weighted(probe, np.ones(1, np.float32), np.zeros(1, np.int64))
        # bags over decoded rows (a table with updates, or with missing keys), small and large
        dense.pool_serial(probe, np.zeros(1, np.int64), True)
        dense.pool_chunked(probe, np.zeros(1, np.int64), True, 2)
        # and, once updates arrive, where each row's current value lives (of a keyed table: its
        # keys resolved against the base, added and changed keys in one pass)
        no_keys = np.full((8, 2), EMPTY, np.int64)
        delta_slots(no_keys, 1, np.zeros(1, np.int64), np.zeros(1, np.int64))
        lookup_below(no_keys, np.zeros(1, np.int64), 1)  # an upsert's check of the keys it adds
        if self.keymap is not None:
            resolve_keys(
                self.keymap.table, no_keys, 1, self.rows, no_keys, 1, np.zeros(1, np.int64), np.zeros(1, np.int64)
            )
        if self._keyed_one_tier and self.keymap is not None and self.keys is not None:
            # a keyed one-tier table's lookups probe and gather in one pass (`decode_keys`), on
            # this thread and in parallel tasks
            for n in (1, PARALLEL_MIN_IDS):
                self._richest.decode_keys(self.keymap.table, self.keys[np.arange(n) % self.rows])


def _merge_rows(
    own: dict[str, np.ndarray],
    local: np.ndarray,
    extra: dict[str, np.ndarray] | None,
    slots: np.ndarray,
    order: np.ndarray,
) -> dict[str, np.ndarray]:
    """Row arrays of base rows `local` then delta `slots`, permuted by `order`."""
    out = {}
    for name, array in own.items():
        parts = [array[local]]
        if extra:
            parts.append(extra[name][slots])
        out[name] = np.ascontiguousarray(np.concatenate(parts)[order])
    return out


def _refuse_repeats(keys: np.ndarray, field: str) -> None:
    if keys.size > 1:
        ordered = np.sort(keys, kind="stable")
        repeats = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeats.size:
            first = int(np.flatnonzero(keys == repeats[0])[1])
            raise InvalidRequest(f"{field}[{first}] = {int(repeats[0])} appears more than once in the batch")


def check_exclude_self(value: Any) -> bool:
    """search_by_id's exclude_self: true or false, nothing else."""
    return check_flag(value, "exclude_self")


def _drop_self(ids: np.ndarray, scores: np.ndarray, qids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own query id (or, when absent, its last candidate). (q, c) -> (q, c-1)."""
    if ids.shape[1] == 0:
        return ids, scores
    is_self = ids == qids[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(ids.shape[0]), drop] = False
    shape = (ids.shape[0], ids.shape[1] - 1)
    return ids[keep].reshape(shape), scores[keep].reshape(shape)


def _tier_rows_of(spec: Any, n: int, t: int) -> np.ndarray:
    """A tier's "rows": a slice, {"start", "stop"}, or a list/array of row positions -> sorted int64."""
    if isinstance(spec, slice):
        return np.arange(n, dtype=np.int64)[spec]
    if isinstance(spec, dict):
        unknown = set(spec) - {"start", "stop"}
        if unknown:
            raise InvalidRequest(f"tier {t} rows: unknown field {sorted(unknown)[0]!r} (use start and stop)")
        start = _row_bound(spec.get("start"), 0, n, f"tiers[{t}].rows.start")
        stop = _row_bound(spec.get("stop"), n, n, f"tiers[{t}].rows.stop")
        if start > stop:
            raise InvalidRequest(f"tiers[{t}].rows: start {start} is past stop {stop}")
        return np.arange(start, stop, dtype=np.int64)
    rows = check_ids(spec, n, f"tiers[{t}].rows")
    return np.sort(rows)


def _row_bound(value: Any, default: int, n: int, field: str) -> int:
    """A tier's start or stop from JSON: an integer in [0, n], or left out (null) for `default`.

    Unlike a Python slice, a negative or too-large bound is refused: in a spec file it is far more
    likely a mistake than a wish to count from the end or to clamp."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequest(f"{field} must be an integer, got {value!r}")
    if not 0 <= value <= n:
        raise InvalidRequest(f"{field} = {value} is outside 0..{n} (a start or stop of the table's {n} rows)")
    return int(value)


def _check_rerank_options(options: Any, rerank: Any, field: str) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise InvalidRequest(f"{field} must be an object of codec options, got {options!r}")
    if rerank is None:
        # they would be dropped without a word, and the table built as if they were not given
        raise InvalidRequest(f"{field} {options!r} given without a rerank codec")


def compress(
    x: Any,
    codec: str = "int8",
    *,
    rerank: str | None = None,
    rerank_options: dict[str, Any] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    keys: Any = None,
    missing: str = "error",
    new_key_tier: int | None = None,
    delta_capacity: int = DEFAULT_DELTA_CAPACITY,
    seed: int = 0,
    version: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Table:
    """Fit `codec` (with its keyword options) on x (n, d) and return the compressed Table.

    `rerank` names a second, richer codec fitted on the same rows and used to rescore candidates.
    `tiers`: a list of {"rows": slice | {"start", "stop"} | row positions, "codec": name,
    "rerank": name, "rerank_options": {...}, "dim": r, **codec options}; together the tiers hold
    every row of x once (then `codec`, `rerank` and options are not used).
    `keys` (n,) int64 distinct: the table is addressed by them instead of 0..n-1."""
    data = check_table_input(x)
    seed = check_seed(seed)
    for field, value in (("version", version), ("source", source)):
        # written to the manifest as text: anything else failed only at save, after training
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{field} must be a string, got {type(value).__name__}")
    if version == "":
        raise InvalidRequest("version must be a non-empty label (leave it out for the creation time)")
    key_array = None if keys is None else check_keys(keys, "keys")
    if key_array is not None and key_array.shape[0] != data.shape[0]:
        raise InvalidRequest(f"{key_array.shape[0]} keys for {data.shape[0]} rows")
    if key_array is None and missing != "error":
        # it answers lookups of absent keys; a dense table's ids out of range are errors whatever it says
        raise InvalidRequest(f"missing={missing!r} is for keyed tables: give keys too")
    if tiers is None:
        _check_rerank_options(rerank_options, rerank, "rerank_options")
        built = [
            train_tier(data, codec, options, rerank=rerank, rerank_options=rerank_options, seed=seed, progress=progress)
        ]
        tier_rows = None
    else:
        if options or rerank is not None or rerank_options is not None:
            raise InvalidRequest("give codec options inside each tier when tiers are given")
        if not isinstance(tiers, list) or not tiers:
            raise InvalidRequest("tiers must be a non-empty list of tier objects")
        built, tier_rows = [], []
        for t, spec in enumerate(tiers):
            if not isinstance(spec, dict) or "rows" not in spec or "codec" not in spec:
                raise InvalidRequest(f"tiers[{t}] must be an object with rows and codec")
            own = {k: v for k, v in spec.items() if k not in {"rows", "codec", "rerank", "rerank_options", "dim"}}
            rows = _tier_rows_of(spec["rows"], data.shape[0], t)
            _check_rerank_options(spec.get("rerank_options"), spec.get("rerank"), f"tiers[{t}].rerank_options")
            if rows.size == 0:
                raise InvalidRequest(f"tiers[{t}] holds no rows")
            dim = spec.get("dim")
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
                raise InvalidRequest(f"tiers[{t}].dim must be an integer, got {dim!r}")
            try:
                tier = train_tier(
                    data[rows],
                    spec["codec"],
                    own,
                    rerank=spec.get("rerank"),
                    rerank_options=spec.get("rerank_options"),
                    dim=None if dim is None else int(dim),
                    seed=seed,
                    progress=progress,
                )
            except RowRefused as exc:  # named by its row in x, not in the tier
                raise exc.moved(int(rows[exc.row])) from None
            built.append(tier)
            tier_rows.append(rows)
        covered = np.zeros(data.shape[0], bool)
        for t, rows in enumerate(tier_rows):
            if covered[rows].any():
                raise InvalidRequest(f"row {int(rows[covered[rows]][0])} is in tiers[{t}] and an earlier tier")
            covered[rows] = True
        if not covered.all():
            raise InvalidRequest(f"row {int(np.flatnonzero(~covered)[0])} is in no tier: tiers must hold every row")
    now = dt.datetime.now(dt.UTC)
    provenance = {
        "created_at": now.isoformat(timespec="seconds"),
        "embserve_version": __version__,
        "seed": seed,
        "source": source,
    }
    return Table(
        tiers=built,
        tier_rows=tier_rows if tier_rows is not None and len(tier_rows) > 1 else None,
        keys=key_array,
        missing=missing,
        new_key_tier=new_key_tier,
        delta_capacity=delta_capacity,
        version=version or now.strftime("%Y%m%dT%H%M%SZ"),
        provenance=provenance,
    )


def load_table(path: str | os.PathLike[str], verify: bool = True, *, parallel_min_ids: int | None = None) -> Table:
    """Load a table artifact directory (format 1 or 2), memory-mapping its arrays after verifying
    checksums. Raises ArtifactNotFound, ArtifactCorrupt or ArtifactIncompatible with a message
    naming the problem; nothing is half-loaded.

    `parallel_min_ids` (1..4096, default 512): lookups of fewer ids gather on the calling thread;
    a server whose requests already run concurrently passes a higher one."""
    from runtime.tableio import read_table

    check_path(path, "artifact path")
    if parallel_min_ids is not None and (
        isinstance(parallel_min_ids, bool)
        or not isinstance(parallel_min_ids, (int, np.integer))
        or not 1 <= parallel_min_ids <= PARALLEL_MIN_IDS
    ):
        raise InvalidRequest(f"parallel_min_ids must be in 1..{PARALLEL_MIN_IDS}, got {parallel_min_ids!r}")
    table = read_table(path, verify)
    if parallel_min_ids is not None:
        table.set_parallel_min_ids(int(parallel_min_ids))
    return table
