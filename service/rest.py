"""HTTP transport (FastAPI): native /v1 API, Open Inference Protocol /v2, health, metrics, admin.

Handlers parse, call `EmbeddingService`, and serialize. Errors are typed; `service.errors` renders
them (status and `{"error": "..."}` body) for the exception handler and the ASGI fronts alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import MutableMapping
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from runtime.errors import EmbserveError, InvalidRequest, NotReady, PayloadTooLarge
from runtime.table import __version__
from runtime.validation import check_flag, refuse_booleans_in_json, reshaped
from service import multi_rest, oip
from service.core import EmbeddingService, TakenIn
from service.errors import render_error, send_http_error
from service.requests import (
    DEFAULT_MODE,
    DeleteKeysRequest,
    InferRequest,
    LoadRequest,
    LookupRequest,
    ScoreRequest,
    SearchRequest,
    UpsertRequest,
    delete_keys_request,
    load_request,
    lookup_request,
    refuse_unknown_fields,
    score_request,
    search_request,
    upsert_request,
)

log = logging.getLogger("embserve")
OCTET = "application/octet-stream"
SHAPE_HEADER = "X-Embserve-Shape"
OIP_HEADER_LENGTH = "Inference-Header-Content-Length"
TRANSPORT = "http"


class FastJSON(Response):
    """JSON through orjson, numpy arrays serialized natively."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # orjson serializes only C-contiguous arrays natively
        return np.ascontiguousarray(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


# Request bodies, for the OpenAPI document; handlers parse the body themselves so array checks
# (and their messages naming the offending id) stay in the runtime.
class LookupBody(BaseModel):
    ids: list[int] = Field(description="row ids (keys on keyed tables; `keys` is accepted too), int64")
    offsets: list[int] | None = Field(None, description="EmbeddingBag offsets; when given the result is pooled")
    lengths: list[int] | None = Field(None, description="bag sizes (B,), instead of offsets; pooled result")
    per_sample_weights: list[float] | None = Field(
        None, description="(n,) weights of a weighted sum (mode sum, with bags); `weights` is accepted too"
    )
    mode: Literal["sum", "mean"] | None = Field(
        None, description=f'how bags are pooled (default "{DEFAULT_MODE}"); only with offsets or lengths'
    )


class SearchBody(BaseModel):
    queries: list[list[float]] | None = Field(None, description="(q, dim) query vectors")
    query_ids: list[int] | None = Field(None, description="(q,) stored ids used as queries")
    k: int = 10
    metric: Literal["ip", "l2", "hamming"] = "ip"
    oversample: int = 1
    exclude_self: bool = True
    exclude_ids: list[int] | None = Field(
        None,
        description="(n,) ids (keys on keyed tables) left out of every query's results, or split by exclude_lengths",
    )
    exclude_lengths: list[int] | None = Field(None, description="(q,) how many of exclude_ids belong to each query")


class ScoreBody(BaseModel):
    candidate_ids: list[list[int]]
    queries: list[list[float]] | None = None
    query_ids: list[int] | None = None
    metric: Literal["ip", "l2", "hamming"] = "ip"


class UpsertBody(BaseModel):
    keys: list[int] = Field(description="keys (keyed tables) or row ids (dense tables), int64")
    rows: list[list[float]] = Field(description="(n, dim) new rows")
    sequence: int | None = Field(
        None, description="the table's sequence after this batch (default: +1; with Redis refused, the log owns it)"
    )


class DeleteKeysBody(BaseModel):
    keys: list[int] = Field(description="keys to delete, int64 (keyed tables only)")
    sequence: int | None = None


class LoadBody(BaseModel):
    path: str = Field(description="artifact directory, relative to (or inside) the artifact root")


def _body_doc(model: type[BaseModel], octet: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if octet:
        content[OCTET] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


async def read_body(service: EmbeddingService, request: Request) -> bytes:
    """The request's body, refused by its declared length or, for a chunked body that declares
    none, as soon as what has arrived passes the limit: never held whole before it is measured."""
    declared = request.headers.get("content-length")
    if declared is not None and ASCII_DIGITS.fullmatch(declared):
        service.check_body_size(int(declared))
    body = await read_asgi_body(request.receive, service)
    if body is None:
        raise ClientDisconnect()
    return body


PARSE_OFF_LOOP_BYTES = 1 << 20
"""A JSON body larger than this is parsed on a worker thread: four 36 MB bodies parsed on the
event loop held every other request, health checks included, for up to 3.4 s."""


async def parse_json_object(service: EmbeddingService, raw: bytes) -> dict[str, Any]:
    """A JSON object body (`parse_json_bytes`, under the service's value limit), parsed off the
    event loop when large."""
    max_values = service.json_values_limit()
    if len(raw) <= PARSE_OFF_LOOP_BYTES:
        return parse_json_bytes(raw, max_values)
    return await asyncio.get_running_loop().run_in_executor(service.executor, parse_json_bytes, raw, max_values)


def parse_json_bytes(raw: bytes, max_values: int | None) -> dict[str, Any]:
    """A JSON object body. Its values are counted first (its commas, and its brackets: each list or
    object is a value of its own, and `[[[...]]]` has no commas): parsed, each number is a Python
    object of ~32 bytes, each list ~60, so a 64 MiB body of `0,0,...` took over 1 GB, and one of
    nested lists 3 GB. None: no limit (a sibling's replay)."""
    if max_values is not None and len(raw) > max_values:
        values = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
        if values > max_values:
            raise PayloadTooLarge(
                f"a JSON body of about {values} values exceeds the limit of {max_values}; send large batches as "
                "application/octet-stream, over gRPC or as OIP binary tensors"
            )
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("body must be a JSON object")
    refuse_booleans_in_json(raw, value)
    return value


async def json_request_fields(service: EmbeddingService, raw: bytes, kind: type) -> dict[str, Any]:
    """A single-table route's JSON body: an object (parse_json_object) of `kind`'s fields only."""
    payload = await parse_json_object(service, raw)
    refuse_unknown_fields(payload, kind)
    return payload


async def octet_lookup(service: EmbeddingService, name: str, body: bytes) -> tuple[memoryview, str]:
    """Native binary lookup: little-endian int64 ids in -> (float32 rows as bytes, "n,dim")."""
    if len(body) % 8:
        raise InvalidRequest(
            f"octet-stream body must be little-endian int64 ids; {len(body)} bytes is not a multiple of 8"
        )
    # a writable copy: a view of the body would be read-only, which numba types apart from a
    # writable array, so every kernel the general paths reach would compile again on first use
    # (the tables' one-call lookup path takes either)
    ids = np.frombuffer(bytearray(body), dtype="<i8")
    rows = await service.lookup(TRANSPORT, LookupRequest(name, ids))
    # a flat byte view of the gathered rows, not a copy of them
    flat = np.ascontiguousarray(rows, dtype="<f4").reshape(-1).view(np.uint8)
    return flat.data, f"{rows.shape[0]},{rows.shape[1]}"


def is_octet(content_type: str) -> bool:
    """Whether a Content-Type header names application/octet-stream (media types ignore case)."""
    return content_type.split(";")[0].strip().lower() == OCTET


SEQUENCE_HEADER = "X-Embserve-Sequence"
ASCII_DIGITS = re.compile(r"[0-9]+")
"""What a number in a header may hold; str.isdigit also passes '²', which int() refuses."""


def octet_update(body: bytes, shape: str | None, with_rows: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Binary update body: n little-endian int64 keys, then (with rows) n × dim float32 rows;
    the shape header says "n,dim" (or "n" for deletes)."""
    want = 2 if with_rows else 1
    parts = (shape or "").split(",")
    if len(parts) != want or not all(ASCII_DIGITS.fullmatch(p.strip()) for p in parts):
        raise InvalidRequest(f"header {SHAPE_HEADER} must be {'n,dim' if with_rows else 'n'}, got {shape!r}")
    n = int(parts[0])
    dim = int(parts[1]) if with_rows else 0
    expected = n * 8 + n * dim * 4
    if len(body) != expected:
        raise InvalidRequest(f"body of {len(body)} bytes, but {SHAPE_HEADER} {shape!r} needs {expected}")
    keys = np.frombuffer(body, dtype="<i8", count=n)
    rows = reshaped(np.frombuffer(body, dtype="<f4", offset=n * 8), [n, dim], "rows") if with_rows else None
    return keys, rows


def _header_sequence(value: str | None) -> int | None:
    if value is None:
        return None
    if ASCII_DIGITS.fullmatch(value.strip()) is None:
        raise InvalidRequest(f"header {SEQUENCE_HEADER} must be a non-negative integer, got {value!r}")
    return int(value)


LOOKUP_PATH = re.compile(r"/v1/tables/([^/]+)/lookup")


async def read_asgi_body(receive: Any, service: EmbeddingService, arriving: bool = False) -> bytes | None:
    """An ASGI request's whole body, refused as soon as it passes the body limit (so a client
    cannot make the server hold more than the limit); None if the client went away first.
    `arriving`: read before admission, its bytes counted against max_arriving_body_bytes while
    it is read."""
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            service.check_body_size(size + len(chunk))
            if arriving:
                service.take_arriving(len(chunk))
            size += len(chunk)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)
    finally:
        if arriving:
            service.release_arriving(size)


class OctetLookupFastPath:
    """ASGI front of the FastAPI app: octet-stream lookups, the binary data plane, are answered
    here before routing, dependency solving and Request/Response objects, which cost more than
    gathering 256 rows. Same checks, same core call, same errors as the FastAPI route (which
    still documents the endpoint and serves JSON bodies); everything else passes through."""

    def __init__(self, app: FastAPI, service: EmbeddingService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        match = LOOKUP_PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        content_type = b""
        declared = b""
        if match is not None:
            for key, value in scope["headers"]:
                if key == b"content-type":
                    content_type = value
                elif key == b"content-length":
                    declared = value
        if match is None or not is_octet(content_type.decode("latin-1")):
            await self.app(scope, receive, send)
            return
        try:
            if declared.isdigit():  # bytes.isdigit is ASCII digits only
                self.service.check_body_size(int(declared))
            body = await read_asgi_body(receive, self.service)
            if body is None:
                self.service.client_disconnected(TRANSPORT)
                return
            payload_view, shape = await octet_lookup(self.service, match.group(1), body)
        except Exception as exc:
            if not isinstance(exc, EmbserveError):
                log.exception("unexpected error", exc_info=exc)
            await send_http_error(send, render_error(exc, self.service.settings.artifact_root))
        else:
            extra = ((b"x-embserve-shape", shape.encode()), (b"x-embserve-dtype", b"float32"))
            await self._send(send, 200, OCTET.encode(), payload_view, extra)

    @staticmethod
    async def _send(
        send: Any,
        status: int,
        content_type: bytes,
        body: bytes | memoryview,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


DATA_PLANE_PATH = re.compile(r"/v1/tables/([^/]+)/(lookup|search|score)|/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")
ADMIN_PATH = re.compile(r"/v1/tables/([^/]+)")
ADMIN_UPDATE_PATH = re.compile(r"/v1/tables/([^/]+)/(upsert|delete)")
ADMIN_UPDATE_OPERATIONS = {"upsert": "admin_upsert", "delete": "admin_delete_keys"}


def admitted_route(method: str, path: str) -> tuple[str, str | None] | None:
    """(operation, table) of a request that reads a body and runs under the concurrency limit
    (table None: a request of many tables); None for everything else (health, metrics,
    metadata), which never waits for a slot."""
    if method == "POST" and (match := DATA_PLANE_PATH.fullmatch(path)) is not None:
        if match.group(3) is not None:
            model = match.group(3)
            return "infer", oip.model_table(model)
        return match.group(2), match.group(1)
    if method == "POST" and path == "/v1/lookup":
        return "multi_lookup", None
    if method == "POST" and (match := ADMIN_UPDATE_PATH.fullmatch(path)) is not None:
        return ADMIN_UPDATE_OPERATIONS[match.group(2)], match.group(1)
    if method == "PUT" and (match := ADMIN_PATH.fullmatch(path)) is not None:
        return "admin_load", match.group(1)
    return None


class AdmissionFront:
    """Outermost ASGI layer of a request that reads a body: refused here from its headers alone
    while the concurrency limit is full (the 429 goes out before a byte of the body is read);
    else its body is read whole, holding no slot, and only then does it take one, so clients
    sending bodies slowly hold connections (capped, and closed after `body_timeout` of silence)
    and the bytes they sent (`max_arriving_body_bytes`), never the slots the work needs. Health
    and metrics pass straight through."""

    def __init__(self, app: Any, service: EmbeddingService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        route = admitted_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            taken = self.service.receive_body(TRANSPORT, *route)
        except EmbserveError as exc:
            await send_http_error(send, render_error(exc, self.service.settings.artifact_root))
            return

        async def send_noting_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                # what a request that ends before the core counts it is counted with
                taken.status = "ok" if message["status"] < 400 else str(message["status"])
            await send(message)

        with taken:
            try:
                replay = await self._receive_then_admit(scope, receive, send_noting_status, taken, route[1])
                if replay is None:
                    return
                await self.app(scope, replay, send_noting_status)
            except asyncio.CancelledError:
                if not self.service.draining:
                    raise
                # the shutdown's grace is over and uvicorn cancels what still runs (a body that
                # never finished arriving, say): answered 503 here, where uvicorn would answer 500
                # and log a traceback; the request's task ends now either way
                if taken.status is None:
                    taken.status = "503"
                    stopped = NotReady("the server stopped before this request finished")
                    with contextlib.suppress(Exception):
                        await send_http_error(send, render_error(stopped, self.service.settings.artifact_root))

    async def _receive_then_admit(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any, taken: TakenIn, table: str | None
    ) -> Any:
        """Reads the body and takes the request's slot; -> the `receive` that hands the app the
        body read, or None when the request ended here (answered, or its client gone)."""
        service = self.service
        try:
            if taken.labels[1].startswith("admin_"):
                # before the body is read: a caller without the token makes the server take in nothing
                authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
                service.authorize(None if authorization is None else authorization.decode("latin-1"))
            declared = next((value for key, value in scope["headers"] if key == b"content-length"), b"")
            if declared.isdigit():  # bytes.isdigit is ASCII digits only
                service.check_body_size(int(declared))
            body = await read_asgi_body(receive, service, arriving=True)
            if body is None:
                service.client_disconnected(TRANSPORT)
                return None
            service.admit(taken, table)
        except EmbserveError as exc:
            await send_http_error(send, render_error(exc, service.settings.artifact_root))
            return None
        return body_then(body, receive)


def body_then(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that hands over a body already read whole, then the client's own messages
    (its disconnect, if it comes)."""
    delivered = False

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return dict(await receive())
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def create_asgi(service: EmbeddingService) -> AdmissionFront:
    """The HTTP server's application: admission, then the octet-stream fast path, then FastAPI."""
    return AdmissionFront(OctetLookupFastPath(create_app(service), service), service)


def error_response(status: int, message: str) -> JSONResponse:
    """An error the HTTP layer finds itself (validation, routing); typed errors go through render_error."""
    return JSONResponse({"error": message}, status_code=status)


def typed_error_response(exc: BaseException, service: EmbeddingService) -> Response:
    error = render_error(exc, service.settings.artifact_root)
    return Response(error.json_body(), status_code=error.http_status, media_type="application/json")


def create_app(service: EmbeddingService) -> FastAPI:
    app = FastAPI(
        title="embserve",
        version=__version__,
        description="Compressed embedding tables: lookup, search and scoring over HTTP.",
    )

    @app.exception_handler(EmbserveError)
    async def _typed(_: Request, exc: EmbserveError) -> Response:
        return typed_error_response(exc, service)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        service.client_disconnected(TRANSPORT)
        return Response(status_code=400)  # nobody reads it: uvicorn drops a response to a closed connection

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return typed_error_response(exc, service)

    # ---- native API ---------------------------------------------------------------------------
    # registered first: routes are matched in order, and these carry the traffic
    @app.get("/v1/tables", tags=["tables"])
    async def list_tables() -> Response:
        return FastJSON({"tables": service.list_tables()})

    @app.get("/v1/tables/{name}", tags=["tables"])
    async def describe_table(name: str) -> Response:
        return FastJSON(service.describe_entry(service.get(name)))

    @app.post("/v1/tables/{name}/lookup", tags=["tables"], openapi_extra=_body_doc(LookupBody, octet=True))
    async def lookup(name: str, request: Request) -> Response:
        body = await read_body(service, request)
        if is_octet(request.headers.get("content-type", "")):
            payload_view, shape = await octet_lookup(service, name, body)
            return Response(
                payload_view, media_type=OCTET, headers={SHAPE_HEADER: shape, "X-Embserve-Dtype": "float32"}
            )
        payload = await json_request_fields(service, body, LookupRequest)
        rows = await service.lookup(TRANSPORT, lookup_request(name, payload))
        return FastJSON({"embeddings": rows, "shape": list(rows.shape)})

    @app.post("/v1/lookup", tags=["tables"])
    async def multi_lookup(request: Request) -> Response:
        """Many tables in one request (JSON, jagged JSON, or binary with X-Embserve-Tables)."""
        body = await read_body(service, request)
        if is_octet(request.headers.get("content-type", "")):
            typed = multi_rest.parse_binary(request.headers.get(multi_rest.TABLES_HEADER), body)
            result = await service.multi_lookup(TRANSPORT, typed)
            payload, described = multi_rest.render_binary(result, typed.concat)
            return Response(payload, media_type=OCTET, headers={multi_rest.RESULTS_HEADER: described})
        typed = multi_rest.parse_json(await parse_json_object(service, body))
        result = await service.multi_lookup(TRANSPORT, typed)
        return FastJSON(multi_rest.render_json(result, typed.concat))

    @app.post("/v1/tables/{name}/search", tags=["tables"], openapi_extra=_body_doc(SearchBody))
    async def search(name: str, request: Request) -> Response:
        payload = await json_request_fields(service, await read_body(service, request), SearchRequest)
        ids, scores = await service.search(TRANSPORT, search_request(name, payload))
        return FastJSON({"ids": ids, "scores": scores})

    @app.post("/v1/tables/{name}/score", tags=["tables"], openapi_extra=_body_doc(ScoreBody))
    async def score(name: str, request: Request) -> Response:
        payload = await json_request_fields(service, await read_body(service, request), ScoreRequest)
        scores = await service.score(TRANSPORT, score_request(name, payload))
        return FastJSON({"scores": scores})

    # ---- health and metrics -------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        ready = service.ready
        body: dict[str, Any] = {"ready": ready, "draining": service.draining}
        if service.sync is not None:  # Redis trouble degrades, never unreadies: tables still serve
            body.update(service.sync.health())
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---- admin --------------------------------------------------------------------------------
    @app.put("/v1/tables/{name}", tags=["admin"], openapi_extra=_body_doc(LoadBody))
    async def load(name: str, request: Request) -> Response:
        auth = request.headers.get("authorization")
        service.authorize(auth)  # before the body is read: an unauthorized caller learns nothing of the format
        payload = await json_request_fields(service, await read_body(service, request), LoadRequest)
        info = await service.admin_load(TRANSPORT, auth, load_request(name, payload))
        return FastJSON(info)

    @app.post("/v1/tables/{name}/upsert", tags=["admin"], openapi_extra=_body_doc(UpsertBody, octet=True))
    async def upsert(name: str, request: Request) -> Response:
        auth = request.headers.get("authorization")
        service.authorize(auth)  # before the body is read: an unauthorized caller learns nothing of the format
        body = await read_body(service, request)
        if is_octet(request.headers.get("content-type", "")):
            keys, rows = octet_update(body, request.headers.get(SHAPE_HEADER), with_rows=True)
            sequence = _header_sequence(request.headers.get(SEQUENCE_HEADER))
            return FastJSON(await service.admin_upsert(TRANSPORT, auth, UpsertRequest(name, keys, rows, sequence)))
        info = await service.admin_upsert(
            TRANSPORT, auth, upsert_request(name, await json_request_fields(service, body, UpsertRequest))
        )
        return FastJSON(info)

    @app.post("/v1/tables/{name}/delete", tags=["admin"], openapi_extra=_body_doc(DeleteKeysBody, octet=True))
    async def delete_keys(name: str, request: Request) -> Response:
        auth = request.headers.get("authorization")
        service.authorize(auth)
        body = await read_body(service, request)
        if is_octet(request.headers.get("content-type", "")):
            keys, _ = octet_update(body, request.headers.get(SHAPE_HEADER), with_rows=False)
            sequence = _header_sequence(request.headers.get(SEQUENCE_HEADER))
            return FastJSON(await service.admin_delete_keys(TRANSPORT, auth, DeleteKeysRequest(name, keys, sequence)))
        info = await service.admin_delete_keys(
            TRANSPORT, auth, delete_keys_request(name, await json_request_fields(service, body, DeleteKeysRequest))
        )
        return FastJSON(info)

    @app.delete("/v1/tables/{name}", tags=["admin"])
    async def unload(name: str, request: Request) -> Response:
        return FastJSON(await service.admin_delete(TRANSPORT, request.headers.get("authorization"), name))

    # ---- Open Inference Protocol --------------------------------------------------------------
    @app.get("/v2", tags=["inference"])
    async def server_metadata() -> dict[str, Any]:
        return oip.server_metadata()

    @app.get("/v2/health/live", tags=["inference"])
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["inference"])
    async def server_ready() -> Response:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{model}", tags=["inference"])
    @app.get("/v2/models/{model}/versions/{version}", tags=["inference"])
    async def model_metadata(model: str, version: str | None = None) -> Response:
        resolved = service.resolve_model(model, version)
        return FastJSON(oip.model_metadata(resolved))

    @app.get("/v2/models/{model}/ready", tags=["inference"])
    @app.get("/v2/models/{model}/versions/{version}/ready", tags=["inference"])
    async def model_ready(model: str, version: str | None = None) -> Response:
        service.resolve_model(model, version)  # 404 for an unknown model or version
        return JSONResponse({"name": model, "ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{model}/config", tags=["inference"])
    @app.get("/v2/models/{model}/versions/{version}/config", tags=["inference"])
    async def model_config(model: str, version: str | None = None) -> Response:
        resolved = service.resolve_model(model, version)
        return FastJSON(oip.model_config(resolved))

    @app.post("/v2/models/{model}/infer", tags=["inference"])
    @app.post("/v2/models/{model}/versions/{version}/infer", tags=["inference"])
    async def model_infer(model: str, request: Request, version: str | None = None) -> Response:
        body = await read_body(service, request)
        return await _infer_http(service, model, version, body, request.headers.get(OIP_HEADER_LENGTH))

    return app


def _binary_flag(value: Any, default: bool, what: str) -> bool:
    return default if value is None else check_flag(value, what)


async def _infer_http(
    service: EmbeddingService, model: str, version: str | None, body: bytes, header_length: str | None
) -> Response:
    """One OIP infer over HTTP, with Triton's binary tensor extension on inputs and outputs."""
    if header_length is not None:
        if ASCII_DIGITS.fullmatch(header_length) is None or int(header_length) > len(body):
            raise InvalidRequest(f"{OIP_HEADER_LENGTH} must be an integer no larger than the body")
        split = int(header_length)
    else:
        split = len(body)
    request = await parse_json_object(service, body[:split])
    binary = memoryview(body)[split:]
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list")
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("'parameters' must be an object")
    params = dict(params)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest("each input must be an object with a name")
        name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
        oip.refuse_repeated_input(name, inputs)
        if not isinstance(datatype, str):
            raise InvalidRequest(f"input {name!r}: datatype must be a string")
        item_params = item.get("parameters") or {}
        if not isinstance(item_params, dict):
            raise InvalidRequest(f"input {name!r}: parameters must be an object")
        for key, value in item_params.items():
            if key != "binary_data_size":
                params.setdefault(key, value)
        size = item_params.get("binary_data_size")
        if size is not None and "data" in item:
            # which one was meant is not ours to guess (gRPC refuses contents beside raw contents)
            raise InvalidRequest(f"input {name!r} has both data and binary_data_size; send one")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input {name!r}: binary_data_size {size!r} does not fit the binary data sent")
            inputs[name] = oip.tensor_from_bytes(name, datatype, shape, bytes(binary[offset : offset + size]))
            offset += size
        else:
            if "data" not in item:
                raise InvalidRequest(f"input {name!r} has neither data nor binary_data_size")
            inputs[name] = oip.tensor_from_list(name, datatype, shape, item["data"])
    if offset != len(binary):
        raise InvalidRequest(
            f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size, which must sum to "
            f"the {len(binary)} bytes after the {OIP_HEADER_LENGTH} header's JSON"
        )
    all_binary = _binary_flag(params.get("binary_data_output"), False, "'binary_data_output'")
    requested: list[str] | None = None
    binary_out: set[str] = set()
    raw_outputs = request.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise InvalidRequest("'outputs' must be a list of objects with a name")
        requested = [o["name"] for o in raw_outputs]
        for o in raw_outputs:
            output_params = o.get("parameters") or {}
            if not isinstance(output_params, dict):
                raise InvalidRequest(f"output {o['name']!r}: parameters must be an object")
            if _binary_flag(output_params.get("binary_data"), all_binary, f"output {o['name']!r}: 'binary_data'"):
                binary_out.add(o["name"])
    typed = InferRequest(model, inputs, params, version or None, requested)
    result = await service.infer(TRANSPORT, typed)
    results = result.outputs
    if not requested and all_binary:  # no outputs named, or an empty list: every output
        binary_out = {name for name, _ in results}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, arr in results:
        entry: dict[str, Any] = {"name": name, "datatype": oip.DATATYPE_OF[arr.dtype], "shape": list(arr.shape)}
        if name in binary_out:
            data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = arr.reshape(-1)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": result.model, "model_version": result.version, "outputs": outputs}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    header = orjson.dumps(answer, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type=OCTET,
        headers={OIP_HEADER_LENGTH: str(len(header))},
    )


__all__ = ["create_app"]
