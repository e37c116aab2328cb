"""Multi-table lookups: one request, many tables, typed request and result objects.

Transports build a `MultiLookupRequest` (service.requests: plain values and ndarrays) and serialize the
`MultiLookupResult`. Every entry is validated against one snapshot of the table store before any
table is read, so a bad entry refuses the whole request and a swap mid-request never mixes
versions: each entry is answered by the Table object taken from the store at the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import InvalidRequest, KeyNotFound, PayloadTooLarge, TableNotFound
from runtime.kernels import checks
from runtime.store import TableStore
from runtime.table import POOL_MODES, Table
from runtime.validation import (
    check_ids,
    check_int_array,
    check_keys,
    check_lengths,
    check_offsets,
    check_weights,
    kind_of_values,
    summed,
    writable,
)
from service.requests import DEFAULT_MODE, LookupRequest, MultiLookupRequest, TableLookup, lookup_request

LENGTHS_OR_OFFSETS = "give lengths or offsets, not both"
WEIGHTS_NEED_BAGS = "weights need bags (lengths or offsets)"
MODE_NEEDS_BAGS = "mode pools bags: give lengths or offsets too (without them the rows come back unpooled)"


@dataclass(frozen=True)
class TableResult:
    """embeddings: (B, dim) float32 pooled, or (n, dim) float32 rows."""

    table: str
    version: str
    embeddings: np.ndarray
    missing: int = 0


@dataclass(frozen=True)
class MultiLookupResult:
    results: tuple[TableResult, ...]

    def concatenated(self) -> np.ndarray:
        """(B, Σ dim) float32, the tables side by side in the order asked."""
        if not self.results:
            return np.zeros((0, 0), np.float32)
        return np.concatenate([r.embeddings for r in self.results], axis=1)


@dataclass(frozen=True)
class _Checked:
    """An entry after validation: the table it reads and canonical arrays."""

    name: str
    table: Table
    ids: np.ndarray
    offsets: np.ndarray | None
    weights: np.ndarray | None
    mode: str
    label: str

    @property
    def out_rows(self) -> int:
        return self.ids.shape[0] if self.offsets is None else self.offsets.shape[0]


def _where(index: int, name: Any) -> str:
    return f"tables[{index}] ({name!r})"


def _label(index: int, entry: TableLookup) -> str:
    return entry.label or _where(index, entry.table)


def _array(value: Any, field: str) -> np.ndarray:
    """Any JSON value or ndarray -> ndarray; ragged or non-numeric input is refused naming
    `field`, in the words a one-table lookup uses (`service.core.as_array`)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        # numpy's own text (inhomogeneous shapes, detected parts) names nothing the caller sent
        raise InvalidRequest(f"{field} must be a flat array of numbers") from None
    if arr.dtype.kind not in "biuf" and arr.size:
        raise InvalidRequest(f"{field} must hold numbers, got {kind_of_values(arr)}")
    return arr


def bag_offsets(entry: TableLookup, n_ids: int) -> np.ndarray | None:
    """The bags a lookup pools, offsets (B,) int64 from its lengths or offsets (the offsets' order and
    range are the table's to check), or None when the n rows come back unpooled. Both given, or
    weights or a mode with neither, are refused."""
    if entry.lengths is not None and entry.offsets is not None:
        raise InvalidRequest(LENGTHS_OR_OFFSETS)
    if entry.lengths is not None:
        return check_lengths(entry.lengths, n_ids)
    if entry.offsets is not None:
        return check_int_array(entry.offsets, "offsets")
    if entry.weights is not None:
        raise InvalidRequest(WEIGHTS_NEED_BAGS)
    if entry.mode is not None:
        raise InvalidRequest(MODE_NEEDS_BAGS)
    return None


def pool_mode(entry: TableLookup) -> Any:
    """How a lookup's bags are pooled: the mode it gave, else "sum"."""
    return DEFAULT_MODE if entry.mode is None else entry.mode


def _check_entry(index: int, entry: TableLookup, table: Table) -> _Checked:
    mode = pool_mode(entry)
    if mode not in POOL_MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(POOL_MODES)}, got {mode!r}")
    if entry.ids is None:
        raise InvalidRequest("ids are required")
    raw = _array(entry.ids, "ids")
    if raw.ndim != 1:
        raise InvalidRequest(f"ids must be a flat array, got shape {raw.shape}")
    ids = check_keys(raw, "ids") if table.keyed else check_ids(raw, table.rows, "ids")
    offsets = bag_offsets(entry, ids.shape[0])
    if offsets is not None and entry.lengths is None:  # offsets made from lengths are valid as made
        offsets = check_offsets(offsets, ids.shape[0])
    weights = None
    if entry.weights is not None:
        if mode != "sum":
            raise InvalidRequest(f'weights are only supported with mode "sum", got {mode!r}')
        weights = check_weights(_array(entry.weights, "weights"), ids.shape[0], "weights")
    return _Checked(entry.table, table, ids, offsets, weights, mode, _label(index, entry))


