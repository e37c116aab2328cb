"""gRPC transport: embserve.v1.EmbeddingService and inference.GRPCInferenceService (OIP).

Servicers parse protobuf messages into numpy arrays, call `EmbeddingService`, and build replies.
`grpc_errors` ends a failed call with the code and text `service.errors` renders, once for every method."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from runtime.errors import EmbserveError, InvalidRequest, PayloadTooLarge
from runtime.validation import reshaped
from service import oip
from service.core import EmbeddingService
from service.errors import render_error, status_label
from service.memory import LARGE_REQUEST_BYTES, release_free_heap
from service.requests import (
    InferRequest,
    LookupRequest,
    MultiLookupRequest,
    delete_keys_request,
    lookup_request,
    score_request,
    search_request,
    upsert_request,
)
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc

log = logging.getLogger("embserve")
TRANSPORT = "grpc"
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]
NATIVE_DTYPES: dict[str, np.dtype[Any]] = {"int64": np.dtype("<i8"), "float32": np.dtype("<f4")}


COUNTED_OPERATIONS = {
    "Lookup": "lookup",
    "MultiLookup": "multi_lookup",
    "Search": "search",
    "Score": "score",
    "Upsert": "admin_upsert",
    "DeleteKeys": "admin_delete_keys",
    "ModelInfer": "infer",
}
"""The methods counted in the request metrics, by their operation label: a call refused before it
reaches the core (a tensor that does not parse, a caller without the admin token) is counted
under it too."""


def _table_of(request: Any) -> str | None:
    """The table of a counted call: its table, a model's table or group, None for many tables,
    "" (counted as "unknown") when the bytes did not parse."""
    if isinstance(request, Undecodable):
        return ""
    if isinstance(request, ipb.ModelInferRequest):
        return oip.model_table(request.model_name)
    return getattr(request, "table", None)  # a MultiLookupRequest has none


def grpc_errors(method: Handler[R]) -> Handler[R]:
    """End the call with the status code mapped from a typed error; log anything unexpected.

    The status is set after the `except` block, from the code and text alone: an exception kept
    alive past the call would keep its traceback's frames, and with them the request and its
    arrays, until the cycle collector happens to run."""
    operation = COUNTED_OPERATIONS.get(method.__name__)

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        if not isinstance(request, Undecodable) and request.ByteSize() >= LARGE_REQUEST_BYTES:
            # once this call is over, hand the pages of its receive buffers back (off the loop)
            context.add_done_callback(lambda _: _release_after(self.service))
        counted = (
            contextlib.nullcontext()
            if operation is None
            else self.service.taken_in(TRANSPORT, operation, _table_of(request))
        )
        with counted as taken:
            try:
                if isinstance(request, Undecodable):
                    raise InvalidRequest(request.message)
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if not isinstance(exc, EmbserveError):
                    log.exception("unexpected error in %s", method.__name__)
                error = render_error(exc, self.service.settings.artifact_root)
                if taken is not None:
                    taken.status = status_label(exc)
        del request
        # status set and no response, rather than `context.abort`: grpcio keeps the AbortError that
        # abort raises on the call's state, and its traceback holds this frame and the context, a
        # cycle that outlives the call until a gc pass
        context.set_code(error.grpc_code)
        context.set_details(error.message)
        return None  # type: ignore[return-value]

    return wrapper


def _release_after(service: EmbeddingService) -> None:
    with contextlib.suppress(RuntimeError):  # the executor is shut down: the process is stopping
        service.executor.submit(release_free_heap)


class Undecodable:
    """Stands for a request whose bytes are not a valid protobuf message. grpcio answers a
    deserializer that raises with UNKNOWN by itself; returning this instead lets the servicer
    answer INVALID_ARGUMENT. Holds the error text only, never the bytes."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def tolerant(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            return Undecodable(f"the request to {method} is not a valid protobuf message")

    return deserialize


class _Captured:
    """Stands in for a server while a generated `add_*_to_server` hands it its method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register a servicer as the generated `add_to_server` would, with every request
    deserializer made `tolerant` (undecodable bytes reach the servicer as `Undecodable`)."""
    captured = _Captured()
    add_to_server(servicer, captured)
    handlers = {
        name: handler._replace(
            request_deserializer=tolerant(handler.request_deserializer, f"{captured.service}/{name}")
        )
        for name, handler in captured.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)


# the fields that hold values; every other Tensor field holds ids, keys, offsets or lengths. Each
# takes its own dtype only, as OIP inputs do: a float32 tensor of ids was read as ids when every
# value was whole, and an int64 tensor of queries as floats
FLOAT32_FIELDS = frozenset({"queries", "rows", "weights", "per_sample_weights"})


