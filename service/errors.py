"""The one table mapping typed errors to an HTTP status and a gRPC code; both transports read it.

Lookup walks the exception's MRO, so a subclass inherits its parent's mapping unless listed."""

from __future__ import annotations

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
