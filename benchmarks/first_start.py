"""How long README command 1's server takes to become ready: on a machine that never ran it
(empty numba cache, no demo table: the table is built, then loaded, warmed and served) and again
with both in place, against an earlier revision of this repository in the same run.

    python -m benchmarks.first_start --baseline 55dad1f --reps 2 --out benchmarks/results/first-start-zen4

Each repetition runs this checkout and the baseline (a git worktree) one after the other, each in a
fresh HOME and NUMBA_CACHE_DIR, so the two share the machine's state. The time is from starting
`embserve serve` to the first 200 from /readyz; the server's own log splits it into the demo
table's build and the load and warm-up after it. Writes first_start.json and first_start.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.workers_bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 900.0
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO embserve: (.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def log_phases(log: str) -> dict[str, float]:
    """Seconds between the server's log lines: building the demo table, and loading and warming it."""
    at: dict[str, datetime] = {}
    for line in log.splitlines():
        match = STAMP.match(line)
        if match is None:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        message = match.group(2)
        for name, prefix in (
            ("build", "building the demo table"),
            ("load", "no table configured"),
            ("ready", "ready:"),
        ):
            if message.startswith(prefix):
                at.setdefault(name, when)
    phases = {}
    if "build" in at and "load" in at:
        phases["build_s"] = (at["load"] - at["build"]).total_seconds()
    if "load" in at and "ready" in at:
        phases["load_and_warm_s"] = (at["ready"] - at["load"]).total_seconds()
    return phases


def start_once(tree: Path, home: Path, cache: Path) -> dict[str, Any]:
    """Start tree's server with this HOME and numba cache; -> seconds to ready and the log's phases."""
    http, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EMBSERVE_"))}
    env.update(HOME=str(home), NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(tree))
    command = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
    command += ["serve", "--http-port", str(http), "--grpc-port", str(grpc)]
    with tempfile.TemporaryFile("w+") as log:
        began = time.perf_counter()
        server = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not ready(http):
                if server.poll() is not None or time.perf_counter() - began > READY_SECONDS:
                    log.seek(0)
                    raise RuntimeError(f"{tree}: not ready (exit {server.poll()}):\n{log.read()[-3000:]}")
                time.sleep(0.2)
            seconds = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(timeout=60)
        log.seek(0)
        return {"ready_s": seconds, **log_phases(log.read())}


def measure(tree: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        home, cache = Path(scratch) / "home", Path(scratch) / "numba"
        home.mkdir()
        first = start_once(tree, home, cache)
        again = start_once(tree, home, cache)
    return {"first": first, "again": again}


def cpu_described() -> str:
    """The CPU's model name (`workers_bench.cpu_name`, as the other benchmarks write it) and LLVM's
    name for it: a VM may show only "AMD EPYC"."""
    import llvmlite.binding

    return f"{cpu_name()} (LLVM host CPU {llvmlite.binding.get_host_cpu_name()})"


def median_of(runs: list[dict[str, Any]], start: str, key: str) -> float | None:
    values = [run[start][key] for run in runs if key in run[start]]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision to run beside this checkout")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/first-start")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    trees = {f"this checkout ({head.strip()})": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline:
            worktree = Path(scratch) / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True
            )
            trees[f"baseline ({args.baseline})"] = worktree
        try:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
            for rep in range(args.reps):
                for name, tree in trees.items():
                    runs[name].append(measure(tree))
                    print(f"rep {rep + 1} {name}: {json.dumps(runs[name][-1])}", file=sys.stderr)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"cpu": cpu_described(), "cores": os.cpu_count(), "reps": args.reps, "runs": runs}
    (args.out / "first_start.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# First start of `embserve serve` (the demo table)",
        "",
        f"Machine: {payload['cpu']}, {payload['cores']} cores; medians of {args.reps} alternated repetitions.",
        "",
        "| code | first start: ready | build demo table | load + warm-up | started again: ready |",
        "|---|---|---|---|---|",
    ]
    for name, each in runs.items():
        cells = [
            median_of(each, "first", "ready_s"),
            median_of(each, "first", "build_s"),
            median_of(each, "first", "load_and_warm_s"),
            median_of(each, "again", "ready_s"),
        ]
        lines.append(f"| {name} | " + " | ".join("—" if c is None else f"{c:.1f} s" for c in cells) + " |")
    (args.out / "first_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
