"""Dynamic batching of searches: single-query searches from many concurrent clients, against a
server with `EMBSERVE_SEARCH_BATCH_MAX_QUERIES` set and the same server without it.

Two tables of 1M × 128 rows (by default): int8 (an exact scan, the tiled path from 4 queries) and
PQ M=16 8-bit (the 8-bit fast scan), top-100 by inner product. Both servers run at once (the idle
one costs nothing) and the load alternates between them in short slices, medians kept
(service_bench's method). Load: a grpc.aio client in its own process, `concurrency` calls in flight
over one channel, each carrying one query; the CPU seconds it used are reported beside its figures,
since on a 2-core machine it shares the cores with the server.

    python -m benchmarks.batching_bench [--rows 1000000] [--seconds 12] [--slices 4]
        [--concurrency 1,4,16,64] [--max-queries 64] [--delay-ms 0] [--out benchmarks/results]
Writes batching.json and batching.md under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.service_bench import alternated_medians, grpc_calls, run_client
from benchmarks.workers_bench import cpu_name

DIM = 128
K = 100
TABLES: dict[str, dict[str, Any]] = {
    "int8": {"codec": "int8"},
    "pq": {"codec": "pq", "subspaces": 16, "bits": 8, "iterations": 10},
}


def search_load(target: str, table: str, concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` coroutines, each sending one-query top-K searches back to back."""
    from service.rpc.generated import embserve_pb2 as pb
    from service.rpc.servicers import array_to_tensor

    rng = np.random.default_rng(1)
    requests = [
        pb.SearchRequest(table=table, queries=array_to_tensor(rng.standard_normal((1, DIM)).astype(np.float32)), k=K)
        for _ in range(256)
    ]
    return grpc_calls(target, "Search", requests, concurrency, seconds)


def run_search_load(target: str, table: str, concurrency: int, seconds: float) -> dict[str, float]:
    """search_load in a process of its own (`run_client`)."""
    function = "benchmarks.batching_bench:search_load"
    return run_client(function, target, table, concurrency, seconds, timeout=seconds + 120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=12, help="load seconds per server, table and level")
    parser.add_argument("--slices", type=int, default=4, help="alternating slices the seconds are cut into")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--max-queries", type=int, default=64, help="EMBSERVE_SEARCH_BATCH_MAX_QUERIES when on")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="EMBSERVE_SEARCH_BATCH_DELAY_MS when on")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import runtime
    from runtime.kernels.cpu import describe
    from tests.service.live import start_server

    levels = [int(c) for c in args.concurrency.split(",")]
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((args.rows, DIM)).astype(np.float32)
        table_args: list[str] = []
        for name, spec in TABLES.items():
            options = dict(spec)
            runtime.compress(x, str(options.pop("codec")), **options).save(Path(tmp) / name)
            table_args += ["--table", f"{name}={Path(tmp) / name}"]
        del x
        common = {"EMBSERVE_MAX_CONCURRENCY": "1024"}
        batching = {
            "EMBSERVE_SEARCH_BATCH_MAX_QUERIES": str(args.max_queries),
            "EMBSERVE_SEARCH_BATCH_DELAY_MS": str(args.delay_ms),
        }
        servers = {
            "off": start_server(Path(tmp), table_args, env=common),
            "on": start_server(Path(tmp), table_args, env={**common, **batching}),
        }
        try:
            for table in TABLES:
                for concurrency in levels:
                    medians = alternated_medians(
                        {
                            side: partial(run_search_load, server.grpc, table, concurrency)
                            for side, server in servers.items()
                        },
                        args.slices,
                        args.seconds,
                    )
                    off, on = medians["off"], medians["on"]
                    row = {
                        "table": table,
                        "concurrency": concurrency,
                        "off": off,
                        "on": on,
                        "throughput_ratio": on["rps"] / off["rps"] if off["rps"] else None,
                    }
                    rows_out.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for server in servers.values():
                server.terminate()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = {
        "cpu": cpu_name(),
        "kernels": describe(),
        "rows": args.rows,
        "dim": DIM,
        "k": K,
        "tables": TABLES,
        "max_queries": args.max_queries,
        "delay_ms": args.delay_ms,
        "seconds": args.seconds,
        "slices": args.slices,
    }
    (args.out / "batching.json").write_text(json.dumps({**setup, "results": rows_out}, indent=2))
    lines = [
        f"One-query top-{K} searches over gRPC, {args.rows:,} × {DIM}, from `concurrency` calls in flight; "
        f"batching on: `EMBSERVE_SEARCH_BATCH_MAX_QUERIES={args.max_queries}`, "
        f"`EMBSERVE_SEARCH_BATCH_DELAY_MS={args.delay_ms:g}`. CPU: {setup['cpu']}. Medians of {args.slices} "
        "alternated slices; client CPU is the load generator's, on the same 2 cores.",
        "",
        "| table | concurrency | off: req/s | p50 / p99 ms | on: req/s | p50 / p99 ms | on / off "
        "| client CPU s (off / on) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        off, on = r["off"], r["on"]
        ratio = "—" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}×"
        lines.append(
            f"| {r['table']} | {r['concurrency']} | {off['rps']:.0f} | {off['p50_ms']:.2f} / {off['p99_ms']:.2f} | "
            f"{on['rps']:.0f} | {on['p50_ms']:.2f} / {on['p99_ms']:.2f} | {ratio} | "
            f"{off['client_cpu_s']:.1f} / {on['client_cpu_s']:.1f} |"
        )
    (args.out / "batching.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
