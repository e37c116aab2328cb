"""embserve runtime: compressed embedding tables as a library.

import runtime
table = runtime.compress(x, codec="pq", subspaces=16, bits=8, rerank="int8")
table = runtime.compress_to_budget(x, "512MiB", freq=lookups)   # runtime.plan(...) to only plan
table.save("tables/items/v1"); table = runtime.load_table("tables/items/v1")
ids, scores = table.search(queries, k=10, metric="ip", oversample=10)
"""

from __future__ import annotations

import os

import numba

# first: where EMBSERVE_NUMBA_CACHES is set this picks numba's target and cache, and numba then
# re-reads its variables, which would undo the threading layer set below
import runtime.kernels  # noqa: F401

# Kernels are called from several threads at once (the service's executor); numba's default
# workqueue layer aborts on concurrent parallel regions, so ask for a thread-safe layer (OpenMP
# or TBB) unless the user chose one.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]

from runtime.codecs import CODECS, Codec, codec_class
from runtime.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactIncompatible,
    ArtifactNotFound,
    DeltaFull,
    DimensionMismatch,
    EmbserveError,
    IdOutOfRange,
    InvalidRequest,
    KeyNotFound,
    UnknownCodec,
    UnsupportedMetric,
)
from runtime.kernels import cpu  # noqa: F401  (sets the vector width before any kernel runs)
from runtime.planner import Plan, compress_to_budget, parse_size, plan
from runtime.table import Table, __version__, compress, load_table

__all__ = [
    "CODECS",
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactIncompatible",
    "ArtifactNotFound",
    "Codec",
    "DeltaFull",
    "DimensionMismatch",
    "EmbserveError",
    "IdOutOfRange",
    "InvalidRequest",
    "KeyNotFound",
    "Plan",
    "Table",
    "UnknownCodec",
    "UnsupportedMetric",
    "__version__",
    "codec_class",
    "compress",
    "compress_to_budget",
    "load_table",
    "parse_size",
    "plan",
]
