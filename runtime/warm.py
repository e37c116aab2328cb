"""Compile (and cache) every kernel the server can call, for every codec.

Run at image build time for fixed targets, so containers start with a cache that matches any CPU
of a level: the Dockerfile runs `--levels`, which builds one cache for x86-64-v3 (AVX2, F16C and
FMA) and, where the build host has them, one for AVX-512 server cores (`runtime.kernels.targets`);
a container takes the best one its CPU runs. With NUMBA_CPU_NAME and NUMBA_CACHE_DIR set by hand
it builds that one target: NUMBA_CPU_NAME=generic works on any x86-64 CPU, but without F16C the
half-float conversions fall back to arithmetic, slower in fp16 and row-wise kernels.
Tables are saved and loaded back first, as a server loads them (`example_tables`).

    python -m runtime.warm                   # for NUMBA_CPU_NAME / NUMBA_CACHE_DIR as set
    python -m runtime.warm --levels DIR [LEVEL ...]   # a cache a level in DIR/<level>
                                                      # (runtime.kernels.targets; all by default)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.codecs import CODECS, example_configs
from runtime.table import Table, compress, load_table

# every codec and each of its option choices (derived from the codecs' declared options), and
# a rerank pairing for each codec that ranks by its own metric or scans by ADC
CONFIGS: list[dict[str, Any]] = [
    *example_configs(),
    *[{"codec": name, "rerank": "int8"} for name, cls in CODECS.items() if cls.rank_metric or name == "pq"],
]


def example_tables(directory: Path) -> Iterator[Table]:
    """A table of every configuration (CONFIGS), then a keyed two-tier table with a delta (the
    hash map, projection and merge paths), each saved under directory and loaded back as a
    server loads it: a table's keys and tier arrays are read-only memory maps then, which numba
    compiles apart from writable ones (its codecs' arrays are read-only either way)."""
    x = np.random.default_rng(0).standard_normal((600, 64)).astype(np.float32)
    for i, config in enumerate(CONFIGS):
        options = dict(config)
        codec = str(options.pop("codec"))
        compress(x, codec, **options).save(directory / str(i))
        yield load_table(directory / str(i))
    tiers: list[dict[str, Any]] = [
        {"rows": {"start": 0, "stop": 100}, "codec": "int8"},
        {"rows": {"start": 100, "stop": 600}, "codec": "pq", "dim": 32, "subspaces": 8, "iterations": 2},
    ]
    compress(x, tiers=tiers, keys=np.arange(600, dtype=np.int64) * 7).save(directory / "keyed")
    keyed = load_table(directory / "keyed")
    keyed.upsert([7, 700], x[:2])
    yield keyed


def warm_all() -> float:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for table in example_tables(Path(tmp)):
            table.warmup()
    return time.perf_counter() - start


def warm_levels(caches: Path, names: list[str] | None = None) -> list[str]:
    """Build caches/<level> for each level of `targets.LEVELS` (or those named) this CPU can run
    (warming runs the kernels, so a level the build host lacks is skipped with a note); returns
    the levels built."""
    from runtime.kernels.targets import CACHES_VARIABLE, LEVELS, host_features, level_environment

    known = [level.name for level in LEVELS]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise SystemExit(f"unknown level {', '.join(unknown)}; the levels are {', '.join(known)}")
    host = host_features()
    built = []
    for level in LEVELS:
        if names and level.name not in names:
            continue
        if not level.runs_on(host):
            missing = [name for name in level.features if not host.get(name, False)]
            print(f"{level.name}: skipped, this CPU lacks {', '.join(missing)}", file=sys.stderr)
            continue
        env = {key: value for key, value in os.environ.items() if key != CACHES_VARIABLE}
        env.update(level_environment(level, caches))
        # a process of its own: numba reads the target once, before its first compile
        subprocess.run([sys.executable, "-m", "runtime.warm"], env=env, check=True)
        print(f"{level.name}: cached in {caches / level.name}", file=sys.stderr)
        built.append(level.name)
    return built


if __name__ == "__main__":
    if sys.argv[1:2] == ["--levels"] and len(sys.argv) >= 3:
        if not warm_levels(Path(sys.argv[2]), sys.argv[3:]):
            sys.exit("no level asked for runs on this CPU")
    elif len(sys.argv) > 1:
        sys.exit("usage: python -m runtime.warm [--levels DIR [LEVEL ...]]")
    else:
        print(f"numba kernels compiled and cached in {warm_all():.1f} s", file=sys.stderr)
