"""A DLRM-shaped request end to end: 26 sparse features in one multi-table lookup, against the
same work as 26 single-table requests and against the in-process floor.

Tables: the 26 categorical features of the Criteo Kaggle (DLRM) data set with their row counts,
each capped at --max-rows so the whole set fits this machine; d=64; every table once as int8 and
once as PQ. A request carries, for each of B samples and each feature, a bag of ids whose size is
drawn from a power law (Zipf) on 1..200 with mean 20; ids are Zipf-skewed over the rows (s=1.05).

Per codec and B ∈ --batches, one client process drives three transports at concurrency 1, each
for --seconds, alternating in --rounds slices (so load from elsewhere on a shared machine falls on
all three alike and the ratio between them holds):
  grpc multi     one `EmbeddingService/MultiLookup` (lengths, concat) -> (B, 26 × 64)
  http multi     one `POST /v1/lookup` binary form (X-Embserve-Tables, concat), urllib3 client
  grpc 26 singles  26 pooled `EmbeddingService/Lookup` calls issued at once (grpc.aio, one channel)
and in process (no transport, on --threads threads, default 1): the runtime's 26
`Table.lookup_pooled` calls, and, for int8, PyTorch's
FBGEMM kernel `torch.ops.quantized.embedding_bag_byte_rowwise_offsets` over the same float rows
packed by `embedding_bag_byte_prepack` (the fbgemm_gpu package's `torch.ops.fbgemm` op is not
installed here; this is the same FBGEMM CPU kernel as PyTorch's quantized backend ships it).
The first answer of every transport is checked against the runtime before it is timed.

    python -m benchmarks.dlrm_bench [--max-rows 200000] [--batches 1,32,256] [--codecs int8,pq]
        [--seconds 4] [--rounds 8] [--cache DIR] [--out benchmarks/results]
Built artifacts are cached under --cache (default: a directory in the system temp dir).
Writes dlrm.json and dlrm.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# rows of the 26 categorical features of Criteo's Kaggle display-advertising data (as DLRM uses it)
CRITEO_ROWS = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip
DIM = 64
MAX_POOL = 200
MEAN_POOL = 20.0
ID_SKEW = 1.05


def table_rows(max_rows: int) -> list[int]:
    return [min(n, max_rows) for n in CRITEO_ROWS]


def table_name(feature: int, codec: str) -> str:
    return f"c{feature}_{codec}"


def source_rows(feature: int, rows: int, dim: int) -> np.ndarray:
    """(rows, dim) float32, the same for every codec and every run (seeded by the feature)."""
    return (np.random.default_rng(1000 + feature).standard_normal((rows, dim)) * 0.1).astype(np.float32)


def build_tables(cache: Path, rows: list[int], dim: int, codecs: list[str]) -> dict[str, Path]:
    """Every (feature, codec) artifact, built once and reused from `cache`: {table name: dir}."""
    import runtime

    paths = {}
    for feature, n in enumerate(rows):
        for codec in codecs:
            path = cache / codec / f"c{feature}"
            if not (path / "manifest.json").exists():
                table = runtime.compress(source_rows(feature, n, dim), codec, version=f"{codec}-{n}-{dim}")
                table.save(path)
            paths[table_name(feature, codec)] = path
    return paths


def _power_law_exponent(mean: float, top: int) -> float:
    """s with E[L] = mean for p(L) ∝ L^-s on 1..top (bisection; E[L] falls as s grows)."""
    lengths = np.arange(1, top + 1, dtype=np.float64)
    lo, hi = 0.0, 4.0
    for _ in range(60):
        s = (lo + hi) / 2
        p = lengths**-s
        if (lengths * p).sum() / p.sum() > mean:
            lo = s
        else:
            hi = s
    return (lo + hi) / 2


def make_requests(rows: list[int], batch: int, count: int, seed: int = 0) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`count` requests, each [(ids int64 (n_f,), lengths int64 (B,)) for every feature]."""
    rng = np.random.default_rng(seed)
    support = np.arange(1, MAX_POOL + 1)
    pool_p = support ** -_power_law_exponent(MEAN_POOL, MAX_POOL)
    pool_p /= pool_p.sum()
    id_cdfs = {}
    for n in set(rows):
        p = np.arange(1, n + 1, dtype=np.float64) ** -ID_SKEW
        id_cdfs[n] = (np.cumsum(p) / p.sum(), np.random.default_rng(n).permutation(n))
    requests = []
    for _ in range(count):
        features = []
        for n in rows:
            lengths = rng.choice(support, size=batch, p=pool_p).astype(np.int64)
            cdf, perm = id_cdfs[n]
            ranks = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), n - 1)
            features.append((perm[ranks].astype(np.int64), lengths))
        requests.append(features)
    return requests


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lengths.shape[0], np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return offsets


