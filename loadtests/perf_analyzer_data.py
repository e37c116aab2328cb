"""Write perf_analyzer input data (--input-data FILE): batches of popularity-skewed ids.

python loadtests/perf_analyzer_data.py --rows 100000 --batch 256 --out /tmp/ids.json
perf_analyzer -m demo -u 127.0.0.1:8001 -i grpc --input-data /tmp/ids.json --concurrency-range 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, required=True, help="rows of the served table")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    p = np.arange(1, args.rows + 1, dtype=np.float64) ** -1.1
    p /= p.sum()
    perm = rng.permutation(args.rows)
    data = [
        {"ids": {"content": perm[rng.choice(args.rows, args.batch, p=p)].tolist(), "shape": [args.batch]}}
        for _ in range(args.batches)
    ]
    args.out.write_text(json.dumps({"data": data}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
