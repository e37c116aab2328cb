"""embserve against the plain alternative for lookups: a local redis-server holding the rows.

The same 200,000 × 128 table: Redis holds each row as 512 bytes of float32 under its own key and a
batch is one MGET of 256 keys (redis-py with hiredis); embserve holds it as int8 and a batch is one
HTTP octet-stream lookup of 256 ids (urllib3) or one gRPC Lookup (grpcio's asyncio client). Each
client turns the answer into a (256, 128) float32 array. Beside the gRPC figures, a bare grpc.aio
server answering every Lookup with a prebuilt payload of the same size (service_bench's), the
ceiling of grpcio's own stack.

Concurrency c: c client processes each with one connection making one request at a time
(redis-py, urllib3), or one process with c coroutines on one channel (grpcio's asyncio client).
The sides alternate in short slices and medians are kept; every client process starts its clock at
the same agreed instant, so start-up is not measured. Reported per side: requests/s, p50 / p99,
the client's and the server's CPU per request (the 2-core machine is shared by both, and by other
work), and the memory each server holds (RSS, PSS from smaps_rollup; Redis's own INFO too).

    python -m benchmarks.redis_bench [--rows 200000] [--seconds 12] [--slices 4] [--concurrency 1,4]
Writes redis.json and redis.md under --out (benchmarks/results)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procstat
from benchmarks.service_bench import BATCH, DIM, ROOT, alternated_medians
from benchmarks.workers_bench import cpu_name

MIB = 1 << 20
BATCHES = 64
KEY_PREFIX = "emb:"


def batches(rows: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, rows, BATCH).astype("<i8") for _ in range(BATCHES)]


# ---- one client process (`python -m benchmarks.redis_bench client KIND TARGET ...`) -------------
def client(kind: str, target: str, rows: int, seconds: float, start_at: float, concurrency: int, seed: int) -> None:
    """Run until `start_at + seconds`, measuring from `start_at`; print one JSON line."""
    ids = batches(rows, seed)
    latencies: list[float] = []
    if kind == "grpc":
        cpu, elapsed = asyncio.run(_grpc_client(target, ids, seconds, start_at, concurrency, latencies))
    else:
        call = _redis_call(target, ids) if kind == "redis" else _http_call(target, ids)
        call(0)  # connect before the clock starts
        while time.time() < start_at:
            time.sleep(0.001)
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline, i = t0 + seconds, 0
        while (now := time.perf_counter()) < deadline:
            call(i)
            latencies.append(time.perf_counter() - now)
            i += 1
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    print(json.dumps({"latencies": latencies, "elapsed": elapsed, "cpu_s": cpu}))


def _redis_call(target: str, ids: list[np.ndarray]) -> Any:
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE, "redis-py should parse with hiredis here"
    host, port = target.rsplit(":", 1)
    connection = redis.Redis(host=host, port=int(port))
    keys = [[f"{KEY_PREFIX}{i}" for i in batch] for batch in ids]

    def call(i: int) -> np.ndarray:
        values: list[bytes] = connection.mget(keys[i % BATCHES])  # type: ignore[assignment]
        return np.frombuffer(b"".join(values), dtype="<f4").reshape(BATCH, DIM)

    return call


def _http_call(target: str, ids: list[np.ndarray]) -> Any:
    import urllib3

    host, port = target.rsplit(":", 1)
    pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1)
    bodies = [batch.tobytes() for batch in ids]
    headers = {"content-type": "application/octet-stream"}

    def call(i: int) -> np.ndarray:
        response = pool.urlopen("POST", "/v1/tables/bench/lookup", body=bodies[i % BATCHES], headers=headers)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.data[:200]!r}")
        return np.frombuffer(response.data, dtype="<f4").reshape(BATCH, DIM)

    return call


async def _grpc_client(
    target: str, ids: list[np.ndarray], seconds: float, start_at: float, concurrency: int, latencies: list[float]
) -> tuple[float, float]:
    import grpc

    from service.rpc.generated import embserve_pb2 as pb
    from service.rpc.generated import embserve_pb2_grpc as pb_grpc

    requests = [
        pb.LookupRequest(table="bench", ids=pb.Tensor(dtype="int64", shape=[BATCH], data=batch.tobytes()))
        for batch in ids
    ]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        await stub.Lookup(requests[0])
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + seconds

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < deadline:
                reply = await stub.Lookup(requests[i % BATCHES])
                np.frombuffer(reply.embeddings.data, dtype="<f4").reshape(BATCH, DIM)
                latencies.append(time.perf_counter() - now)
                i += 1

        await asyncio.gather(*(worker(c) for c in range(concurrency)))
        return time.process_time() - cpu0, time.perf_counter() - t0


def measured_clients(
    kind: str, target: str, pids: list[int], concurrency: int, rows: int, seconds: float
) -> dict[str, float]:
    """`run_clients` for one slice, with the CPU seconds the server's processes (pids) used."""
    before = procstat.cpu_seconds(pids)
    result = run_clients(kind, target, rows, seconds, concurrency)
    result["server_cpu_s"] = procstat.cpu_seconds(pids) - before
    return result