def summarize(latencies: list[float], elapsed: float) -> dict[str, float]:
    lat = np.array(latencies) * 1e3
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests": len(lat),
    }


# ---- loads (in a process of their own: `python -m benchmarks.dlrm_bench load ...`) ---------------
def _time_for(call: Any, first: int, seconds: float, latencies: list[float]) -> tuple[int, float]:
    """call(first), call(first + 1), ... one at a time for `seconds`, each one's seconds appended
    to latencies; returns how many calls were made and the seconds they took in all."""
    started = time.perf_counter()
    deadline = started + seconds
    made = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        call(first + made)
        latencies.append(time.perf_counter() - start)
        made += 1
    return made, time.perf_counter() - started


def _timed(call: Any, requests: list[Any], seconds: float) -> dict[str, float]:
    call(requests[-1])  # untimed: first-call costs (compilation, connection) are not the steady state
    latencies: list[float] = []
    _, elapsed = _time_for(lambda i: call(requests[i % len(requests)]), 0, seconds, latencies)
    return summarize(latencies, elapsed)


TRANSPORTS = ("grpc_multi", "http_multi", "grpc_singles")


def _clients(grpc_target: str, http_target: str, codec: str, batch: int, max_rows: int) -> dict[str, Any]:
    """For every transport, a call that sends one prepared request (by index) and returns the
    answer as (B, 26 × dim) float32, and a close; the requests are serialized up front."""
    import grpc
    import urllib3

    from service.rpc.generated import embserve_pb2 as pb
    from service.rpc.generated import embserve_pb2_grpc as pb_grpc
    from service.rpc.servicers import array_to_tensor

    rows = table_rows(max_rows)
    names = [table_name(f, codec) for f in range(len(rows))]
    requests = make_requests(rows, batch, 8)
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]

    multi = [
        pb.MultiLookupRequest(
            tables=[
                pb.MultiLookupEntry(table=t, ids=array_to_tensor(ids), lengths=array_to_tensor(lengths))
                for t, (ids, lengths) in zip(names, req, strict=True)
            ],
            concat=True,
        )
        for req in requests
    ]
    channel = grpc.insecure_channel(grpc_target, options=options)
    stub = pb_grpc.EmbeddingServiceStub(channel)

    def grpc_multi(i: int) -> np.ndarray:
        answer = stub.MultiLookup(multi[i]).concatenated
        return np.frombuffer(answer.data, "<f4").reshape(list(answer.shape))

    host, port = http_target.removeprefix("http://").split(":")
    pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1)
    posts = []
    for req in requests:
        described = [
            {"table": t, "ids": ids.shape[0], "lengths": batch} for t, (ids, _) in zip(names, req, strict=True)
        ]
        body = b"".join(ids.astype("<i8").tobytes() + lengths.astype("<i8").tobytes() for ids, lengths in req)
        headers = {
            "content-type": "application/octet-stream",
            "X-Embserve-Tables": json.dumps({"tables": described, "concat": True}),
        }
        posts.append((body, headers))

    def http_multi(i: int) -> np.ndarray:
        r = pool.urlopen("POST", "/v1/lookup", body=posts[i][0], headers=posts[i][1])
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.data[:300]!r}")
        return np.frombuffer(bytes(r.data), "<f4").reshape(batch, -1)

    singles = [
        [
            pb.LookupRequest(table=t, ids=array_to_tensor(ids), offsets=array_to_tensor(offsets_of(lengths)))
            for t, (ids, lengths) in zip(names, req, strict=True)
        ]
        for req in requests
    ]
    # the 26 calls go out at once on one grpc.aio channel, from an event loop kept for the run
    loop = asyncio.new_event_loop()
    aio_channel = loop.run_until_complete(_open_aio_channel(grpc_target))
    aio_stub = pb_grpc.EmbeddingServiceStub(aio_channel)

    async def all_singles(calls: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(aio_stub.Lookup(c) for c in calls)))

    def grpc_singles(i: int) -> np.ndarray:
        answers = loop.run_until_complete(all_singles(singles[i]))
        parts = [np.frombuffer(r.embeddings.data, "<f4").reshape(list(r.embeddings.shape)) for r in answers]
        return np.concatenate(parts, axis=1)

    def close() -> None:
        channel.close()
        loop.run_until_complete(aio_channel.close())
        loop.close()
        pool.close()

    calls = {"grpc_multi": grpc_multi, "http_multi": http_multi, "grpc_singles": grpc_singles}
    return {"calls": calls, "count": len(requests), "close": close}


