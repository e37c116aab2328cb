"""The update log end to end: how fast pushed rows become visible on a replica, and what a steady
update stream does to lookup latency there.

One local redis-server, one `embserve serve` replica of a keyed int8 table (200,000 × 64 by
default) following the table's update log.

- **Throughput:** `updates.push` appends N rows (1,000 an entry); the clock runs from the first
  push until the replica's `describe` reports the last entry applied. Reported as rows/s.
- **Lookup latency under updates:** one client makes HTTP octet-stream lookups of 256 keys back to
  back (urllib3), in slices that alternate between no updates and a producer process pushing
  10,000 rows/s (10 entries of 1,000 rows a second). p50 / p99 of each side over all its slices;
  the target is p99 with updates ≤ 1.2× p99 without.

In production the producer (a trainer) and Redis run on hosts of their own; here they share two
cores with the replica and the client. With `--peers idle` (the default) both run under Linux's
SCHED_IDLE policy, so they take only CPU time the replica and the client leave and never preempt
them, which is what other hosts would give; the replica, its update threads included, runs as
deployed. `--peers normal` runs them at normal priority: then each push's burst (the producer
packing 256 KB and Redis taking it in) lands on the cores the client and the replica are using,
and the requests of the next few milliseconds wait for it whether or not the replica follows the
stream at all.

    python -m benchmarks.update_bench [--rows 200000] [--push-rows 100000] [--seconds 12] [--slices 6]
                                      [--peers idle|normal]
Writes update.json and update.md under --out (benchmarks/results)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.redis_bench import start_redis
from benchmarks.workers_bench import cpu_name

DIM = 64
BATCH = 256
ENTRY_ROWS = 1000
UPDATE_RATE = 10_000
PRODUCER_BATCHES = 20


def _describe(http: str) -> dict[str, Any]:
    import urllib3

    response = urllib3.request("GET", f"{http}/v1/tables/bench", timeout=10)
    return dict(json.loads(response.data))


def wait_applied(http: str, last_id: str, timeout: float = 300) -> None:
    from service.sync.updates import id_to_sequence

    target = id_to_sequence(last_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _describe(http).get("last_update_id") or "0-0"
        if id_to_sequence(seen) >= target:
            return
        time.sleep(0.002)
    raise TimeoutError(f"the replica did not apply {last_id} within {timeout} s")


def throughput(redis_port: int, http: str, keys: np.ndarray, push_rows: int, seed: int) -> dict[str, float]:
    import redis

    from service.sync import updates

    rng = np.random.default_rng(seed)
    client = redis.Redis(port=redis_port)
    chosen = rng.choice(keys, size=push_rows, replace=push_rows > keys.size)
    rows = rng.standard_normal((push_rows, DIM)).astype(np.float32)
    start = time.perf_counter()
    last = ""
    for lo in range(0, push_rows, ENTRY_ROWS):
        part = slice(lo, lo + ENTRY_ROWS)
        uniq, first = np.unique(chosen[part], return_index=True)
        last = updates.push(client, "bench", uniq, rows[part][first], batch_rows=ENTRY_ROWS)[-1]
    pushed = time.perf_counter() - start
    wait_applied(http, last)
    elapsed = time.perf_counter() - start
    client.close()
    return {"rows": float(push_rows), "push_s": pushed, "visible_s": elapsed, "rows_per_s": push_rows / elapsed}


def run_idle(pid: int) -> None:
    """Put every thread of process `pid` (0: this one) under SCHED_IDLE: it runs only on CPU time
    that nothing else wants. Lowering a policy needs no privilege on Linux."""
    task_dir = Path(f"/proc/{pid or os.getpid()}/task")
    for task in task_dir.iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))


def produce(redis_port: int, keys_path: str, seconds: float, seed: int, peers: str) -> None:
    """A producer process (`python -m benchmarks.update_bench produce ...`): UPDATE_RATE rows a
    second, one entry of ENTRY_ROWS at a time, for `seconds`; prints "ready" once its batches are
    made, then, at the end, the rows pushed and the last id. A process of its own, so the client's
    clock never waits for the producer's GIL.

    The batches are drawn before the clock starts and pushed in turn: a trainer makes its rows on
    hosts of its own, so what shares the replica's cores here is `updates.push` alone."""
    import redis

    from service.sync import updates

    if peers == "idle":
        run_idle(0)
    client = redis.Redis(port=redis_port)
    keys = np.load(keys_path)
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(PRODUCER_BATCHES):
        chosen = np.unique(rng.choice(keys, ENTRY_ROWS))
        batches.append((chosen, rng.standard_normal((chosen.size, DIM)).astype(np.float32)))
    print("ready", flush=True)
    interval = ENTRY_ROWS / UPDATE_RATE
    start = next_at = time.perf_counter()
    pushed, last, i = 0, "", 0
    while time.perf_counter() - start < seconds:
        chosen, rows = batches[i % PRODUCER_BATCHES]
        last = updates.push(client, "bench", chosen, rows, batch_rows=ENTRY_ROWS)[-1]
        pushed += int(chosen.size)
        i += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    print(json.dumps({"rows": pushed, "seconds": time.perf_counter() - start, "last_id": last}))