def request_tensor(tensor: pb.Tensor, field: str, name: str | None = None) -> np.ndarray:
    """A request's Tensor field -> its array, held to the field's dtype; field names it in
    messages, name (the field's own name, when field is a path such as tables[0].ids) picks it."""
    want = "float32" if (name or field) in FLOAT32_FIELDS else "int64"
    # an empty tensor holds no value to misread: numpy's default float64 empty array, sent as
    # float32 by `array_to_tensor`, stays an empty list of ids
    empty = tensor.dtype in NATIVE_DTYPES and not tensor.data and 0 in tensor.shape
    if tensor.dtype != want and not empty:
        raise InvalidRequest(f"{field}.dtype must be {want!r}, got {tensor.dtype!r}")
    return tensor_to_array(tensor, field)


def tensor_to_array(tensor: pb.Tensor, field: str) -> np.ndarray:
    dtype = NATIVE_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidRequest(f"{field}.dtype must be one of {', '.join(NATIVE_DTYPES)}, got {tensor.dtype!r}")
    data = tensor.data  # each read of a bytes field makes a new bytes object: read it once
    dims = tensor.shape
    if len(dims) == 1 and len(data) == dims[0] * dtype.itemsize and dims[0] >= 0:
        # the usual flat tensor (ids, lengths, weights): a multi-table request has a few a table. A
        # writable copy: a view of the bytes is read-only, which numba types apart from a writable
        # array, so every kernel the general paths reach would compile again on first use
        return np.frombuffer(bytearray(data), dtype=dtype)
    shape = list(dims)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{field}.shape must be non-negative, got {shape}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: an element count never wraps
    if len(data) != expected:
        raise InvalidRequest(
            f"{field}: {len(data)} bytes of data, but shape {shape} of {tensor.dtype} needs {expected}"
        )
    return reshaped(np.frombuffer(data, dtype=dtype), shape, field)


def array_to_tensor(arr: np.ndarray) -> pb.Tensor:
    return fill_tensor(pb.Tensor(), arr)


def fill_tensor(tensor: pb.Tensor, arr: np.ndarray) -> pb.Tensor:
    """Write arr into `tensor` (a response's own field) in place and return it. A Tensor built apart
    and handed to the response's constructor is copied in whole: for a 256 × 128 lookup that copy
    cost as much as the lookup itself."""
    name = "int64" if arr.dtype.kind in "iu" else "float32"
    tensor.dtype = name
    tensor.shape.extend(arr.shape)
    tensor.data = np.ascontiguousarray(arr, dtype=NATIVE_DTYPES[name]).tobytes()
    return tensor


def _optional_tensor(request: Any, field: str) -> np.ndarray | None:
    return request_tensor(getattr(request, field), field) if request.HasField(field) else None


def _required_tensor(request: Any, field: str) -> np.ndarray:
    # an unset message field reads as an empty Tensor, whose dtype '' would be the complaint
    if not request.HasField(field):
        raise InvalidRequest(f"{field} is required")
    return request_tensor(getattr(request, field), field)


def _multi_entry(index: int, entry: pb.MultiLookupEntry) -> LookupRequest:
    """One MultiLookup entry -> LookupRequest; a tensor error names the entry (tables[i].field)."""

    def tensor(field: str) -> np.ndarray | None:
        if not entry.HasField(field):
            return None
        return request_tensor(getattr(entry, field), f"tables[{index}].{field}", field)

    ids = tensor("ids")
    if ids is None:
        raise InvalidRequest(f"tables[{index}] ({entry.table!r}): ids are required")
    given = {
        "ids": ids,
        "lengths": tensor("lengths"),
        "offsets": tensor("offsets"),
        "weights": tensor("weights"),
        "mode": entry.mode or None,  # proto3: "" is unset
    }
    return lookup_request(entry.table, given)


