"""REST transport of multi-table lookups (`POST /v1/lookup`): parse into a MultiLookupRequest,
call the core, serialize the MultiLookupResult. JSON, the KeyedJaggedTensor JSON layout, and a
binary form (JSON header in `X-Embserve-Tables`, little-endian arrays in the body)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from runtime.errors import InvalidRequest
from runtime.validation import check_flag, refuse_booleans_in_json
from service.multi import MultiLookupResult, from_jagged
from service.requests import MultiLookupRequest, lookup_request

TABLES_HEADER = "X-Embserve-Tables"
RESULTS_HEADER = "X-Embserve-Results"
ENTRY_FIELDS = {"table", "ids", "keys", "lengths", "offsets", "weights", "per_sample_weights", "mode"}
TABLES_LAYOUT_FIELDS = {"tables", "concat"}
JAGGED_LAYOUT_FIELDS = {"features", "lengths", "values", "weights", "mode", "concat"}
BINARY_ENTRY_FIELDS = {"table", "ids", "lengths", "offsets", "weights", "mode"}


def _refuse_unknown(given: dict[str, Any], known: set[str], where: str) -> None:
    """A misspelt field (`weigths`, `concatenate`) must not be dropped: the answer would be the
    one without it, and look right."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidRequest(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _mode(value: Any, where: str) -> Any:
    """A mode as given (None: absent, the request's default applies), refused unless a string."""
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{where}: mode must be a string")
    return value


def parse_json(payload: dict[str, Any]) -> MultiLookupRequest:
    """`{"tables": [...], "concat": bool}` or the jagged layout `{"features", "lengths", "values",
    "weights"?, "mode"?, "concat"?}` -> MultiLookupRequest."""
    concat = check_flag(payload.get("concat", False), "concat")
    if "features" in payload:
        if "tables" in payload:
            raise InvalidRequest("give tables or features (the jagged layout), not both")
        _refuse_unknown(payload, JAGGED_LAYOUT_FIELDS, "the jagged layout")
        mode = _mode(payload.get("mode"), "request")
        return from_jagged(
            payload["features"], payload.get("lengths"), payload.get("values"), payload.get("weights"), mode, concat
        )
    entries = payload.get("tables")
    if not isinstance(entries, list):
        raise InvalidRequest("tables must be a list of {table, ids, lengths | offsets, weights, mode} objects")
    _refuse_unknown(payload, TABLES_LAYOUT_FIELDS, "request")
    tables = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidRequest(f"tables[{index}] must be an object")
        _refuse_unknown(entry, ENTRY_FIELDS, f"tables[{index}]")
        name = entry.get("table")
        if not isinstance(name, str):
            raise InvalidRequest(f"tables[{index}]: table must be a table name")
        _mode(entry.get("mode"), f"tables[{index}] ({name!r})")
        tables.append(lookup_request(name, entry))
    return MultiLookupRequest(tuple(tables), concat)


def render_json(result: MultiLookupResult, concat: bool) -> dict[str, Any]:
    versions = [{"table": r.table, "version": r.version} for r in result.results]
    if concat:
        joined = result.concatenated()
        return {"embeddings": joined, "shape": list(joined.shape), "tables": versions}
    return {
        "results": [
            {"table": r.table, "version": r.version, "embeddings": r.embeddings, "shape": list(r.embeddings.shape)}
            for r in result.results
        ]
    }


def _take(body: bytes, at: int, count: int, dtype: str, what: str) -> tuple[np.ndarray, int]:
    size = count * np.dtype(dtype).itemsize
    if at + size > len(body):
        raise InvalidRequest(f"body ends at byte {len(body)} but {what} needs bytes {at}..{at + size}")
    return np.frombuffer(body, dtype=dtype, count=count, offset=at), at + size


def _count(entry: dict[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{where}: {key} must be a non-negative count")
    return value


def parse_binary(header: str | None, body: bytes) -> MultiLookupRequest:
    """Header `{"tables": [{"table", "ids": n, "lengths": B | "offsets": B, "weights": bool, "mode"}],
    "concat": bool}`; body, table after table: ids int64 (n,), lengths or offsets int64 (B,), then
    weights float32 (n,) when asked; all little-endian, nothing between them."""
    if header is None:
        raise InvalidRequest(f"a binary multi-table lookup needs the {TABLES_HEADER} header")
    try:
        described = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{TABLES_HEADER} is not valid JSON: {exc}") from None
    if not isinstance(described, dict) or not isinstance(described.get("tables"), list):
        raise InvalidRequest(f'{TABLES_HEADER} must be {{"tables": [...], "concat": false}}')
    refuse_booleans_in_json(header.encode(), described, TABLES_HEADER)
    _refuse_unknown(described, TABLES_LAYOUT_FIELDS, TABLES_HEADER)
    concat = check_flag(described.get("concat", False), "concat")
    at = 0
    tables = []
    for index, entry in enumerate(described["tables"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("table"), str):
            raise InvalidRequest(f"tables[{index}] must be an object naming its table")
        where = f"tables[{index}] ({entry['table']!r})"
        _refuse_unknown(entry, BINARY_ENTRY_FIELDS, where)
        n = _count(entry, "ids", where)
        if n is None:
            raise InvalidRequest(f"{where}: ids (the count of ids) is required")
        ids, at = _take(body, at, n, "<i8", f"{where} ids")
        lengths = offsets = weights = None
        n_lengths, n_offsets = _count(entry, "lengths", where), _count(entry, "offsets", where)
        if n_lengths is not None:
            lengths, at = _take(body, at, n_lengths, "<i8", f"{where} lengths")
        if n_offsets is not None:
            offsets, at = _take(body, at, n_offsets, "<i8", f"{where} offsets")
        if check_flag(entry.get("weights", False), f"{where}: weights"):
            weights, at = _take(body, at, n, "<f4", f"{where} weights")
        _mode(entry.get("mode"), where)
        given = {"ids": ids, "lengths": lengths, "offsets": offsets, "weights": weights, "mode": entry.get("mode")}
        tables.append(lookup_request(entry["table"], given))
    if at != len(body):
        raise InvalidRequest(f"body has {len(body)} bytes but {TABLES_HEADER} describes {at}")
    return MultiLookupRequest(tuple(tables), concat)


def render_binary(result: MultiLookupResult, concat: bool) -> tuple[bytes, str]:
    """(little-endian float32 rows, table after table or the one concatenation; the header JSON)."""
    described: dict[str, Any] = {
        "results": [{"table": r.table, "version": r.version, "shape": list(r.embeddings.shape)} for r in result.results]
    }
    if concat:
        joined = result.concatenated()
        described["shape"] = list(joined.shape)
        return joined.astype("<f4", copy=False).tobytes(), orjson.dumps(described).decode()
    body = b"".join(r.embeddings.astype("<f4", copy=False).tobytes() for r in result.results)
    return body, orjson.dumps(described).decode()
