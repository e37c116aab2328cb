"""Compile (and cache) every kernel the server can call, for every codec.

Run at image build time with NUMBA_CACHE_DIR and a fixed target set, so containers start with a
cache that matches any CPU of that level: the Dockerfile sets NUMBA_CPU_NAME=x86-64-v3 and that
level's features (F16C and FMA among them). NUMBA_CPU_NAME=generic works on any x86-64 CPU, but
without F16C the half-float conversions fall back to arithmetic, slower in fp16 and row-wise kernels.
Tables are saved and loaded back first: memory-mapped arrays are read-only, which numba compiles
separately from writable ones.

    python -m runtime.warm
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.codecs import CODECS, example_configs
from runtime.table import compress, load_table

# every codec and each of its option choices (derived from the codecs' declared options), and
# a rerank pairing for each codec that ranks by its own metric or scans by ADC
CONFIGS: list[dict[str, Any]] = [
    *example_configs(),
    *[{"codec": name, "rerank": "int8"} for name, cls in CODECS.items() if cls.rank_metric or name == "pq"],
]


def warm_all() -> float:
    start = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((600, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(CONFIGS):
            options = dict(config)
            codec = str(options.pop("codec"))
            compress(x, codec, **options).save(Path(tmp) / str(i))
            load_table(Path(tmp) / str(i)).warmup()
        # a keyed two-tier table with a delta: the hash map, projection and merge paths
        tiers: list[dict[str, Any]] = [
            {"rows": {"start": 0, "stop": 100}, "codec": "int8"},
            {"rows": {"start": 100, "stop": 600}, "codec": "pq", "dim": 32, "subspaces": 8, "iterations": 2},
        ]
        keyed = compress(x, tiers=tiers, keys=np.arange(600, dtype=np.int64) * 7)
        keyed.save(Path(tmp) / "keyed")
        table = load_table(Path(tmp) / "keyed")
        table.upsert([7, 700], x[:2])
        table.warmup()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba kernels compiled and cached in {warm_all():.1f} s", file=sys.stderr)
