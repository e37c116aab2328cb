"""Open Inference Protocol (KServe v2 / Triton) semantics, shared by the HTTP and gRPC transports.

Each table is three models:
  <table>         lookup: input `ids` INT64 [n] -> output `embeddings` FP32 [n, dim]
  <table>.bag     pooled bags (EmbeddingBag): inputs `ids` INT64 [n], and `offsets` INT64 [bags]
                  or `lengths` INT64 [bags], optional `per_sample_weights` FP32 [n];
                  parameter `mode` "sum"|"mean" -> output `embeddings` FP32 [bags, dim]
  <table>.search  search: input `queries` FP32 [q, dim] or `query_ids` INT64 [q], optional
                  `exclude_ids` INT64 [n] left out of the results and `exclude_lengths` INT64 [q]
                  (how many of them each query leaves out; without it, every query leaves all
                  out); parameters `k` (default 10), `metric`, `oversample`, `exclude_self`
                  -> outputs `ids` INT64 [q, k], `scores` FP32 [q, k]
and each configured group (setting `groups`, NAME=FEATURE[:TABLE]+...) is one model NAME:
  inputs per feature f: `f__values` INT64|INT32 [n_f] ids, `f__lengths` INT64|INT32 [B] bag sizes,
  optional `f__weights` FP32 [n_f] per-sample weights; parameter `mode` "sum"|"mean"
  -> output `embeddings` FP32 [B, Σ dim], the features' pooled rows side by side in the configured
  order (what a DLRM's dense part consumes). It is answered by the multi-table lookup (one
  consistent set of table versions); its version is a digest of the versions of its tables.
Parameters may be given on the request or on an input; unknown parameters are ignored.

Here are the protocol's semantics only: which tables a model name stands for, the typed core
request its inputs make, and the outputs of the answer. The core (`EmbeddingService.infer`) runs
an inference inside the request accounting, as it runs every native request.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import InvalidRequest, TableNotFound
from runtime.store import LoadedTable
from runtime.table import __version__
from runtime.validation import holds_integers_past_int64, kind_of_values, reshaped
from service.multi import MultiLookupResult
from service.requests import LookupRequest, MultiLookupRequest, SearchRequest, lookup_request, search_request

SEARCH_SUFFIX = ".search"
BAG_SUFFIX = ".bag"
PLATFORM = "embserve"
EXTENSIONS = ["model_configuration", "binary_tensor_data", "parameters", "schedule_policy"]

DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(dt)
    for name, dt in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
DATATYPE_OF = {dt: name for name, dt in DATATYPES.items()}


VALUES_SUFFIX = "__values"
LENGTHS_SUFFIX = "__lengths"
WEIGHTS_SUFFIX = "__weights"
GROUP_OUTPUT = "embeddings"


@dataclass(frozen=True)
class Feature:
    """One input feature of a group model: its name, the table it reads and that table's dim."""

    name: str
    table: str
    dim: int


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # "lookup" | "bag" | "search" | "group"
    entry: LoadedTable | None = None
    """the table of a one-table model"""
    features: tuple[Feature, ...] = ()
    """the features of a group model, in output order"""
    versions: tuple[tuple[str, str], ...] = ()
    """a group model's (table, version) pairs when it was resolved"""

    @property
    def version(self) -> str:
        if self.entry is not None:
            return self.entry.table.version
        return group_version(self.versions)


def group_version(versions: Iterable[tuple[str, str]]) -> str:
    """A group model's version: a digest of its tables' (name, version) pairs, so it changes
    whenever one of its tables is swapped."""
    text = "\n".join(f"{table}={version}" for table, version in versions)
    return "g" + hashlib.sha256(text.encode()).hexdigest()[:16]


def model_table(model: str) -> str:
    """The table (or group) a model name is about, for bounded metric labels: the suffix dropped."""
    return model.removesuffix(SEARCH_SUFFIX).removesuffix(BAG_SUFFIX)


def resolve(
    active: Mapping[str, LoadedTable],
    groups: Mapping[str, tuple[tuple[str, str], ...]],
    model: str,
    version: str | None = None,
) -> Model:
    """A model name (and optional version) -> the table(s) and operation it stands for, from one
    snapshot of the active tables; exact table names win over suffixed names and groups. A version
    other than the one served is not found."""
    found = _find(active, groups, model)
    if version and version != found.version:
        raise VersionNotFound(model, version, found.version)
    return found


class VersionNotFound(TableNotFound):
    """A model asked for by a version other than the one it serves (404 / NOT_FOUND, as a table)."""

    def __init__(self, model: str, version: str, served: str) -> None:
        super().__init__(model)
        self.args = (f"model {model!r} has no version {version!r} (it serves {served!r})",)