def check_request(request: MultiLookupRequest, store: TableStore, max_tables: int, max_ids: int) -> list[_Checked]:
    """Validate every entry against one snapshot of the store; raise naming the entry, else return
    the entries with the tables that will answer them."""
    if not request.tables:
        raise InvalidRequest("tables must name at least one table")
    if len(request.tables) > max_tables:
        raise PayloadTooLarge(f"{len(request.tables)} tables exceed the limit of {max_tables} a request")
    active = store.snapshot()
    checked = []
    total = rows_out = 0
    for index, entry in enumerate(request.tables):
        loaded = active.get(entry.table)
        if loaded is None:
            unknown = TableNotFound(str(entry.table))
            unknown.args = (f"{_label(index, entry)}: {unknown}",)
            raise unknown
        table = loaded.table
        try:
            item = _check_entry(index, entry, table)
        except InvalidRequest as exc:
            # the entry named, its type kept: an id out of range stays OUT_OF_RANGE over gRPC
            exc.args = (f"{_label(index, entry)}: {exc}",)
            raise exc.with_traceback(None) from None
        total += item.ids.shape[0]
        if total > max_ids:
            raise PayloadTooLarge(f"the request carries more than {max_ids} ids in total (limit {max_ids})")
        # as many bags as a single-table lookup may ask for: empty bags cost no ids, yet each is a
        # row of the answer (64 features of 32,000 empty bags: a 6 MB body, a 266 MB answer)
        rows_out += item.out_rows
        if rows_out > max_ids:
            raise PayloadTooLarge(f"the request asks for more than {max_ids} rows (bags) in total (limit {max_ids})")
        checked.append(item)
    if request.concat:
        sizes = {c.out_rows for c in checked}
        if len(sizes) > 1:
            got = ", ".join(f"{c.label}: {c.out_rows}" for c in checked)
            raise InvalidRequest(f"concat needs the same number of rows (B) from every table; got {got}")
    return checked


def answer(checked: list[_Checked]) -> MultiLookupResult:
    """Read every table (the objects taken at validation): (B, dim) or (n, dim) float32 each."""
    results = []
    for item in checked:
        try:
            if item.offsets is None:
                rows, missing = item.table.lookup_counted(item.ids)
            else:
                rows, missing = item.table.lookup_pooled_counted(item.ids, item.offsets, item.mode, item.weights)
        except KeyNotFound as exc:
            raise KeyNotFound(exc.key, exc.position, f"{item.label} ids") from None
        results.append(TableResult(item.name, item.table.version, rows, missing))
    return MultiLookupResult(tuple(results))


def from_jagged(
    features: Any, lengths: Any, values: Any, weights: Any = None, mode: Any = None, concat: bool = False
) -> MultiLookupRequest:
    """KeyedJaggedTensor layout -> request: features (F,) table names, lengths (F × B,) feature-major,
    values (Σ lengths,) ids, weights (Σ lengths,) or None. Feature f reads the table named features[f]."""
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise InvalidRequest("features must be a non-empty list of table names")
    if lengths is None:
        raise InvalidRequest("lengths are required (F × B bag sizes, feature-major)")
    lens = check_int_array(lengths, "lengths")
    if lens.shape[0] % len(features):
        raise InvalidRequest(
            f"lengths has {lens.shape[0]} entries, not a multiple of the {len(features)} features (F × B)"
        )
    if (lens < 0).any():
        pos = int(np.flatnonzero(lens < 0)[0])
        batch = lens.shape[0] // len(features)
        raise InvalidRequest(
            f"lengths[{pos}] = {int(lens[pos])} is negative (feature {features[pos // batch]!r}, sample {pos % batch})"
        )
    if values is None:
        raise InvalidRequest("values are required")
    vals = _array(values, "values")
    if vals.ndim != 1:
        raise InvalidRequest(f"values must be a flat array of ids, got shape {vals.shape}")
    # the kernel's sum stops at the end of int64, where numpy's would wrap, perhaps to the count of values
    _, _, total = checks.offsets_of_lengths(writable(np.ascontiguousarray(lens)))
    if total != vals.shape[0]:
        raise InvalidRequest(f"lengths sum {summed(total)} but values has {vals.shape[0]} entries")
    w = None if weights is None else _array(weights, "weights")
    if w is not None and w.ndim != 1:
        # as the one-table layouts refuse it: [[1, 2]] is not two weights
        raise InvalidRequest(f"weights must be a flat array of numbers, got shape {w.shape}")
    if w is not None and w.shape[0] != vals.shape[0]:
        raise InvalidRequest(f"weights has {w.shape[0]} entries but values has {vals.shape[0]}")
    per_feature = lens.reshape(len(features), -1)
    bounds = np.concatenate([[0], np.cumsum(per_feature.sum(axis=1))])
    entries = []
    for f, name in enumerate(features):
        a, b = int(bounds[f]), int(bounds[f + 1])
        weights_f = None if w is None else w[a:b]
        given = {"ids": vals[a:b], "lengths": per_feature[f], "weights": weights_f, "mode": mode}
        entries.append(lookup_request(name, given))
    return MultiLookupRequest(tuple(entries), concat)


__all__ = [
    "DEFAULT_MODE",
    "LookupRequest",
    "MultiLookupRequest",
    "MultiLookupResult",
    "TableLookup",
    "TableResult",
    "answer",
    "check_request",
    "from_jagged",
]