async def _open_aio_channel(target: str) -> Any:
    import grpc

    return grpc.aio.insecure_channel(target)


def load(
    grpc_target: str, http_target: str, codec: str, batch: int, seconds: float, max_rows: int, check: str, rounds: int
) -> dict[str, Any]:
    """Every transport at concurrency 1, `seconds` each, taken in `rounds` alternating slices (the
    order turning each round) so a burst of load from elsewhere on a shared machine falls on all
    of them alike; each one's first answer is written to `check`/<transport>.npy for verification."""
    clients = _clients(grpc_target, http_target, codec, batch, max_rows)
    calls: dict[str, Any] = clients["calls"]
    count: int = clients["count"]
    try:
        for kind, call in calls.items():
            np.save(Path(check) / f"{kind}.npy", call(0))
            call(count - 1)  # untimed: first-call costs (connection, compilation) are not the steady state
        latencies: dict[str, list[float]] = {kind: [] for kind in calls}
        spent = dict.fromkeys(calls, 0.0)
        done = dict.fromkeys(calls, 0)
        for round_ in range(rounds):
            for kind in TRANSPORTS[round_ % 3 :] + TRANSPORTS[: round_ % 3]:
                call = calls[kind]
                made, elapsed = _time_for(lambda i, c=call: c(i % count), done[kind], seconds / rounds, latencies[kind])
                done[kind] += made
                spent[kind] += elapsed
        return {kind: summarize(latencies[kind], spent[kind]) for kind in calls}
    finally:
        clients["close"]()


