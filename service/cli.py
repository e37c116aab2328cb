"""The `embserve` console script: compress / inspect / eval (from runtime) and serve."""

from __future__ import annotations

import argparse
import sys

from runtime import cli as offline
from runtime.table import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embserve", description="Compress and serve embedding tables.")
    parser.add_argument("--version", action="version", version=f"embserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return offline.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
