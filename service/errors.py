"""The one table mapping typed errors to an HTTP status and a gRPC code; both transports read it.

Lookup walks the exception's MRO, so a subclass inherits its parent's mapping unless listed."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

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

ERROR_STATUS: dict[type[BaseException], tuple[int, grpc.StatusCode]] = {
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
        for root in {str(Path(artifact_root)), str(Path(artifact_root).resolve())}:
            text = text.replace(root.rstrip("/") + "/", "")
    text = LONG_WORD.sub(lambda m: f"{m.group()[:MAX_ECHO]}…({len(m.group())} chars)", text)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}…({len(text)} chars)"
    return text