def _find(active: Mapping[str, LoadedTable], groups: Mapping[str, tuple[tuple[str, str], ...]], model: str) -> Model:
    if model in active:
        return Model(model, "lookup", active[model])
    for suffix, kind in ((SEARCH_SUFFIX, "search"), (BAG_SUFFIX, "bag")):
        base = model.removesuffix(suffix)
        if base != model and base in active:
            return Model(model, kind, active[base])
    members = groups.get(model)
    if members is None:
        raise TableNotFound(model)
    features, versions = [], []
    for feature, table in members:
        loaded = active.get(table)
        if loaded is None:
            raise TableNotFound(f"{table} (feature {feature!r} of model {model!r})")
        features.append(Feature(feature, table, loaded.table.dim))
        versions.append((table, loaded.table.version))
    return Model(model, "group", features=tuple(features), versions=tuple(versions))


def server_metadata() -> dict[str, Any]:
    return {"name": "embserve", "version": __version__, "extensions": EXTENSIONS}


def _io(model: Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if model.kind == "group":
        inputs = []
        for f in model.features:
            inputs += [
                {"name": f.name + VALUES_SUFFIX, "datatype": "INT64", "shape": [-1], "optional": False},
                {"name": f.name + LENGTHS_SUFFIX, "datatype": "INT64", "shape": [-1], "optional": False},
                {"name": f.name + WEIGHTS_SUFFIX, "datatype": "FP32", "shape": [-1], "optional": True},
            ]
        width = sum(f.dim for f in model.features)
        return inputs, [{"name": GROUP_OUTPUT, "datatype": "FP32", "shape": [-1, width]}]
    assert model.entry is not None
    dim = model.entry.table.dim
    if model.kind in ("lookup", "bag"):
        inputs = [{"name": "ids", "datatype": "INT64", "shape": [-1], "optional": False}]
        if model.kind == "bag":
            inputs += [
                {"name": "offsets", "datatype": "INT64", "shape": [-1], "optional": True},
                {"name": "lengths", "datatype": "INT64", "shape": [-1], "optional": True},
                {"name": "per_sample_weights", "datatype": "FP32", "shape": [-1], "optional": True},
            ]
        outputs = [{"name": "embeddings", "datatype": "FP32", "shape": [-1, dim]}]
    else:
        inputs = [
            {"name": "queries", "datatype": "FP32", "shape": [-1, dim], "optional": True},
            {"name": "query_ids", "datatype": "INT64", "shape": [-1], "optional": True},
            {"name": "exclude_ids", "datatype": "INT64", "shape": [-1], "optional": True},
            {"name": "exclude_lengths", "datatype": "INT64", "shape": [-1], "optional": True},
        ]
        outputs = [
            {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]
    return inputs, outputs


def model_metadata(model: Model) -> dict[str, Any]:
    inputs, outputs = _io(model)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [{k: v for k, v in i.items() if k != "optional"} for i in inputs],
        "outputs": outputs,
    }


def model_config(model: Model) -> dict[str, Any]:
    """Triton's model configuration, as its HTTP endpoint returns it (JSON names of model_config.proto)."""
    inputs, outputs = _io(model)
    if model.entry is None:
        parameters = {
            "features": {"string_value": ",".join(f.name for f in model.features)},
            "tables": {"string_value": ",".join(f.table for f in model.features)},
            "dims": {"string_value": ",".join(str(f.dim) for f in model.features)},
        }
    else:
        table = model.entry.table
        parameters = {
            "codec": {"string_value": table.codec},
            "rerank": {"string_value": table.rerank.name if table.rerank else ""},
            "rows": {"string_value": str(table.rows)},
        }
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": 0,
        "input": [
            {"name": i["name"], "data_type": f"TYPE_{i['datatype']}", "dims": i["shape"], "optional": i["optional"]}
            for i in inputs
        ],
        "output": [{"name": o["name"], "data_type": f"TYPE_{o['datatype']}", "dims": o["shape"]} for o in outputs],
        "parameters": parameters,
    }


def tensor_from_bytes(name: str, datatype: str, shape: Any, raw: bytes) -> np.ndarray:
    """Raw little-endian C-order bytes -> array of `shape`, refusing a size that does not match."""
    dtype = _dtype(name, datatype)
    dims = _shape(name, shape)
    expected = math.prod(dims) * dtype.itemsize  # Python ints: an element count never wraps
    if len(raw) != expected:
        raise InvalidRequest(
            f"input {name!r}: {len(raw)} bytes of data, but shape {dims} of {datatype} needs {expected}"
        )
    return reshaped(np.frombuffer(raw, dtype=dtype.newbyteorder("<")), dims, f"input {name!r}")


