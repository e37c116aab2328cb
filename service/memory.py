"""Give freed heap memory back to the operating system after very large requests.

A 60 MB gRPC message arrives as many small buffers; once it is parsed and freed, glibc keeps those
pages on its free lists (per-thread arenas are trimmed only from their top), so RSS stays up to
~200 MB above where it was even though nothing is alive. `malloc_trim(0)` releases them; it is
glibc-only, and elsewhere this is a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("embserve")
LARGE_REQUEST_BYTES = 8 << 20
"""Requests at least this large are followed by a trim (a trim costs about a millisecond)."""


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _find_trim()


def release_free_heap() -> None:
    """Return free heap pages to the OS (ctypes drops the GIL for the call); blocking, ~ms."""
    if _TRIM is not None:
        _TRIM(0)


__all__ = ["LARGE_REQUEST_BYTES", "release_free_heap"]