def run_load(
    grpc_target: str, http_target: str, codec: str, batch: int, seconds: float, max_rows: int, check: Path, rounds: int
) -> Any:
    numbers = [str(batch), str(seconds), str(max_rows), str(check), str(rounds)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.dlrm_bench", "load", grpc_target, http_target, codec, *numbers],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3 * seconds + 180,
    )
    if run.returncode != 0:
        raise RuntimeError(f"load failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---- in process ----------------------------------------------------------------------------------
def expected(tables: dict[str, Any], codec: str, request: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(B, 26 × dim) float32: the runtime's own pooled lookups, the oracle for every transport."""
    return np.concatenate(
        [
            tables[table_name(f, codec)].lookup_pooled(ids, offsets_of(lengths), "sum")
            for f, (ids, lengths) in enumerate(request)
        ],
        axis=1,
    )


def set_threads(threads: int) -> int:
    """Both in-process floors on `threads` threads (numba's pool and torch's intra-op pool);
    returns the number before, to restore."""
    import numba

    before = int(numba.get_num_threads())
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    return before


def in_process(tables: dict[str, Any], codec: str, requests: list[Any], seconds: float) -> dict[str, float]:
    return _timed(lambda req: expected(tables, codec, req), requests, seconds)


def fbgemm_floor(rows: list[int], dim: int, requests: list[Any], seconds: float) -> dict[str, float] | str:
    """FBGEMM's int8 row-wise EmbeddingBag over the same float rows, or why it could not run."""
    try:
        import torch

        prepack = torch.ops.quantized.embedding_bag_byte_prepack
        bag = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
    except (ImportError, AttributeError, RuntimeError) as exc:
        return f"not available: {exc}"
    packed = [prepack(torch.from_numpy(source_rows(f, n, dim))) for f, n in enumerate(rows)]
    prepared = [
        [(torch.from_numpy(ids), torch.from_numpy(offsets_of(lengths))) for ids, lengths in req] for req in requests
    ]

    def call(req: list[tuple[Any, Any]]) -> Any:
        return torch.cat(
            [bag(w, ids, off, False, 0, False, None, None, False) for w, (ids, off) in zip(packed, req, strict=True)],
            dim=1,
        )

    return _timed(call, prepared, seconds)


# ---- orchestration ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "load":
        grpc_target, http_target, codec_name, batch_size, seconds, max_rows, check_dir, rounds = argv[1:9]
        answer = load(
            grpc_target, http_target, codec_name, int(batch_size), float(seconds), int(max_rows), check_dir, int(rounds)
        )
        print(json.dumps(answer))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-rows", type=int, default=200_000, help="cap on every table's rows")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--codecs", default="int8,pq")
    parser.add_argument("--seconds", type=float, default=4, help="load seconds per transport, codec and B")
    parser.add_argument("--rounds", type=int, default=8, help="alternating slices the transports' seconds are taken in")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of the in-process floors (the server's own pool is unchanged)"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "embserve-dlrm-bench")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import runtime
    from tests.service.live import start_server

    rows = table_rows(args.max_rows)
    codecs = args.codecs.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    cache = args.cache / f"rows{args.max_rows}-d{DIM}"
    started = time.perf_counter()
    paths = build_tables(cache, rows, DIM, codecs)
    print(f"tables ready in {time.perf_counter() - started:.1f} s under {cache}", flush=True)
    tables = {name: runtime.load_table(path) for name, path in paths.items()}
    for table in tables.values():
        table.warmup()  # as the server does at load: no timed call pays JIT compilation
    results: list[dict[str, Any]] = []
    server_args = [a for name, path in paths.items() for a in ("--table", f"{name}={path}")]
    env = {"EMBSERVE_MAX_IDS": "10000000", "EMBSERVE_MAX_TABLES_PER_REQUEST": "64", "EMBSERVE_DEMO": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), server_args, env=env, ready_timeout=600)
        try:
            for codec in codecs:
                for batch in batches:
                    requests = make_requests(rows, batch, 8)
                    want = expected(tables, codec, requests[0])
                    row: dict[str, Any] = {
                        "codec": codec,
                        "batch": batch,
                        "ids_per_request": int(sum(ids.shape[0] for ids, _ in requests[0])),
                    }
                    loads = run_load(
                        server.grpc, server.http, codec, batch, args.seconds, args.max_rows, Path(tmp), args.rounds
                    )
                    for kind in TRANSPORTS:
                        check = Path(tmp) / f"{kind}.npy"
                        np.testing.assert_allclose(np.load(check), want, rtol=1e-5, atol=1e-5, err_msg=kind)
                        row[kind] = loads[kind]
                    before = set_threads(args.threads)
                    row["in_process"] = in_process(tables, codec, requests, args.seconds)
                    if codec == "int8":
                        row["fbgemm"] = fbgemm_floor(rows, DIM, requests, args.seconds)
                    set_threads(before)
                    singles = row["grpc_singles"]["rps"]
                    row["multi_over_singles"] = row["grpc_multi"]["rps"] / singles if singles else None
                    results.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.terminate()
    write_results(args, rows, results)
    return 0


def write_results(args: argparse.Namespace, rows: list[int], results: list[dict[str, Any]]) -> None:
    from benchmarks.workers_bench import cpu_name

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "rows": rows,
        "dim": DIM,
        "mean_pooling": MEAN_POOL,
        "max_pooling": MAX_POOL,
        "id_skew": ID_SKEW,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": 1,
        "in_process_threads": args.threads,
    }
    (args.out / "dlrm.json").write_text(json.dumps({**meta, "results": results}, indent=2))

    def cell(r: Any) -> str:
        if not isinstance(r, dict):
            return "—"
        return f"{r['rps']:.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})"

    lines = [
        f"DLRM-shaped request: 26 tables (Criteo Kaggle row counts capped at {args.max_rows:,}; "
        f"{sum(rows):,} rows in all), d={DIM}, Zipf pooling factors (mean {MEAN_POOL:g}), concurrency 1; "
        f"CPU: {meta['cpu']}, {meta['cores']} cores shared with other work (noisy).",
        "Cells: requests/s (p50 / p99 ms). One request = all 26 features of B samples. "
        f"In-process floors on {args.threads} thread(s).",
        "",
        "| codec | B | ids | gRPC multi | HTTP binary multi | gRPC 26 singles | multi / singles (gRPC) "
        "| in process (runtime) | FBGEMM int8 in process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = "—" if r["multi_over_singles"] is None else f"{r['multi_over_singles']:.1f}×"
        lines.append(
            f"| {r['codec']} | {r['batch']} | {r['ids_per_request']:,} | {cell(r['grpc_multi'])} | "
            f"{cell(r['http_multi'])} | {cell(r['grpc_singles'])} | {ratio} | {cell(r['in_process'])} | "
            f"{cell(r.get('fbgemm'))} |"
        )
    (args.out / "dlrm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
