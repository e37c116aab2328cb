"""Tables v2 rows of benchmarks/perf.py: keyed against dense lookups, a two-tier table's search
against a one-tier table of the same rows, upsert throughput, and lookup latency while a writer
upserts 10k rows/s.

    python -m benchmarks.perf --sections tables
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import runtime
from benchmarks.perf import Config, Row, alternate, alternate_pool, set_threads

HOT_SHARE = 0.05
UPDATE_RATE = 10_000
"""Rows a second the background writer upserts while lookups are timed."""
LOOKUP_REPS = 101
"""Timed calls of the keyed and the dense lookup (at least; --reps may ask more)."""


def _p99(fn: Callable[[int], object], reps: int) -> float:
    """99th percentile seconds of `reps` calls of fn(i)."""
    times = []
    for i in range(reps):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 99))


def _lookup(table: runtime.Table, batches: list[np.ndarray], i: int) -> np.ndarray:
    return table.lookup(batches[i])


def bench_tables(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    rng = np.random.default_rng(7)
    n = x.shape[0]
    keys = rng.permutation(n).astype(np.int64) * 1_000_003 - (1 << 40)
    dense = runtime.compress(x, "int8")
    keyed = runtime.compress(x, "int8", keys=keys)
    # a lookup takes ~0.1 ms: many timed calls for a steady median, each on a batch of its own (and
    # new batches for each thread count) so every one meets a cold cache, as the other rows' do
    lookup_reps = cfg.reps if cfg.smoke else max(cfg.reps, LOOKUP_REPS)
    row_batches = {t: [rng.integers(0, n, 1024) for _ in range(alternate_pool(lookup_reps))] for t in cfg.threads}
    hot = max(1, int(n * HOT_SHARE))
    pq: dict[str, Any] = {"subspaces": 16, "bits": 8, "iterations": 4 if cfg.smoke else 10}
    one_tier = runtime.compress(x, "pq", **pq)
    two_tier = runtime.compress(
        x, tiers=[{"rows": {"start": 0, "stop": hot}, "codec": "int8"}, {"rows": {"start": hot}, "codec": "pq", **pq}]
    )
    # the same split, both tiers in the one-tier table's codec: what tiering itself costs
    split = runtime.compress(
        x,
        tiers=[{"rows": {"start": 0, "stop": hot}, "codec": "pq", **pq}, {"rows": {"start": hot}, "codec": "pq", **pq}],
    )
    queries = [x[rng.integers(0, n, 16)] + 0.1 for _ in range(cfg.pool)]
    for threads in cfg.threads:
        set_threads(threads)
        batches = row_batches[threads]
        key_batches = [keys[b] for b in batches]
        a, b = alternate(
            [partial(_lookup, keyed, key_batches), partial(_lookup, dense, batches)], lookup_reps, len(batches)
        )
        rows_out.append(
            Row("tables", "keyed lookup int8, B=1024", threads, a * 1e6, "dense lookup", b * 1e6, "µs", target=1.3)
        )
        a, b = alternate(
            [lambda i: two_tier.search(queries[i], cfg.k), lambda i: one_tier.search(queries[i], cfg.k)],
            cfg.reps,
            cfg.pool,
        )
        rows_out.append(
            Row(
                "tables",
                f"two-tier search (int8 {HOT_SHARE:.0%} + pq M=16), 16 queries, top-{cfg.k}",
                threads,
                a * 1e3,
                "one tier pq M=16",
                b * 1e3,
                "ms",
                target=1.2,
            )
        )
        a, b = alternate(
            [lambda i: split.search(queries[i], cfg.k), lambda i: one_tier.search(queries[i], cfg.k)],
            cfg.reps,
            cfg.pool,
        )
        rows_out.append(
            Row(
                "tables",
                f"two-tier search (pq M=16 {HOT_SHARE:.0%} + pq M=16), 16 queries, top-{cfg.k}",
                threads,
                a * 1e3,
                "one tier pq M=16",
                b * 1e3,
                "ms",
                target=1.2,
            )
        )
    set_threads(max(cfg.threads))
    bench_updates(cfg, x, keys, rows_out)


def bench_updates(cfg: Config, x: np.ndarray, keys: np.ndarray, rows_out: list[Row]) -> None:
    rng = np.random.default_rng(8)
    n = x.shape[0]
    table = runtime.compress(x, "int8", keys=keys)
    batch = 1000
    total = 20_000 if cfg.smoke else 200_000
    pick = [rng.choice(n, batch, replace=False) for _ in range(16)]
    values = [x[p] * 0.5 for p in pick]
    table.upsert(keys[pick[0]], values[0])  # compile
    start = time.perf_counter()
    for i in range(total // batch):
        table.upsert(keys[pick[i % 16]], values[i % 16])
    rate = total / (time.perf_counter() - start)
    rows_out.append(
        Row(
            "tables",
            f"upsert throughput, int8 keyed, batches of {batch}",
            max(cfg.threads),
            rate,
            unit="rows/s",
            higher_is_better=True,
            extra={"delta_rows": table.delta_rows},
        )
    )
    # lookup p99 with and without a writer upserting UPDATE_RATE rows/s in batches of 100
    # as many batches as `alternate` reads, and the 16 the p99 loops cycle through
    lookups = [keys[rng.integers(0, n, 1024)] for _ in range(max(16, alternate_pool(cfg.reps)))]
    served = runtime.compress(x, "int8", keys=keys)
    # what a delta costs a read: the table just upserted into against a fresh copy of it
    with_delta, without = alternate(
        [lambda i: table.lookup(lookups[i]), lambda i: served.lookup(lookups[i])], cfg.reps, len(lookups)
    )
    rows_out.append(
        Row(
            "tables",
            f"keyed lookup int8, B=1024, {table.delta_rows:,} rows in the delta",
            max(cfg.threads),
            with_delta * 1e6,
            "no delta",
            without * 1e6,
            "µs",
        )
    )
    reps = 200 if cfg.smoke else 3000
    quiet = _p99(lambda i: served.lookup(lookups[i % 16]), reps)
    stop = threading.Event()

    def writer() -> None:
        step = 100
        i = 0
        while not stop.is_set():
            began = time.perf_counter()
            p = pick[i % 16][:step]
            served.upsert(keys[p], values[i % 16][:step])
            i += 1
            time.sleep(max(0.0, step / UPDATE_RATE - (time.perf_counter() - began)))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        busy = _p99(lambda i: served.lookup(lookups[i % 16]), reps)
    finally:
        stop.set()
        thread.join()
    rows_out.append(
        Row(
            "tables",
            f"lookup p99 B=1024 while upserting {UPDATE_RATE} rows/s",
            max(cfg.threads),
            busy * 1e6,
            "no writer",
            quiet * 1e6,
            "µs",
            extra={"delta_slots": served.delta_slots},
        )
    )
