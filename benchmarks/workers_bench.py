"""`--workers 2` against `--workers 1`: 256-id lookups (200,000 × 128, int8) over gRPC and HTTP
binary, and the memory the workers take.

Both servers run at once (the idle one costs nothing) and the loads alternate between them in
short slices, medians kept (service_bench's method). Load comes from C load generators, wrk for
HTTP and h2load (nghttp2-client) for gRPC (grpcio's asyncio client when h2load is absent, which
costs the client about as much CPU as the server), over 4 connections at least, so SO_REUSEPORT can
hand them to both workers. Beside each figure: the CPU seconds the client used, and the server's,
per request — on a 2-core machine the client competes with the server for the same cores, and the
report says how much.

Memory: each server alone (the other stopped), after every row was read through every worker:
RSS, PSS and USS (/proc/<pid>/smaps_rollup) summed over its processes, and the RSS and PSS of the
table's own mappings (/proc/<pid>/smaps, the artifact's files). PSS divides a shared page among the
processes mapping it, so the workers' table PSS sums to one copy when they share it.

    python -m benchmarks.workers_bench [--rows 200000] [--seconds 12] [--slices 4] [--concurrency 8]
Writes workers.json and workers.md under --out (benchmarks/results)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import procstat
from benchmarks.service_bench import BATCH, DIM, alternated_medians, run_load

MIB = 1 << 20


def cpu_name() -> str:
    """The CPU's model name, as every benchmark's results name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def wait_all_workers(http: str, workers: int, timeout: float = 120) -> None:
    """Until `workers` distinct workers have answered ready on fresh connections."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} became ready")
        with httpx.Client() as client:  # a new connection each time
            response = client.get(f"{http}/readyz")
        if response.status_code == 200:
            seen.add(response.headers.get("x-embserve-worker", "0"))
        time.sleep(0.02)


def touch_every_row(port: int, workers: int, rows: int, timeout: float = 60) -> None:
    """Look every row up once through each worker (a connection per worker, told apart by the
    x-embserve-worker header), so every worker has the whole table's pages mapped in."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(done) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"reached only workers {sorted(done)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            worker = response.headers.get("x-embserve-worker", "0")
            if worker in done:
                continue
            for start in range(0, rows, 4096):
                ids = np.arange(start, min(rows, start + 4096), dtype="<i8").tobytes()
                conn.request("POST", "/v1/tables/bench/lookup", ids, {"content-type": "application/octet-stream"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"lookup answered {answer.status}")
            done.add(worker)
        finally:
            conn.close()


def measure_memory(server: Any, workers: int, rows: int, artifact: Path) -> dict[str, int]:
    """RSS / PSS / USS of the server's processes alone on the machine's embserve side, after every
    row was read through every worker; the table's own mapped pages counted apart."""
    touch_every_row(server.http_port, workers, rows)
    pids = procstat.family(server.proc.pid)
    table = procstat.mapped_of(pids, str(artifact))
    return {
        **procstat.memory_of(pids),
        "supervisor_pss": procstat.memory(server.proc.pid)["pss"] if workers > 1 else 0,
        "table_rss": table["rss"],
        "table_pss": table["pss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=12, help="load seconds per server and transport")
    parser.add_argument("--slices", type=int, default=4, help="alternating slices the seconds are cut into")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (gRPC: over 4 channels)")
    parser.add_argument("--transports", default="http,grpc")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import runtime
    from tests.service.live import start_server

    transports = args.transports.split(",")
    rows_out: list[dict[str, Any]] = []
    memory: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((args.rows, DIM)).astype(np.float32)
        table = runtime.compress(x, "int8")
        table.save(Path(tmp) / "bench")
        table_bytes = table.nbytes
        del x, table
        servers = {}
        for workers in (1, 2):
            servers[workers] = start_server(
                Path(tmp),
                ["--table", f"bench={Path(tmp) / 'bench'}", "--workers", str(workers)],
                env={"EMBSERVE_MAX_CONCURRENCY": "1024"},
            )
            wait_all_workers(servers[workers].http, workers)

        def measured_load(kind: str, server: Any, seconds: float) -> dict[str, float]:
            """One slice of load on `server`, with the CPU seconds its processes used."""
            pids = procstat.family(server.proc.pid)
            before = procstat.cpu_seconds(pids)
            if kind == "http":
                url = f"{server.http}/v1/tables/bench/lookup"
                result = run_load("http", url, args.concurrency, seconds, args.rows)
            else:
                generator = "h2load_grpc" if shutil.which("h2load") else "grpc"
                result = run_load(generator, server.grpc, args.concurrency, seconds, args.rows, channels=4)
            result["server_cpu_s"] = procstat.cpu_seconds(pids) - before
            return result

        try:
            for kind in transports:
                medians = alternated_medians(
                    {workers: partial(measured_load, kind, server) for workers, server in servers.items()},
                    args.slices,
                    args.seconds,
                )
                one, two = medians[1], medians[2]
                row = {"transport": kind, "workers_1": one, "workers_2": two, "speedup": two["rps"] / one["rps"]}
                rows_out.append(row)
                print(json.dumps(row), flush=True)
            # memory: one server at a time, so no page is shared with the other server's processes
            for server in servers.values():
                server.terminate()
            artifact = (Path(tmp) / "bench").resolve()
            for workers in (1, 2):
                servers[workers] = start_server(Path(tmp), ["--table", f"bench={artifact}", "--workers", str(workers)])
                wait_all_workers(servers[workers].http, workers)
                memory[str(workers)] = measure_memory(servers[workers], workers, args.rows, artifact)
                servers[workers].terminate()
        finally:
            for server in servers.values():
                server.terminate()
    report: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "rows": args.rows,
        "dim": DIM,
        "batch": BATCH,
        "codec": "int8",
        "table_bytes": table_bytes,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "slices": args.slices,
        "http_client": "wrk" if shutil.which("wrk") else "httpx",
        "grpc_client": "h2load" if shutil.which("h2load") else "grpcio asyncio",
        "results": rows_out,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "workers.md").write_text(render(report))
    print(render(report))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        f"`--workers 2` vs `--workers 1`: lookups of {result['batch']} ids from a {result['rows']:,} × "
        f"{result['dim']} int8 table, {result['concurrency']} requests in flight, on {result['cpu']} "
        f"({result['cores']} cores, shared with the load generator and other work). Target: ≥ 1.5×.",
        "",
        "| transport | workers | req/s | p50 / p99 ms | server CPU ms/req | client CPU ms/req | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        for workers in (1, 2):
            r = row[f"workers_{workers}"]
            requests = r["rps"] * result["seconds"] / result["slices"]
            speedup = f"{row['speedup']:.2f}×" if workers == 2 else ""
            lines.append(
                f"| {row['transport']} | {workers} | {r['rps']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
                f"{1e3 * r['server_cpu_s'] / requests:.3f} | {1e3 * r['client_cpu_s'] / requests:.3f} | {speedup} |"
            )
    lines += [
        "",
        f"Memory after the load (table: {result['table_bytes'] / MIB:.1f} MiB, memory-mapped):",
        "",
        "| workers | RSS MiB (sum) | PSS MiB (sum) | of which the supervisor's PSS | USS MiB (sum) | "
        "table pages: RSS (sum) / PSS (sum) MiB |",
        "|---|---|---|---|---|---|",
    ]
    for workers, m in result["memory"].items():
        lines.append(
            f"| {workers} | {m['rss'] / MIB:.1f} | {m['pss'] / MIB:.1f} | {m['supervisor_pss'] / MIB:.1f} | "
            f"{m['uss'] / MIB:.1f} | {m['table_rss'] / MIB:.1f} / {m['table_pss'] / MIB:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
