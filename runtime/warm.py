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
from runtime.errors import InvalidRequest
from runtime.table import Table, compress, load_table

# every codec and each of its option choices (derived from the codecs' declared options), and
# a rerank pairing for each codec that ranks by its own metric or scans by ADC
CONFIGS: list[dict[str, Any]] = [
    *example_configs(),
    *[{"codec": name, "rerank": "int8"} for name, cls in CODECS.items() if cls.rank_metric or name == "pq"],
]


def example_tables(directory: Path) -> Iterator[Table]:
    """A table of every configuration (CONFIGS), then a keyed two-tier table with a delta (the
    hash map, projection and merge paths) and a keyed int8 table, each saved under directory and
    loaded back as a server loads it: a table's keys and tier arrays are read-only memory maps
    then, which numba compiles apart from writable ones (its codecs' arrays are read-only either
    way)."""
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
    # a keyed one-tier table of row-wise codes probes and gathers its keys in one kernel
    compress(x, "int8", keys=np.arange(600, dtype=np.int64) * 7).save(directory / "keyed-int8")
    yield load_table(directory / "keyed-int8")


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
        raise InvalidRequest(f"unknown level {', '.join(unknown)}; the levels are {', '.join(known)}")
    host = host_features()
    asked = [level for level in LEVELS if not names or level.name in names]
    chosen = [level for level in asked if level.runs_on(host)]
    # numba writes no cache where it cannot and says nothing: checked now, not minutes of
    # compiling later with a "cached in" that is not true
    for directory in [caches, *(caches / level.name for level in chosen)]:
        _check_cache_directory(directory)
    for level in asked:
        if level not in chosen:
            missing = [name for name in level.features if not host.get(name, False)]
            print(f"{level.name}: skipped, this CPU lacks {', '.join(missing)}", file=sys.stderr)
    built = []
    for level in chosen:
        env = {key: value for key, value in os.environ.items() if key != CACHES_VARIABLE}
        env.update(level_environment(level, caches))
        # a process of its own: numba reads the target once, before its first compile
        subprocess.run([sys.executable, "-m", "runtime.warm"], env=env, check=True)
        print(f"{level.name}: cached in {caches / level.name}", file=sys.stderr)
        built.append(level.name)
    return built


def _check_cache_directory(directory: Path) -> None:
    """Make `directory` if it is not there; refuse it unless it is a directory files can be made in."""
    from runtime.kernels.targets import writable

    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"cache directory {str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot make cache directory {str(directory)!r}: {exc.strerror or exc}") from None
    if not writable(directory):
        raise InvalidRequest(f"cache directory {str(directory)!r} is not writable")


def main(argv: list[str]) -> int:
    """Exit status 2 for a usage or input error, as the embserve commands."""
    if argv[:1] == ["--levels"] and len(argv) >= 2:
        try:
            built = warm_levels(Path(argv[1]), argv[2:])
        except InvalidRequest as exc:
            print(f"runtime.warm: {exc}", file=sys.stderr)
            return 2
        if not built:
            print("runtime.warm: no level asked for runs on this CPU", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python -m runtime.warm [--levels DIR [LEVEL ...]]", file=sys.stderr)
        return 2
    print(f"numba kernels compiled and cached in {warm_all():.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
