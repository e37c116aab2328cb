"""Requests of every kind a server sends a table, for the checks that a warmed table (or a
container's prebuilt kernel cache) leaves nothing for them to compile. numpy, numba and runtime
only: it also runs in processes that stand for a container starting."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba.core.dispatcher import Dispatcher

import runtime
import runtime.kernels

ROOT = Path(__file__).resolve().parents[1]


def kernel_dispatchers() -> Iterator[tuple[str, Dispatcher]]:
    """Every numba kernel of `runtime.kernels`, as ("module.name", its dispatcher)."""
    for info in pkgutil.iter_modules(runtime.kernels.__path__):
        module = importlib.import_module(f"runtime.kernels.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher):
                yield f"{info.name}.{name}", value


def compiled_signatures() -> dict[str, int]:
    """Compiled (or cache-loaded) specializations of every numba kernel, by name."""
    return {name: len(kernel.signatures) for name, kernel in kernel_dispatchers()}


def run_in_a_fresh_process(target: str, *args: str) -> str:
    """What `module:function(*args)` returns, printed by a fresh interpreter with warnings as
    errors: there no kernel an earlier test ran can hide one that warm-up misses."""
    module, function = target.split(":")
    code = f"import sys; from {module} import {function}; print({function}(*sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout.strip()


def serve_requests(table: runtime.Table) -> None:
    """Lookups, bags (mean and weighted), searches by vector and by stored row, and scores, for
    every metric the table has; by key where the table is keyed."""
    few_rows, many_rows = np.array([3, 1]), np.arange(5000) % min(table.rows, 600)
    keys = table.keys
    few = few_rows if keys is None else keys[few_rows]
    many = many_rows if keys is None else keys[many_rows]
    candidates = np.array([[0, 1], [2, 3]]) if keys is None else keys[np.array([[0, 1], [2, 3]])]
    table.lookup(few)
    table.lookup(many)
    table.lookup_pooled(many, [0, 7, 4000], "mean")
    table.lookup_pooled(few, [0], "sum", per_sample_weights=np.array([0.5, 2.0], np.float32))
    q = table.lookup(few)
    for metric in table.metrics:
        table.search(q, 5, metric, oversample=3)
        table.search_by_id(few, 5, metric, oversample=3)
        table.score(candidates, queries=q, metric=metric)
        table.score(candidates, query_ids=few, metric=metric)