def run_clients(kind: str, target: str, rows: int, seconds: float, concurrency: int) -> dict[str, float]:
    """`concurrency` client processes (gRPC: one with `concurrency` coroutines) over one window."""
    start_at = time.time() + 2.0  # time for the processes to import and connect
    processes = 1 if kind == "grpc" else concurrency
    command = [sys.executable, "-m", "benchmarks.redis_bench", "client", kind, target, str(rows), str(seconds)]
    procs = [
        subprocess.Popen(
            [*command, str(start_at), str(concurrency if kind == "grpc" else 1), str(seed)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(processes)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} client failed:\n{err}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    latencies = np.concatenate([np.array(o["latencies"]) for o in outputs]) * 1e3
    return {
        "rps": sum(len(o["latencies"]) / o["elapsed"] for o in outputs),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "requests": float(len(latencies)),
        "client_cpu_s": float(sum(o["cpu_s"] for o in outputs)),
        "window_s": float(max(o["elapsed"] for o in outputs)),
    }


# ---- orchestration ------------------------------------------------------------------------------
def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    connection = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            connection.ping()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)


def fill_redis(port: int, x: np.ndarray) -> dict[str, int]:
    import redis

    connection = redis.Redis(port=port)
    chunk = 5000
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        connection.mset({f"{KEY_PREFIX}{start + i}": row.tobytes() for i, row in enumerate(block)})
    info = connection.info("memory")
    return {"used_memory": int(info["used_memory"]), "used_memory_rss": int(info["used_memory_rss"])}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "client":
        kind, target = argv[1:3]
        rows, seconds, start_at, clients, seed = argv[3:8]
        client(kind, target, int(rows), float(seconds), float(start_at), int(clients), int(seed))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=12, help="measured seconds per side and level")
    parser.add_argument("--slices", type=int, default=4, help="alternating slices the seconds are cut into")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--workers", type=int, default=1, help="embserve worker processes (Redis: one thread)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: nothing to compare against", file=sys.stderr)
        return 1
    import runtime
    from tests.service.live import free_port, start_server

    levels = [int(c) for c in args.concurrency.split(",")]
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((args.rows, DIM)).astype(np.float32)
        table = runtime.compress(x, "int8")
        table.save(Path(tmp) / "bench")
        table_bytes = table.nbytes
        del table
        redis_port, bare_port = free_port(), free_port()
        redis_proc = start_redis(redis_port, Path(tmp))
        bare = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.service_bench", "bare-grpc", str(bare_port)], cwd=ROOT
        )
        server = None
        try:
            redis_info = fill_redis(redis_port, x)
            del x
            server = start_server(
                Path(tmp),
                ["--table", f"bench={Path(tmp) / 'bench'}", "--workers", str(args.workers)],
                env={"EMBSERVE_MAX_CONCURRENCY": "1024"},
            )
            if args.workers > 1:
                from benchmarks.workers_bench import wait_all_workers

                wait_all_workers(server.http, args.workers)
            ours = procstat.family(server.proc.pid)
            sides = {
                "redis": ("redis", f"127.0.0.1:{redis_port}", [redis_proc.pid]),
                "http": ("http", f"127.0.0.1:{server.http_port}", ours),
                "grpc": ("grpc", server.grpc, ours),
                "bare_grpc": ("grpc", f"127.0.0.1:{bare_port}", [bare.pid]),
            }
            for concurrency in levels:
                medians = alternated_medians(
                    {side: partial(measured_clients, *sides[side], concurrency, args.rows) for side in sides},
                    args.slices,
                    args.seconds,
                )
                row = {"concurrency": concurrency, **medians}
                rows_out.append(row)
                print(json.dumps(row), flush=True)
            memory = {
                "redis": {**procstat.memory(redis_proc.pid), **redis_info},
                "embserve": procstat.memory_of(ours),
            }
        finally:
            if server is not None:
                server.terminate()
            for proc in (bare, redis_proc):
                proc.terminate()
                proc.wait(10)
    report = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "rows": args.rows,
        "dim": DIM,
        "batch": BATCH,
        "embserve_codec": "int8",
        "embserve_table_bytes": table_bytes,
        "embserve_workers": args.workers,
        "seconds": args.seconds,
        "slices": args.slices,
        "results": rows_out,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "redis.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "redis.md").write_text(render(report))
    print(render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Lookups of {report['batch']} ids from {report['rows']:,} × {report['dim']} rows: Redis (float32 bytes, one "
        f"MGET, redis-py + hiredis) against embserve (int8, {report['embserve_workers']} worker process(es); HTTP "
        f"octet-stream with urllib3, gRPC with grpcio's asyncio client), and a bare grpc.aio server returning the "
        f"same payload. {report['cpu']}, {report['cores']} cores shared by server, clients and other work.",
        "",
        "| c | side | req/s | vs Redis | p50 / p99 ms | server CPU ms/req | client CPU ms/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        redis_rps = row["redis"]["rps"]
        for side in ("redis", "http", "grpc", "bare_grpc"):
            r = row[side]
            extra = ""
            if side == "grpc":
                extra = f" ({r['rps'] / row['bare_grpc']['rps']:.0%} of bare)"
            lines.append(
                f"| {row['concurrency']} | {side} | {r['rps']:.0f} | {r['rps'] / redis_rps:.2f}×{extra} | "
                f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {1e3 * r['server_cpu_s'] / r['requests']:.3f} | "
                f"{1e3 * r['client_cpu_s'] / r['requests']:.3f} |"
            )
    m = report["memory"]
    lines += [
        "",
        "| server | RSS MiB | PSS MiB | notes |",
        "|---|---|---|---|",
        f"| redis-server | {m['redis']['rss'] / MIB:.1f} | {m['redis']['pss'] / MIB:.1f} | "
        f"INFO used_memory {m['redis']['used_memory'] / MIB:.1f} MiB |",
        f"| embserve | {m['embserve']['rss'] / MIB:.1f} | {m['embserve']['pss'] / MIB:.1f} | "
        f"table {report['embserve_table_bytes'] / MIB:.1f} MiB (int8 codes + scales), the rest is the interpreter |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
