"""Run a bounded, headless Locust load against embserve and judge it.

    python loadtests/run.py --duration 20 --users 4 --transport grpc --out results/load-grpc
    python loadtests/run.py --transport http --target http://10.0.0.5:8000 --max-p99-ms 50 --min-rps 200
    python loadtests/run.py --transport grpc --users 32 --out r --server-env EMBSERVE_SEARCH_BATCH_MAX_QUERIES=64

Without --target it starts a local server with the demo table on free loopback ports (with the
settings --server-env gives), and stops it afterwards. Writes into --out: Locust's CSV
(locust_stats.csv, locust_failures.csv, …), JSON (locust.json) and HTML (report.html) reports,
summary.json (requests, failures, rps and p50 / p95 / p99 per operation) and latency.png. Exits 1
on any failed request or breached threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

USERS = {
    "http": ["HttpJsonUser", "HttpOctetUser", "HttpOipUser"],
    "grpc": ["GrpcNativeUser", "GrpcOipUser"],
}


def start_local_server(workdir: Path, demo_rows: int, settings: dict[str, str]) -> tuple[Any, str, str]:
    from tests.service.live import start_server

    env = {"EMBSERVE_DEMO_ROWS": str(demo_rows), "EMBSERVE_MAX_CONCURRENCY": "256", **settings}
    server = start_server(workdir, [], env=env, ready_timeout=600)
    return server, server.http, server.grpc


def summarize(out: Path) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    with (out / "locust_stats.csv").open() as fh:
        for row in csv.DictReader(fh):
            name = row["Name"] if row["Type"] else "Aggregated"
            if not row["Request Count"]:
                continue
            operations[name if row["Name"] != "Aggregated" else "all"] = {
                "type": row["Type"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": float(row["50%"] or 0),
                "p95_ms": float(row["95%"] or 0),
                "p99_ms": float(row["99%"] or 0),
                "mean_ms": float(row["Average Response Time"] or 0),
            }
    return operations


def plot(out: Path, operations: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in operations if n != "all"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.6))
    for offset, (key, color) in enumerate((("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red"))):
        ax.barh(
            [i + offset * 0.27 for i in range(len(names))],
            [operations[n][key] for n in names],
            height=0.27,
            color=color,
            label=key[:3],
        )
    ax.set_yticks(
        [i + 0.27 for i in range(len(names))], [f"{n} ({operations[n]['rps']:.0f}/s)" for n in names], fontsize=8
    )
    ax.set_xlabel("latency (ms)")
    ax.legend()
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)


def grpc_beside(http_target: str) -> str:
    """host:8001 on the host of an http://host:port target: the server's default gRPC port, whatever
    its HTTP port (a target on port 18300 sent every gRPC call to its HTTP port)."""
    host = urlsplit(http_target).hostname or "127.0.0.1"
    return f"[{host}]:8001" if ":" in host else f"{host}:8001"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load (bounded)")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--transport", choices=sorted(USERS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--target", help="http://host:port of a running server (default: start one with the demo table)"
    )
    parser.add_argument("--grpc-target", help="host:port of its gRPC port (default: port 8001 of the --target host)")
    parser.add_argument("--table", default="demo")
    parser.add_argument("--batch", type=int, default=256, help="ids a lookup")
    parser.add_argument("--demo-rows", type=int, default=100_000, help="rows of the local demo table")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="EMBSERVE_NAME=VALUE",
        help="a setting of the local server (repeatable), e.g. EMBSERVE_SEARCH_BATCH_MAX_QUERIES=64",
    )
    parser.add_argument("--max-p99-ms", type=float, help="fail when any operation's p99 exceeds this")
    parser.add_argument("--min-rps", type=float, help="fail when total throughput is below this")
    parser.add_argument("--max-failure-ratio", type=float, default=0.0)
    args = parser.parse_args(argv)
    settings = dict(item.partition("=")[::2] for item in args.server_env)
    if any(not name.startswith("EMBSERVE_") for name in settings):
        parser.error("--server-env takes EMBSERVE_NAME=VALUE")
    if settings and args.target:
        parser.error("--server-env sets up the local server; with --target the server is yours")
    # Locust runs from the repository root: a relative --out means the caller's directory
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.target:
            http_url, grpc_url = args.target.rstrip("/"), args.grpc_target or grpc_beside(args.target)
        else:
            server, http_url, grpc_url = start_local_server(Path(tmp), args.demo_rows, settings)
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "EMBSERVE_LOAD_TABLE": args.table,
            "EMBSERVE_LOAD_BATCH": str(args.batch),
            "EMBSERVE_LOAD_GRPC": grpc_url,
        }
        # every user class gets at least one user (Locust gives none to a class past the user count)
        users = max(args.users, len(USERS[args.transport]))
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{args.duration}s",
            "--stop-timeout",
            "5",
            "--host",
            http_url,
            "--csv",
            str(args.out / "locust"),
            "--html",
            str(args.out / "report.html"),
            "--json-file",
            str(args.out / "locust"),
            "--only-summary",
            "--loglevel",
            "WARNING",
            *USERS[args.transport],
        ]
        started = time.monotonic()
        try:
            run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + 120)
        finally:
            if server is not None:
                server.terminate()
        (args.out / "locust.log").write_text(run.stdout + run.stderr)
    operations = summarize(args.out)
    total = operations.get("all", {"requests": 0, "failures": 0, "rps": 0.0})
    problems = []
    if run.returncode != 0:
        problems.append(f"locust exited with {run.returncode}")
    if total["requests"] == 0:
        problems.append("no request was made")
    elif total["failures"] / total["requests"] > args.max_failure_ratio:
        problems.append(f"{total['failures']} of {total['requests']} requests failed")
    if args.max_p99_ms is not None:
        slow = [n for n, op in operations.items() if n != "all" and op["p99_ms"] > args.max_p99_ms]
        problems += [f"{n}: p99 {operations[n]['p99_ms']:.1f} ms > {args.max_p99_ms} ms" for n in slow]
    if args.min_rps is not None and total["rps"] < args.min_rps:
        problems.append(f"throughput {total['rps']:.1f} req/s < {args.min_rps}")
    summary = {
        "transport": args.transport,
        "users": max(args.users, len(USERS[args.transport])),
        "duration_s": args.duration,
        "wall_s": round(time.monotonic() - started, 1),
        "target": http_url,
        "operations": operations,
        "passed": not problems,
        "problems": problems,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if any(n != "all" for n in operations):
        plot(args.out, operations)
    print(json.dumps(summary, indent=2))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
