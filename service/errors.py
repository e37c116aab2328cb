"""The one place a failed request is rendered for a client: the table mapping typed errors to an
HTTP status and a gRPC code, and the public text of the error. Every transport (REST, its ASGI
fronts, the worker relay, gRPC, the Open Inference Protocol on both) calls `render_error` and only
writes the result out in its own framing.

Lookup walks the exception's MRO, so a subclass inherits its parent's mapping unless listed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson

from runtime.errors import (
    ArtifactError,
    ArtifactNotFound,
    DeltaFull,
    EmbserveError,
    Forbidden,
    IdOutOfRange,
    InvalidRequest,
    KeyNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    TableNotFound,
    Unauthorized,
)


class NotAppliedEverywhere(EmbserveError):
    """An admin change one worker applied that a sibling worker did not (service-level: only a
    server of several worker processes relays changes)."""


class TableReplaced(EmbserveError):
    """An update applied to a table that another version replaced before the update returned: it
    is in no table served now, and the caller should send it again."""


ERROR_STATUS: dict[type[BaseException], tuple[int, grpc.StatusCode]] = {
    NotAppliedEverywhere: (502, grpc.StatusCode.UNAVAILABLE),
    TableReplaced: (409, grpc.StatusCode.ABORTED),
    TableNotFound: (404, grpc.StatusCode.NOT_FOUND),
    KeyNotFound: (404, grpc.StatusCode.NOT_FOUND),
    DeltaFull: (409, grpc.StatusCode.RESOURCE_EXHAUSTED),
    IdOutOfRange: (400, grpc.StatusCode.OUT_OF_RANGE),
    PayloadTooLarge: (413, grpc.StatusCode.INVALID_ARGUMENT),
    InvalidRequest: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ArtifactNotFound: (404, grpc.StatusCode.NOT_FOUND),
    ArtifactError: (422, grpc.StatusCode.FAILED_PRECONDITION),
    Overloaded: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    NotReady: (503, grpc.StatusCode.UNAVAILABLE),
    Unauthorized: (401, grpc.StatusCode.UNAUTHENTICATED),
    Forbidden: (403, grpc.StatusCode.PERMISSION_DENIED),
    EmbserveError: (500, grpc.StatusCode.INTERNAL),
}


def status_for(exc: BaseException) -> tuple[int, grpc.StatusCode]:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500, grpc.StatusCode.INTERNAL


def status_label(exc: BaseException | None) -> str:
    """A bounded metric label for an outcome: "ok" or the HTTP status class of the error."""
    return "ok" if exc is None else str(status_for(exc)[0])


MAX_ECHO = 64
"""Characters of one word of an error message (a name, a value, a list the client sent) shown back."""
MAX_MESSAGE = 512
LONG_WORD = re.compile(r"\S{" + str(MAX_ECHO + 1) + ",}")


def public_message(exc: BaseException, artifact_root: Path | None) -> str:
    """The text of a typed error as a client may see it, the one place both transports render it:
    paths below the artifact root are shown relative to it (the server's layout stays private),
    and input echoed back is cut short (a 60 MB name must not come back, nor overflow gRPC's
    metadata limit): each word to MAX_ECHO characters, the whole to MAX_MESSAGE."""
    text = str(exc)
    if artifact_root is not None:
        # the longer first (the resolved root holds the relative one), and only where a path
        # starts: a relative root "tables" must not be cut out of "/srv/tables/users/..."
        for root in sorted({str(Path(artifact_root)), str(Path(artifact_root).resolve())}, key=len, reverse=True):
            text = re.sub(r"(?<![\w.~/-])" + re.escape(root.rstrip("/") + "/"), "", text)
    text = LONG_WORD.sub(lambda m: f"{m.group()[:MAX_ECHO]}…({len(m.group())} chars)", text)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}…({len(text)} chars)"
    return text


@dataclass(frozen=True)
class PublicError:
    """What a client is told about a failed request, on whichever transport carries it."""

    http_status: int
    grpc_code: grpc.StatusCode
    message: str

    def json_body(self) -> bytes:
        """The HTTP body: `{"error": message}`."""
        return orjson.dumps({"error": self.message})


INTERNAL_ERROR = PublicError(500, grpc.StatusCode.INTERNAL, "internal server error")
"""An untyped exception is a bug: its text stays in the server log, the client gets this."""


def render_error(exc: BaseException, artifact_root: Path | None) -> PublicError:
    """A typed error -> its statuses and public message; anything else -> INTERNAL_ERROR (the
    caller logs it)."""
    if not isinstance(exc, EmbserveError):
        return INTERNAL_ERROR
    http_status, grpc_code = status_for(exc)
    return PublicError(http_status, grpc_code, public_message(exc, artifact_root))


async def send_http_error(send: Any, error: PublicError) -> None:
    """Answer an ASGI request with `error` (for the ASGI layers in front of the FastAPI app)."""
    body = error.json_body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def not_applied_everywhere(failures: list[str]) -> NotAppliedEverywhere:
    return NotAppliedEverywhere("applied by this worker but not by every worker: " + "; ".join(failures))
