"""Typed requests of the core API: every default is written here once, and every transport (REST
JSON and octet-stream, gRPC, Open Inference Protocol) builds these from the fields its caller
actually gave, so an omitted field means the same thing on every transport.

Array fields hold whatever the transport decoded (ndarrays or JSON lists); the core validates them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from runtime.errors import InvalidRequest

DEFAULT_K = 10
DEFAULT_METRIC = "ip"
DEFAULT_OVERSAMPLE = 1
DEFAULT_MODE: Final = "sum"
LOOKUP_ALIASES = {"keys": "ids", "per_sample_weights": "weights"}
"""Other names a caller may give lookup fields by (keyed tables take keys; torch says per_sample_weights)."""


@dataclass(frozen=True)
class LookupRequest:
    """One table's lookup, alone or as one entry of a multi-table request.

    ids: (n,) int64 row ids, or keys on keyed tables. Bags are given by at most one of lengths (B,)
    or offsets (B,) int64 (neither: the n rows come back unpooled); weights (n,) float32, the
    per-sample weights of a weighted sum (mode "sum" only, as torch.nn.EmbeddingBag)."""

    table: str
    ids: Any = None
    lengths: Any = None
    offsets: Any = None
    weights: Any = None
    mode: Any = None
    """how bags are pooled, "sum" (None: the default) or "mean"; refused without bags"""
    label: str | None = None
    """how errors name this entry of a multi-table request (default `tables[i] ('table')`)"""

    @property
    def pooled(self) -> bool:
        return self.lengths is not None or self.offsets is not None


TableLookup = LookupRequest
"""An entry of a multi-table request is a one-table lookup."""


@dataclass(frozen=True)
class MultiLookupRequest:
    """Many tables in one request; concat: one (B, Σ dim) array instead of one array a table."""

    tables: tuple[LookupRequest, ...]
    concat: bool = False


@dataclass(frozen=True)
class SearchRequest:
    """Top-k search: exactly one of queries (q, dim) float32 or query_ids (q,) int64.

    k results per query; oversample × k candidates from the cheap codes when a rerank codec is
    present; exclude_self drops a query id's own row from its results; exclude_ids (n,) int64 are
    left out of every query's results, or split among the queries by exclude_lengths (q,) int64."""

    table: str
    queries: Any = None
    query_ids: Any = None
    k: Any = DEFAULT_K
    metric: Any = DEFAULT_METRIC
    oversample: Any = DEFAULT_OVERSAMPLE
    exclude_self: Any = True
    exclude_ids: Any = None
    exclude_lengths: Any = None


@dataclass(frozen=True)
class ScoreRequest:
    """Scores of candidate_ids (q, c) int64 against queries (q, dim) float32 or query_ids (q,)."""

    table: str
    candidate_ids: Any = None
    queries: Any = None
    query_ids: Any = None
    metric: Any = DEFAULT_METRIC


@dataclass(frozen=True)
class LoadRequest:
    """Admin: serve the artifact directory `path` (inside the artifact root) as `table`."""

    table: str
    path: Any = None


@dataclass(frozen=True)
class UpsertRequest:
    """Admin: keys (n,) int64 (row ids on dense tables) get rows (n, dim) float32; sequence: the
    table's update sequence after this batch (None: one past the current)."""

    table: str
    keys: Any = None
    rows: Any = None
    sequence: Any = None


@dataclass(frozen=True)
class DeleteKeysRequest:
    """Admin: delete keys (n,) int64 from a keyed table; sequence as for UpsertRequest."""

    table: str
    keys: Any = None
    sequence: Any = None


def load_request(table: str, given: Mapping[str, Any]) -> LoadRequest:
    return LoadRequest(table, **_given(LoadRequest, given))


def upsert_request(table: str, given: Mapping[str, Any]) -> UpsertRequest:
    return UpsertRequest(table, **_given(UpsertRequest, given))


def delete_keys_request(table: str, given: Mapping[str, Any]) -> DeleteKeysRequest:
    return DeleteKeysRequest(table, **_given(DeleteKeysRequest, given))


def lookup_request(table: str, given: Mapping[str, Any], label: str | None = None) -> LookupRequest:
    """The fields a caller gave, by their names or `LOOKUP_ALIASES` (None or absent: the default;
    a field given by both its name and its alias is refused; other names are left to the
    transport, which refuses them with `refuse_unknown_fields`) -> request."""
    canonical = dict(given)
    for alias, name in LOOKUP_ALIASES.items():
        if canonical.get(alias) is None:
            continue
        if canonical.get(name) is not None:
            where = "" if label is None else f"{label}: "
            raise InvalidRequest(f"{where}give {name} or {alias} (the same field), not both")
        canonical[name] = canonical[alias]
    return LookupRequest(table, **_given(LookupRequest, canonical), label=label)


def search_request(table: str, given: Mapping[str, Any]) -> SearchRequest:
    """The fields a caller gave (None or absent: the default; other names as for lookup_request)
    -> request."""
    return SearchRequest(table, **_given(SearchRequest, given))


def score_request(table: str, given: Mapping[str, Any]) -> ScoreRequest:
    return ScoreRequest(table, **_given(ScoreRequest, given))


def refuse_unknown_fields(given: Mapping[str, Any], kind: type) -> None:
    """InvalidRequest naming the fields of a JSON body that a request `kind` does not have (its
    own names and, for lookups, LOOKUP_ALIASES): a misspelt option (`topk` for `k`) must not be
    answered with the default as if it had been left out."""
    known = _field_names(kind) | (LOOKUP_ALIASES.keys() if kind is LookupRequest else frozenset())
    unknown = sorted(name for name in given if name not in known)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; the body's fields are {', '.join(sorted(known))}"
        )


@functools.cache
def _field_names(kind: type) -> frozenset[str]:
    """The fields a caller may give a request kind (a multi-table request builds one a table, so
    this runs per entry)."""
    return frozenset(f.name for f in fields(kind)) - {"table", "label"}


def _given(kind: type, given: Mapping[str, Any]) -> dict[str, Any]:
    names = _field_names(kind)
    return {name: value for name, value in given.items() if name in names and value is not None}


@dataclass(frozen=True)
class InferRequest:
    """An Open Inference Protocol inference: the model (and optional version) by name, its input
    tensors by name, the request's parameters (an input's own parameters merged in by the
    transport), and the outputs asked for in order (None: every output)."""

    model: str
    inputs: Mapping[str, Any]
    parameters: Mapping[str, Any]
    version: str | None = None
    outputs: list[str] | None = None


@dataclass(frozen=True)
class InferResult:
    """The model that answered, its version at that moment, and [(output name, array)] in order."""

    model: str
    version: str
    outputs: list[tuple[str, Any]]
