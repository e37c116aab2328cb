"""Service-level throughput: embserve against a bare server of the same framework.

Native gRPC lookup of 256 ids (d=128, int8) and HTTP octet-stream lookup of 256 ids, at
concurrency 1, 4 and 16, each beside a bare server that answers the same request with a
precomputed payload of the same size without touching a table (the framework's own ceiling).
HTTP load comes from wrk (Debian package) when it is installed, else from an asyncio httpx
client; gRPC load from an asyncio grpc.aio client in its own process. Everything on loopback.

    python -m benchmarks.service_bench [--rows 200000] [--seconds 12] [--slices 6] [--out benchmarks/results]
Writes service.json and service.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")
ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
DIM = 128


# ---- bare servers (run as `python -m benchmarks.service_bench bare-grpc PORT` / `bare-http PORT`)
def bare_grpc(port: int) -> None:
    import grpc

    from service.rpc.generated import embserve_pb2 as pb
    from service.rpc.generated import embserve_pb2_grpc as pb_grpc

    payload = pb.LookupResponse(
        embeddings=pb.Tensor(dtype="float32", shape=[BATCH, DIM], data=np.ones((BATCH, DIM), "<f4").tobytes())
    )

    class Bare(pb_grpc.EmbeddingServiceServicer):
        async def Lookup(self, request: Any, context: Any) -> Any:  # noqa: N802
            return payload

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_EmbeddingServiceServicer_to_server(Bare(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def bare_http(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()
    payload = np.ones((BATCH, DIM), "<f4").tobytes()

    @app.post("/v1/tables/{name}/lookup")
    async def lookup(name: str, request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/octet-stream", headers={"X-Embserve-Shape": f"{BATCH},{DIM}"})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- load generators ---------------------------------------------------------------------------
def grpc_load(target: str, concurrency: int, seconds: float, rows: int, channels: int = 1) -> dict[str, float]:
    """256-id lookups from `concurrency` coroutines over `channels` connections (`grpc_calls`)."""
    from service.rpc.generated import embserve_pb2 as pb

    rng = np.random.default_rng(0)
    requests = [
        pb.LookupRequest(
            table="bench",
            ids=pb.Tensor(dtype="int64", shape=[BATCH], data=rng.integers(0, rows, BATCH).astype("<i8").tobytes()),
        )
        for _ in range(64)
    ]
    return grpc_calls(target, "Lookup", requests, concurrency, seconds, channels)


def grpc_calls(
    target: str, method: str, requests: list[Any], concurrency: int, seconds: float, channels: int = 1
) -> dict[str, float]:
    """`concurrency` coroutines over `channels` connections (each channel its own subchannel pool,
    so they are distinct TCP connections, which SO_REUSEPORT can spread over worker processes),
    each calling EmbeddingService.`method` with the requests in turn, back to back, for `seconds`."""
    import grpc

    from service.rpc.generated import embserve_pb2_grpc as pb_grpc

    latencies: list[float] = []

    async def worker(call: Any, deadline: float, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call(requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            i += 1

    async def main() -> float:
        opened = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
        ]
        try:
            calls = [getattr(pb_grpc.EmbeddingServiceStub(channel), method) for channel in opened]
            for call in calls:
                await call(requests[0])
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(worker(calls[c % channels], deadline, c) for c in range(concurrency)))
            return time.perf_counter() - started
        finally:
            for channel in opened:
                await channel.close()

    elapsed = asyncio.run(main())
    return summarize(latencies, elapsed)


def h2load_grpc_load(target: str, concurrency: int, seconds: float, rows: int, channels: int = 1) -> dict[str, float]:
    """gRPC Lookup load from h2load (nghttp2's C load generator): the same framed LookupRequest
    over `channels` HTTP/2 connections with `concurrency` streams in flight in all. It costs the
    client a fraction of the CPU grpcio's Python client does, so on a 2-core machine the server
    keeps the cores. h2load does not read gRPC trailers: the byte count per answer is checked
    instead (an error answer has no 128 KiB payload), and p99 is not available (mean only)."""
    from service.rpc.generated import embserve_pb2 as pb

    ids = np.random.default_rng(0).integers(0, rows, BATCH).astype("<i8").tobytes()
    message = pb.LookupRequest(table="bench", ids=pb.Tensor(dtype="int64", shape=[BATCH], data=ids))
    payload = message.SerializeToString()
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        body.flush()
        clients = max(1, min(channels, concurrency))
        run = subprocess.run(
            [
                "h2load",
                "-D",
                str(max(1, round(seconds))),
                "-c",
                str(clients),
                "-m",
                str(max(1, concurrency // clients)),
                "-t",
                "1",
                "-d",
                body.name,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{target}/embserve.v1.EmbeddingService/Lookup",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    text = run.stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
    traffic = re.search(r"\((\d+)\) data", text)
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    if not (done and traffic and finished and mean):
        raise RuntimeError(f"h2load output not understood:\n{text}\n{run.stderr}")
    succeeded = int(done.group(2))
    data = int(traffic.group(1))
    if succeeded == 0 or data / succeeded < BATCH * DIM * 4:
        raise RuntimeError(f"h2load's answers are not lookups ({data / max(succeeded, 1):.0f} B each):\n{text}")
    mean_ms = float(mean.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    return {"rps": float(finished.group(2)), "p50_ms": mean_ms, "p99_ms": float("nan")}


def summarize(latencies: list[float], elapsed: float) -> dict[str, float]:
    lat = np.array(latencies) * 1e3
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests": len(lat),
    }


def wrk_load(url: str, concurrency: int, seconds: float, rows: int) -> dict[str, float]:
    script = ROOT / "loadtests" / "wrk_lookup.lua"
    run = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(2, concurrency)),
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, "ROWS": str(rows), "BATCH": str(BATCH)},
    )
    text = run.stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", text)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def http_load(url: str, concurrency: int, seconds: float, rows: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return wrk_load(url, concurrency, seconds, rows)
    import httpx

    rng = np.random.default_rng(0)
    bodies = [rng.integers(0, rows, BATCH).astype("<i8").tobytes() for _ in range(64)]
    latencies: list[float] = []

    async def main() -> float:
        async with httpx.AsyncClient(timeout=30) as client:
            started = time.perf_counter()
            deadline = started + seconds

            async def worker(offset: int) -> None:
                i = offset
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    await client.post(url, content=bodies[i % 64], headers={"content-type": "application/octet-stream"})
                    latencies.append(time.perf_counter() - start)
                    i += 1

            await asyncio.gather(*(worker(c) for c in range(concurrency)))
            return time.perf_counter() - started

    return summarize(latencies, asyncio.run(main()))


# ---- orchestration ------------------------------------------------------------------------------
def median_load(results: list[dict[str, float]]) -> dict[str, float]:
    """Per-field medians over alternated slices of one load."""
    return {key: float(np.median([r[key] for r in results])) for key in results[0]}


def alternated_medians(
    loads: Mapping[K, Callable[[float], dict[str, float]]], slices: int, seconds: float
) -> dict[K, dict[str, float]]:
    """Each load run for seconds / slices in turn, `slices` rounds -> each load's per-field medians
    over its slices. Short alternated slices, because this VM's speed drifts by tens of percent
    within a minute: back-to-back long runs would compare two machines."""
    runs: dict[K, list[dict[str, float]]] = {side: [] for side in loads}
    for _ in range(slices):
        for side, load in loads.items():
            runs[side].append(load(seconds / slices))
    return {side: median_load(results) for side, results in runs.items()}


def run_load(kind: str, target: str, concurrency: int, seconds: float, rows: int, **extra: Any) -> dict[str, float]:
    """`<kind>_load` of this module in a process of its own (`run_client`)."""
    function = f"benchmarks.service_bench:{kind}_load"
    return run_client(function, target, concurrency, seconds, rows, timeout=seconds + 120, **extra)


def run_client(function: str, *args: Any, timeout: float, **kwargs: Any) -> dict[str, float]:
    """`module:function`(*args, **kwargs) in a process of its own, so the client does not share
    the server's interpreter -> its JSON result, carrying `client_cpu_s`: the CPU seconds the
    client process (and wrk under it) used."""
    module, name = function.split(":")
    code = f"import json; from {module} import {name}; print(json.dumps({name}(*{args!r}, **{kwargs!r})))"
    before = _children_cpu()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    result["client_cpu_s"] = _children_cpu() - before
    return result


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children, grandchildren included."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("bare-grpc", "bare-http"):
        (bare_grpc if argv[0] == "bare-grpc" else bare_http)(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=12, help="load seconds per server and level")
    parser.add_argument("--slices", type=int, default=6, help="alternating slices the seconds are cut into")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import runtime
    from tests.service.live import free_port, start_server

    levels = [int(c) for c in args.concurrency.split(",")]
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((args.rows, DIM)).astype(np.float32)
        runtime.compress(x, "int8").save(Path(tmp) / "bench")
        del x
        server = start_server(
            Path(tmp), ["--table", f"bench={Path(tmp) / 'bench'}"], env={"EMBSERVE_MAX_CONCURRENCY": "1024"}
        )
        bare_ports = {"grpc": free_port(), "http": free_port()}
        bare = [
            subprocess.Popen([sys.executable, "-m", "benchmarks.service_bench", f"bare-{kind}", str(port)], cwd=ROOT)
            for kind, port in bare_ports.items()
        ]
        time.sleep(3)
        try:
            for concurrency in levels:
                for kind, ours_target, bare_target in (
                    ("grpc", server.grpc, f"127.0.0.1:{bare_ports['grpc']}"),
                    (
                        "http",
                        f"{server.http}/v1/tables/bench/lookup",
                        f"http://127.0.0.1:{bare_ports['http']}/v1/tables/bench/lookup",
                    ),
                ):
                    medians = alternated_medians(
                        {
                            side: partial(run_load, kind, target, concurrency, rows=args.rows)
                            for side, target in (("ours", ours_target), ("bare", bare_target))
                        },
                        args.slices,
                        args.seconds,
                    )
                    ours, theirs = medians["ours"], medians["bare"]
                    row = {
                        "transport": kind,
                        "concurrency": concurrency,
                        "ours": ours,
                        "bare": theirs,
                        "fraction_of_bare": ours["rps"] / theirs["rps"] if theirs["rps"] else None,
                    }
                    rows_out.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for proc in bare:
                proc.terminate()
                proc.wait(10)
            server.terminate()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service.json").write_text(
        json.dumps(
            {
                "rows": args.rows,
                "batch": BATCH,
                "dim": DIM,
                "codec": "int8",
                "http_client": "wrk" if shutil.which("wrk") else "httpx",
                "results": rows_out,
            },
            indent=2,
        )
    )
    lines = [
        f"Lookup of {BATCH} ids from a {args.rows:,} × {DIM} int8 table; "
        "target: ≥ 70% of the bare server's throughput.",
        "",
        "| transport | concurrency | embserve req/s | p50 / p99 ms | bare req/s | p50 / p99 ms | fraction of bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        o, b = r["ours"], r["bare"]
        frac = r["fraction_of_bare"]
        share = "—" if frac is None else f"{frac:.0%}"
        lines.append(
            f"| {r['transport']} | {r['concurrency']} | {o['rps']:.0f} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | "
            f"{b['rps']:.0f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {share} |"
        )
    (args.out / "service.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