def lookup_latencies(
    http_port: int, keys: np.ndarray, redis_port: int, seconds: float, slices: int, peers: str
) -> dict[str, Any]:
    import urllib3

    rng = np.random.default_rng(1)
    bodies = [keys[rng.integers(0, keys.size, BATCH)].astype("<i8").tobytes() for _ in range(64)]
    pool = urllib3.HTTPConnectionPool("127.0.0.1", http_port, maxsize=1)
    headers = {"content-type": "application/octet-stream"}
    keys_path = str(Path(tempfile.mkdtemp()) / "keys.npy")
    np.save(keys_path, keys)
    side_latencies: dict[str, list[float]] = {"quiet": [], "updating": []}
    side_time = dict.fromkeys(side_latencies, 0.0)
    pushed_during = 0.0
    slice_seconds = seconds / slices
    i = 0
    for s in range(2 * slices):
        side = "quiet" if s % 2 == 0 else "updating"
        producer = None
        if side == "updating":
            command = ["produce", str(redis_port), keys_path, str(slice_seconds + 1.0), str(s), peers]
            producer = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.update_bench", *command], stdout=subprocess.PIPE
            )
            assert producer.stdout is not None
            if producer.stdout.readline().strip() != b"ready":
                raise RuntimeError("the producer process failed to start")
            time.sleep(0.3)  # pushing before the slice is measured
        t0 = time.perf_counter()
        deadline = t0 + slice_seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = pool.urlopen("POST", "/v1/tables/bench/lookup", body=bodies[i % 64], headers=headers)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.data[:200]!r}")
            side_latencies[side].append(time.perf_counter() - start)
            i += 1
        side_time[side] += time.perf_counter() - t0
        if producer is not None:
            out_line, _ = producer.communicate(timeout=60)
            done = json.loads(out_line)
            pushed_during += done["rows"] / done["seconds"] * slice_seconds
            time.sleep(0.3)  # the replica drains what was pushed before the next quiet slice
    out: dict[str, Any] = {}
    for side, lat in side_latencies.items():
        arr = np.array(lat) * 1e3
        out[side] = {
            "requests": int(arr.size),
            "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99)),
            "requests_per_s": arr.size / side_time[side],
        }
    out["update_rows_per_s_during"] = pushed_during / side_time["updating"]
    out["p99_ratio"] = out["updating"]["p99_ms"] / out["quiet"]["p99_ms"]
    out["p50_ratio"] = out["updating"]["p50_ms"] / out["quiet"]["p50_ms"]
    return out