def table_info(info: dict[str, Any]) -> pb.TableInfo:
    return pb.TableInfo(
        name=info["name"],
        rows=info["rows"],
        dim=info["dim"],
        codec=info["codec"],
        params_json=json.dumps(info["params"]),
        rerank_codec=(info["rerank"] or {}).get("codec", ""),
        nbytes=info["nbytes"],
        fp32_nbytes=info["fp32_nbytes"],
        compression_ratio=info["compression_ratio"],
        version=info["version"],
        loaded_at=info["loaded_at"],
        metrics=info["metrics"],
        keyed=info["keyed"],
        missing=info["missing"],
        tiers=[
            pb.TierInfo(
                rows=tier["rows"],
                codec=tier["codec"],
                params_json=json.dumps(tier["params"]),
                rerank_codec=(tier["rerank"] or {}).get("codec", ""),
                dim=tier["dim"],
                nbytes=tier["nbytes"],
            )
            for tier in info["tiers"]
        ],
        delta_rows=info["delta_rows"],
        delta_slots=info["delta_slots"],
        delta_capacity=info["delta_capacity"],
        sequence=info["sequence"],
        last_update_id=info.get("last_update_id", ""),
    )


def update_response(info: dict[str, Any]) -> pb.UpdateResponse:
    return pb.UpdateResponse(
        applied=info["applied"],
        sequence=info["sequence"],
        delta_rows=info["delta_rows"],
        delta_slots=info["delta_slots"],
        delta_capacity=info["delta_capacity"],
    )


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


class NativeServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    @grpc_errors
    async def ListTables(
        self, request: pb.ListTablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTablesResponse:
        return pb.ListTablesResponse(tables=[table_info(i) for i in self.service.list_tables()])

    @grpc_errors
    async def DescribeTable(self, request: pb.DescribeTableRequest, context: grpc.aio.ServicerContext) -> pb.TableInfo:
        return table_info(self.service.describe_entry(self.service.get(request.table)))

    @grpc_errors
    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        given = {
            "ids": _required_tensor(request, "ids"),
            "offsets": _optional_tensor(request, "offsets"),
            "lengths": _optional_tensor(request, "lengths"),
            "per_sample_weights": _optional_tensor(request, "per_sample_weights"),
            "mode": request.mode or None,  # proto3: "" is unset
        }
        rows = await self.service.lookup(TRANSPORT, lookup_request(request.table, given))
        response = pb.LookupResponse()
        fill_tensor(response.embeddings, rows)
        return response

    @grpc_errors
    async def MultiLookup(
        self, request: pb.MultiLookupRequest, context: grpc.aio.ServicerContext
    ) -> pb.MultiLookupResponse:
        typed = MultiLookupRequest(tuple(_multi_entry(i, e) for i, e in enumerate(request.tables)), request.concat)
        result = await self.service.multi_lookup(TRANSPORT, typed)
        response = pb.MultiLookupResponse()
        for r in result.results:
            entry = response.results.add(table=r.table, version=r.version)
            if not typed.concat:
                fill_tensor(entry.embeddings, r.embeddings)
        if typed.concat:
            fill_tensor(response.concatenated, result.concatenated())
        return response

    @grpc_errors
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        given = {
            "queries": _optional_tensor(request, "queries"),
            "query_ids": _optional_tensor(request, "query_ids"),
            "k": request.k if request.HasField("k") else None,
            "metric": request.metric or None,
            "oversample": request.oversample or None,  # proto3: 0 is unset
            "exclude_self": request.exclude_self if request.HasField("exclude_self") else None,
            "exclude_ids": _optional_tensor(request, "exclude_ids"),
            "exclude_lengths": _optional_tensor(request, "exclude_lengths"),
        }
        ids, scores = await self.service.search(TRANSPORT, search_request(request.table, given))
        response = pb.SearchResponse()
        fill_tensor(response.ids, ids)
        fill_tensor(response.scores, scores)
        return response

    @grpc_errors
    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        given = {
            "candidate_ids": _required_tensor(request, "candidate_ids"),
            "queries": _optional_tensor(request, "queries"),
            "query_ids": _optional_tensor(request, "query_ids"),
            "metric": request.metric or None,
        }
        scores = await self.service.score(TRANSPORT, score_request(request.table, given))
        response = pb.ScoreResponse()
        fill_tensor(response.scores, scores)
        return response

    @grpc_errors
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpdateResponse:
        self.service.authorize(_authorization(context))  # before the tensors are read, as over HTTP
        given = {
            "keys": _optional_tensor(request, "keys"),  # unset: the core says keys are required
            "rows": _optional_tensor(request, "rows"),
            "sequence": request.sequence if request.HasField("sequence") else None,
        }
        info = await self.service.admin_upsert(TRANSPORT, _authorization(context), upsert_request(request.table, given))
        return update_response(info)

    @grpc_errors
    async def DeleteKeys(self, request: pb.DeleteKeysRequest, context: grpc.aio.ServicerContext) -> pb.UpdateResponse:
        self.service.authorize(_authorization(context))
        given = {
            "keys": _optional_tensor(request, "keys"),
            "sequence": request.sequence if request.HasField("sequence") else None,
        }
        typed = delete_keys_request(request.table, given)
        return update_response(await self.service.admin_delete_keys(TRANSPORT, _authorization(context), typed))


CONTENT_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _param_value(param: ipb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


class InferenceServicer(ipb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    @grpc_errors
    async def ServerLive(
        self, request: ipb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerLiveResponse:
        return ipb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: ipb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerReadyResponse:
        return ipb.ServerReadyResponse(ready=self.service.ready)

    @grpc_errors
    async def ModelReady(
        self, request: ipb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelReadyResponse:
        self.service.resolve_model(request.name, request.version)  # NOT_FOUND for an unknown model
        return ipb.ModelReadyResponse(ready=self.service.ready)

    @grpc_errors
    async def ServerMetadata(
        self, request: ipb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ServerMetadataResponse:
        return ipb.ServerMetadataResponse(**oip.server_metadata())

    @grpc_errors
    async def ModelMetadata(
        self, request: ipb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelMetadataResponse:
        model = self.service.resolve_model(request.name, request.version)
        meta = oip.model_metadata(model)
        tensor = ipb.ModelMetadataResponse.TensorMetadata
        return ipb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    @grpc_errors
    async def ModelConfig(
        self, request: ipb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelConfigResponse:
        model = self.service.resolve_model(request.name, request.version)
        config = oip.model_config(model)
        return ipb.ModelConfigResponse(
            config=ipb.ModelConfig(
                name=config["name"],
                platform=config["platform"],
                backend=config["backend"],
                max_batch_size=config["max_batch_size"],
                input=[
                    ipb.ModelInput(
                        name=i["name"],
                        data_type=ipb.DataType.Value(i["data_type"]),
                        dims=i["dims"],
                        optional=i["optional"],
                    )
                    for i in config["input"]
                ],
                output=[
                    ipb.ModelOutput(name=o["name"], data_type=ipb.DataType.Value(o["data_type"]), dims=o["dims"])
                    for o in config["output"]
                ],
                parameters={
                    k: ipb.ModelParameter(string_value=v["string_value"]) for k, v in config["parameters"].items()
                },
            )
        )

    @grpc_errors
    async def ModelInfer(
        self, request: ipb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> ipb.ModelInferResponse:
        params = {k: _param_value(v) for k, v in request.parameters.items()}
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        inputs: dict[str, np.ndarray] = {}
        # counted for the whole request before any becomes Python objects (~32 bytes each, where
        # the message took 1-8): a limit per input let many inputs through
        listed = sum(len(getattr(t.contents, CONTENT_FIELDS.get(t.datatype, "int64_contents"))) for t in request.inputs)
        limit = self.service.settings.max_json_values
        if listed > limit:
            raise PayloadTooLarge(
                f"{listed} values in the inputs' contents exceed the limit of {limit}; "
                "send large tensors in raw_input_contents"
            )
        for i, tensor in enumerate(request.inputs):
            oip.refuse_repeated_input(tensor.name, inputs)
            for k, v in tensor.parameters.items():
                params.setdefault(k, _param_value(v))
            if raw and tensor.HasField("contents"):
                raise InvalidRequest(f"input {tensor.name!r}: data in both contents and raw_input_contents; send one")
            if raw:
                inputs[tensor.name] = oip.tensor_from_bytes(tensor.name, tensor.datatype, list(tensor.shape), raw[i])
            else:
                field = CONTENT_FIELDS.get(tensor.datatype)
                if field is None and tensor.datatype in oip.DATATYPES:
                    # the protocol's contents message has no field for it (FP16, BF16): raw bytes only
                    raise InvalidRequest(
                        f"input {tensor.name!r}: datatype {tensor.datatype!r} has no contents field in the gRPC "
                        "protocol; send it in raw_input_contents"
                    )
                if field is None:
                    raise InvalidRequest(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}")
                values = list(getattr(tensor.contents, field))
                inputs[tensor.name] = oip.tensor_from_list(tensor.name, tensor.datatype, list(tensor.shape), values)
        requested = [o.name for o in request.outputs] or None
        typed = InferRequest(request.model_name, inputs, params, request.model_version or None, requested)
        result = await self.service.infer(TRANSPORT, typed)
        response = ipb.ModelInferResponse(model_name=result.model, model_version=result.version, id=request.id)
        for name, arr in result.outputs:
            response.outputs.add(name=name, datatype=oip.DATATYPE_OF[arr.dtype], shape=list(arr.shape))
            response.raw_output_contents.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
        return response