def tensor_from_list(name: str, datatype: str, shape: Any, data: Any) -> np.ndarray:
    """JSON data (or a protobuf contents field) -> array of `shape`. Values are held to the
    datatype as the native API holds its fields: integers for the integer types (3.0 passes, 1.5
    does not), true / false for BOOL, numbers for the float types; never cast by truncation."""
    dtype = _dtype(name, datatype)
    dims = _shape(name, shape)
    try:
        given = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidRequest(f"input {name!r}: data must be a list of values (nested lists of one length)") from None
    if given.size == 0:
        given = np.zeros(0, dtype)
    if dtype.kind == "f" and holds_integers_past_int64(given):
        given = _as_float64(name, datatype, given)  # valid float values, written as integers
    _refuse_values_of_another_kind(name, datatype, dtype, given)
    if dtype.kind in "iu" and given.size:
        if given.dtype.kind == "f":
            # integral floats beside integers: numpy's float64 array rounds integers past 2**53,
            # so each value is taken as JSON gave it
            given = np.array([int(v) for v in np.asarray(data, dtype=object).reshape(-1)], dtype=object)
        info = np.iinfo(dtype)
        low, high = int(given.min()), int(given.max())
        if low < info.min or high > info.max:
            value = low if low < info.min else high
            raise InvalidRequest(f"input {name!r}: {value} is beyond the range of {datatype}")
    try:
        # a float past the datatype's range is an error here, not a numpy warning in the log
        with np.errstate(over="raise", invalid="raise"):
            arr = given.astype(dtype)
    except FloatingPointError:
        raise InvalidRequest(f"input {name!r}: a value is beyond the range of {datatype}") from None
    if arr.size != math.prod(dims):
        raise InvalidRequest(f"input {name!r}: {arr.size} values, but shape {dims} needs {math.prod(dims)}")
    return reshaped(arr, dims, f"input {name!r}")


def _as_float64(name: str, datatype: str, given: np.ndarray) -> np.ndarray:
    try:
        return given.astype(np.float64)
    except OverflowError:
        raise InvalidRequest(f"input {name!r}: a value is beyond the range of {datatype}") from None


