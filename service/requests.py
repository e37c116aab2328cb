"""Typed requests of the core API: every default is written here once, and every transport (REST
JSON, gRPC, Open Inference Protocol) builds these from the fields its caller actually gave, so an
omitted field means the same thing on every transport.

Array fields hold whatever the transport decoded (ndarrays or JSON lists); the core validates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_K = 10
DEFAULT_METRIC = "ip"
DEFAULT_OVERSAMPLE = 1


@dataclass(frozen=True)
class SearchRequest:
    """Top-k search: exactly one of queries (q, dim) float32 or query_ids (q,) int64.

    k results per query; oversample × k candidates from the cheap codes when a rerank codec is
    present; exclude_self drops a query id's own row from its results."""

    table: str
    queries: Any = None
    query_ids: Any = None
    k: Any = DEFAULT_K
    metric: Any = DEFAULT_METRIC
    oversample: Any = DEFAULT_OVERSAMPLE
    exclude_self: Any = True


@dataclass(frozen=True)
class ScoreRequest:
    """Scores of candidate_ids (q, c) int64 against queries (q, dim) float32 or query_ids (q,)."""

    table: str
    candidate_ids: Any = None
    queries: Any = None
    query_ids: Any = None
    metric: Any = DEFAULT_METRIC


def search_request(table: str, given: Mapping[str, Any]) -> SearchRequest:
    """The fields a caller gave (None or absent: the default; unknown names ignored) -> request."""
    return SearchRequest(table, **_given(SearchRequest, given))


def score_request(table: str, given: Mapping[str, Any]) -> ScoreRequest:
    return ScoreRequest(table, **_given(ScoreRequest, given))


def _given(kind: type, given: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(kind)} - {"table"}
    return {name: value for name, value in given.items() if name in names and value is not None}
