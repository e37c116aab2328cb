"""The `embserve` console script: compress / inspect / eval (from runtime) and serve."""

from __future__ import annotations

import argparse
import sys

from runtime import cli as offline
from runtime.table import __version__
from service.sync import cli as sync_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embserve", description="Compress and serve embedding tables.")
    parser.add_argument("--version", action="version", version=f"embserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_commands(sub)
    sync_cli.add_commands(sub)
    p = sub.add_parser("serve", help="serve tables over HTTP and gRPC (the demo table when none is given)")
    p.add_argument("--table", action="append", dest="tables", metavar="NAME=DIR", help="a table to serve (repeatable)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--host")
    p.add_argument("--artifact-root", help="admin loads are confined below this directory")
    p.add_argument("--demo-rows", type=int, help="rows of the built-in demo table")
    p.add_argument("--grace-seconds", type=float, help="SIGTERM drain period")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before 429")
    p.add_argument("--log-level")
    p.add_argument("--redis-url", help="Redis of the version registry (redis:// or rediss://); unset: one node")
    p.add_argument("--replica-id", help="this replica's name in the registry (default: hostname-pid)")
    p.set_defaults(func=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    """Flags override EMBSERVE_* environment variables, which override defaults."""
    from pydantic import ValidationError

    from service.server import serve
    from service.settings import Settings

    names = (
        "tables",
        "http_port",
        "grpc_port",
        "host",
        "artifact_root",
        "demo_rows",
        "grace_seconds",
        "max_concurrency",
        "log_level",
        "redis_url",
        "replica_id",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        settings = Settings(**overrides)
        settings.table_specs()
        settings.check_redis()
    except (ValidationError, ValueError) as exc:
        print(f"embserve serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return offline.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
