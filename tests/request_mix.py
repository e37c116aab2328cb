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
from numba.core import types
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


def needless_specializations() -> dict[str, list[str]]:
    """Kernels compiled more than once where once would do: for a literal argument
    (`Literal[int](0)`, a constant one kernel passes another) beside the same argument's plain
    type, or for an unsigned scalar (a `prange` index) beside an int64 one. Each is a compile,
    seconds of a cold start, that plain int64 arguments share. -> name: its signatures."""
    found: dict[str, list[str]] = {}
    for name, kernel in kernel_dispatchers():
        general = {tuple(_general_type(t) for t in signature) for signature in kernel.signatures}
        if len(general) < len(kernel.signatures):
            found[name] = [str(signature) for signature in kernel.signatures]
    return found


def _general_type(t: types.Type) -> types.Type:
    t = types.unliteral(t)
    return types.int64 if t in types.unsigned_domain else t


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
    """Lookups, bags (mean and weighted), searches by vector and by stored row (with rows left
    out and without), and scores, for every metric the table has; by key where the table is keyed."""
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
        table.search(q, 5, metric, oversample=3, exclude_ids=few, exclude_lengths=[1, 1])
        table.search_by_id(few, 5, metric, oversample=3)
        table.search_by_id(few, 5, metric, oversample=3, exclude_ids=few[:1])
        table.score(candidates, queries=q, metric=metric)
        table.score(candidates, query_ids=few, metric=metric)
