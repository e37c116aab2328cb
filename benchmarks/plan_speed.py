"""Planning time against compression time: `runtime.plan` must take well under what building the
planned table takes (the budget issue's target), measured on a synthetic table with Zipf lookup
frequencies at 1/16 of its float32 bytes.

    python -m benchmarks.plan_speed [--rows 1000000] [--dim 128] [--fraction 16]
Writes plan_speed.json and plan_speed.md under --out (benchmarks/results)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.workers_bench import cpu_name


def synthetic(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A low-rank signal plus noise (rows, dim) float32, and Zipf(1.2) lookup counts (rows,)."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((rows, 16), dtype=np.float32) @ rng.standard_normal((16, dim), dtype=np.float32)
    x = (signal + 0.3 * rng.standard_normal((rows, dim), dtype=np.float32)).astype(np.float32)
    return x, rng.zipf(1.2, rows).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--fraction", type=int, default=16, help="budget = float32 bytes / fraction")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import runtime
    from runtime import planner

    x, freq = synthetic(args.rows, args.dim)
    budget = args.rows * args.dim * 4 // args.fraction
    start = time.perf_counter()
    plan = planner.plan(x, budget, freq=freq)
    planned = time.perf_counter() - start
    start = time.perf_counter()
    table = runtime.compress(x, tiers=plan.tier_specs())
    built = time.perf_counter() - start
    report = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "rows": args.rows,
        "dim": args.dim,
        "budget_bytes": budget,
        "plan_s": planned,
        "build_s": built,
        "ratio": planned / built,
        "table_bytes": table.nbytes,
        "tiers": [f"{t.rows}× {t.primary.name}" for t in table.tiers],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    md = "\n".join(
        [
            "# Planning time against building the planned table",
            "",
            f"CPU: {report['cpu']} ({report['cores']} cores). Table: {args.rows:,} × {args.dim} float32 "
            f"(low-rank signal + noise), Zipf(1.2) frequencies, budget 1/{args.fraction} of float32 "
            f"({budget:,} B).",
            "",
            "| step | seconds |",
            "|---|---|",
            f"| `runtime.plan` | {planned:.1f} |",
            f"| `runtime.compress` of the plan | {built:.1f} |",
            f"| plan / build | {report['ratio']:.2f} |",
            "",
            f"Plan: {', '.join(report['tiers'])}; table {table.nbytes:,} B ≤ budget: {table.nbytes <= budget}.",
            "",
        ]
    )
    (args.out / "plan_speed.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