def _refuse_values_of_another_kind(name: str, datatype: str, dtype: np.dtype[Any], given: np.ndarray) -> None:
    kind = given.dtype.kind
    if dtype.kind == "b":
        if kind != "b" and given.size:
            raise InvalidRequest(f"input {name!r}: BOOL data must be true or false, got {kind_of_values(given)}")
        return
    if kind not in "iuf":
        raise InvalidRequest(f"input {name!r}: {datatype} data must be numbers, got {kind_of_values(given)}")
    if dtype.kind in "iu" and kind == "f":
        integral = (np.isfinite(given) & (given == np.round(given))).reshape(-1)
        if not integral.all():
            pos = int(np.flatnonzero(~integral)[0])
            raise InvalidRequest(
                f"input {name!r}: {datatype} data must be integers, got {given.reshape(-1)[pos]:g} at position {pos}"
            )


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"input {name!r}: unsupported datatype {datatype!r}")
    return dtype


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidRequest(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    return [int(d) for d in shape]


CoreRequest = LookupRequest | SearchRequest | MultiLookupRequest


def core_request(model: Model, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> CoreRequest:
    """A model's inputs and parameters -> the typed core request that answers it."""
    if model.kind == "group":
        return group_request(model, inputs, params)
    assert model.entry is not None
    table_name = model.entry.name
    declared = [i["name"] for i in _io(model)[0]]
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        # an input read by no one would change nothing of the answer, unseen ("weights" for
        # per_sample_weights, "exclude_id" for exclude_ids): refused, as a group model refuses it
        raise InvalidRequest(f"model {model.name!r} has no input {unknown[0]!r} (inputs: {', '.join(declared)})")
    # ids given as floats would be rounded (FP16 2049 is 2048): integer datatypes only, as declared
    if model.kind in ("lookup", "bag"):
        ids = _model_input(model, inputs, "ids", INTEGER_KINDS, INTEGER_IDS)
        if ids is None:
            raise InvalidRequest(f"model {model.name!r} needs input 'ids' (INT64 [n])")
        given: dict[str, Any] = {"ids": ids}
        if model.kind == "bag":
            if "offsets" not in inputs and "lengths" not in inputs:
                raise InvalidRequest(f"model {model.name!r} needs input 'offsets' or 'lengths' (INT64 [bags])")
            for name in ("offsets", "lengths"):
                given[name] = _model_input(model, inputs, name, INTEGER_KINDS, "INT64 or INT32 integers")
            given["per_sample_weights"] = _model_input(model, inputs, "per_sample_weights", "f", "FP32 weights")
            given["mode"] = params.get("mode")
        return lookup_request(table_name, given)
    queries = inputs.get("queries")
    if queries is not None and queries.dtype.kind != "f":
        raise InvalidRequest(f"model {model.name!r}: input 'queries' must be FP32, got {DATATYPE_OF[queries.dtype]}")
    query_ids = _model_input(model, inputs, "query_ids", INTEGER_KINDS, INTEGER_IDS)
    if queries is not None and queries.ndim == 1:
        queries = queries.reshape(1, -1)
    given = {**params, "queries": queries, "query_ids": query_ids}
    given["exclude_ids"] = _model_input(model, inputs, "exclude_ids", INTEGER_KINDS, INTEGER_IDS)
    given["exclude_lengths"] = _model_input(model, inputs, "exclude_lengths", INTEGER_KINDS, "INT64 or INT32 integers")
    return search_request(table_name, given)


def answer_outputs(
    model: Model, answered: np.ndarray | tuple[np.ndarray, np.ndarray] | MultiLookupResult, requested: list[str] | None
) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """What the core answered -> (the version that answered, [(output name, array)] in the order
    requested). A one-table model's version is that of the table object that answered."""
    if isinstance(answered, MultiLookupResult):
        version = group_version((r.table, r.version) for r in answered.results)
        return version, _select(model, {GROUP_OUTPUT: answered.concatenated()}, requested)
    assert model.entry is not None
    if isinstance(answered, tuple):
        ids, scores = answered
        return model.entry.table.version, _select(model, {"ids": ids, "scores": scores}, requested)
    return model.entry.table.version, _select(model, {"embeddings": answered}, requested)


def _select(model: Model, outputs: dict[str, np.ndarray], requested: list[str] | None) -> list[tuple[str, np.ndarray]]:
    names = requested or list(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise InvalidRequest(f"model {model.name!r} has no output {unknown[0]!r} (outputs: {', '.join(outputs)})")
    return [(n, outputs[n]) for n in names]


INTEGER_KINDS = "iu"
INTEGER_IDS = "ids of an integer datatype (INT64, INT32, UINT64, ...)"


def refuse_repeated_outputs(requested: list[str] | None) -> None:
    """An output named twice is refused before any work: each naming is one more copy of the
    answer, past the answer limit (a 60 kB request asked for a 349 MB answer)."""
    seen: set[str] = set()
    for name in requested or ():
        if name in seen:
            raise InvalidRequest(f"output {name!r} is requested more than once")
        seen.add(name)


def refuse_repeated_input(name: str, given: Mapping[str, np.ndarray]) -> None:
    """An input named twice in one request is refused: the one read last would win unseen."""
    if name in given:
        raise InvalidRequest(f"input {name!r} is given more than once")


def _model_input(model: Model, inputs: Mapping[str, np.ndarray], name: str, kinds: str, what: str) -> np.ndarray | None:
    """Input `name` flattened, None when not given; refused unless its datatype is of `kinds`."""
    arr = inputs.get(name)
    if arr is None:
        return None
    if arr.dtype.kind not in kinds:
        raise InvalidRequest(f"model {model.name!r}: input {name!r} must be {what}, got {DATATYPE_OF[arr.dtype]}")
    return arr.reshape(-1)


def group_request(model: Model, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> MultiLookupRequest:
    """A group model's inputs -> one concatenated multi-table request, every error naming the
    feature (or the input) it is about."""
    expected = {f.name + s for f in model.features for s in (VALUES_SUFFIX, LENGTHS_SUFFIX, WEIGHTS_SUFFIX)}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        features = ", ".join(f.name for f in model.features)
        raise InvalidRequest(
            f"model {model.name!r} has no input {unknown[0]!r} (inputs are <feature>__values, <feature>__lengths "
            f"and optional <feature>__weights for the features {features})"
        )
    entries = []
    for f in model.features:
        values = _model_input(model, inputs, f.name + VALUES_SUFFIX, INTEGER_KINDS, INTEGER_IDS)
        lengths = _model_input(model, inputs, f.name + LENGTHS_SUFFIX, INTEGER_KINDS, "INT64 or INT32 bag sizes")
        weights = _model_input(model, inputs, f.name + WEIGHTS_SUFFIX, "f", "FP32 weights")
        for name, arr in ((VALUES_SUFFIX, values), (LENGTHS_SUFFIX, lengths)):
            if arr is None:
                raise InvalidRequest(f"model {model.name!r} needs input '{f.name}{name}' for feature {f.name!r}")
        given = {"ids": values, "lengths": lengths, "weights": weights, "mode": params.get("mode")}
        entries.append(lookup_request(f.table, given, label=f"feature {f.name!r}"))
    return MultiLookupRequest(tuple(entries), concat=True)