PEERS_NOTE = {
    "idle": "The producer and Redis, stand-ins for hosts of their own, ran under SCHED_IDLE "
    "(`--peers idle`): they used only CPU time the replica and the client left.",
    "normal": "The producer and Redis ran at normal priority on the same cores (`--peers normal`): "
    "their bursts at each push count against the replica's latency.",
}


def render(report: dict[str, Any]) -> str:
    t, lat = report["throughput"], report["latency"]
    met = "yes" if lat["p99_ratio"] <= 1.2 else "**no**"
    return "\n".join(
        [
            "# Update log benchmark",
            "",
            f"CPU: {report['cpu']} ({report['cores']} cores, shared by Redis, the replica and the client). "
            f"Table: {report['rows']:,} × {DIM} int8, keyed; one replica following its update log, "
            f"applying it every {report['apply_interval_s']:g} s (EMBSERVE_UPDATE_APPLY_INTERVAL_SECONDS).",
            "",
            PEERS_NOTE[report.get("peers", "normal")],
            "",
            "| measure | value |",
            "|---|---|",
            f"| rows pushed ({ENTRY_ROWS:,} an entry) | {t['rows']:,.0f} |",
            f"| push → visible on the replica | {t['visible_s']:.2f} s ({t['push_s']:.2f} s pushing) |",
            f"| update throughput end to end | {t['rows_per_s']:,.0f} rows/s |",
            "",
            f"Lookups of {BATCH} keys (HTTP octet-stream, one client), alternating slices without and with "
            f"a producer pushing {UPDATE_RATE:,} rows/s (measured: {lat['update_rows_per_s_during']:,.0f} rows/s):",
            "",
            "| side | requests | req/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
            *(
                f"| {side} | {lat[side]['requests']:,} | {lat[side]['requests_per_s']:,.0f} | "
                f"{lat[side]['p50_ms']:.3f} | {lat[side]['p99_ms']:.3f} |"
                for side in ("quiet", "updating")
            ),
            "",
            f"p99 with updates / without: {lat['p99_ratio']:.2f} (target ≤ 1.2: {met}); p50: {lat['p50_ratio']:.2f}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--push-rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=12, help="measured seconds a side")
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument(
        "--peers",
        choices=("idle", "normal"),
        default="idle",
        help="CPU policy of the producer and Redis, which stand in for other hosts (see above)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "produce":
        produce(int(argv[1]), argv[2], float(argv[3]), int(argv[4]), argv[5])
        return 0
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: the update log needs it", file=sys.stderr)
        return 1
    import runtime
    from service.settings import Settings
    from tests.service.live import free_port, start_server

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        keys = np.random.default_rng(0).permutation(args.rows * 4)[: args.rows].astype(np.int64) * 31 - (1 << 40)
        x = np.random.default_rng(1).standard_normal((args.rows, DIM)).astype(np.float32)
        runtime.compress(x, "int8", keys=keys, version="v0").save(root / "bench")
        del x
        redis_port = free_port()
        redis_proc = start_redis(redis_port, Path(tmp))
        if args.peers == "idle":
            run_idle(redis_proc.pid)
        server = None
        try:
            server = start_server(
                Path(tmp),
                ["--table", f"bench={root / 'bench'}", "--artifact-root", str(root)],
                env={"EMBSERVE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "EMBSERVE_REPLICA_ID": "bench"},
            )
            report = {
                "cpu": cpu_name(),
                "cores": os.cpu_count(),
                "rows": args.rows,
                "apply_interval_s": Settings().update_apply_interval_seconds,
                "peers": args.peers,
                "throughput": throughput(redis_port, server.http, keys, args.push_rows, seed=3),
                "latency": lookup_latencies(server.http_port, keys, redis_port, args.seconds, args.slices, args.peers),
            }
        finally:
            if server is not None:
                server.terminate()
            redis_proc.kill()
            redis_proc.wait(10)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "update.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "update.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
