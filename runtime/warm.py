"""Compile (and cache) every kernel the server can call, for every codec.

Run at image build time with NUMBA_CACHE_DIR and NUMBA_CPU_NAME=generic set, so containers start
with a cache that matches any x86-64 CPU. Tables are saved and loaded back first: memory-mapped
arrays are read-only, which numba compiles separately from writable ones.

    python -m runtime.warm
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.table import compress, load_table

CONFIGS: list[dict[str, object]] = [
    {"codec": "fp32"},
    {"codec": "fp16"},
    {"codec": "int8"},
    {"codec": "int4"},
    {"codec": "int2"},
    {"codec": "binary"},
    {"codec": "binary", "rotate": True, "rerank": "int8"},
    {"codec": "pq", "subspaces": 8, "bits": 8, "iterations": 2, "rerank": "int8"},
    {"codec": "pq", "subspaces": 8, "bits": 4, "iterations": 2, "opq": True, "opq_iterations": 1},
]


def warm_all() -> float:
    start = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((600, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(CONFIGS):
            options = dict(config)
            codec = str(options.pop("codec"))
            compress(x, codec, **options).save(Path(tmp) / str(i))  # type: ignore[arg-type]
            load_table(Path(tmp) / str(i)).warmup()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba kernels compiled and cached in {warm_all():.1f} s", file=sys.stderr)
