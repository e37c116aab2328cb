"""Offline commands of the `embserve` CLI: compress, inspect, eval.

`service.cli` adds `serve` and owns the entry point; these work without the service installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import artifact
from runtime.codecs import CODECS
from runtime.errors import EmbserveError, InvalidRequest
from runtime.table import Table, compress, load_table

# flag -> (codec option, type); a flag given for a codec without that option is an error
CODEC_FLAGS: dict[str, tuple[str, Any]] = {
    "subspaces": ("subspaces", int),
    "bits": ("bits", int),
    "opq": ("opq", bool),
    "rotate": ("rotate", bool),
    "train_rows": ("train_rows", int),
    "iterations": ("iterations", int),
    "opq_iterations": ("opq_iterations", int),
}


def add_commands(sub: Any) -> None:
    """Register compress / inspect / eval on an argparse subparsers object."""
    p = sub.add_parser("compress", help="compress a float32 .npy table into an artifact directory")
    p.add_argument("input", type=Path, help="(n, d) .npy file, float32 (other numeric dtypes are cast)")
    p.add_argument("--codec", required=True, choices=sorted(CODECS))
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--subspaces", type=int, help="pq: number of subspaces M (must divide d)")
    p.add_argument("--bits", type=int, help="pq: bits a code, 8 or 4")
    p.add_argument("--opq", action="store_const", const=True, help="pq: learn an OPQ rotation")
    p.add_argument("--rotate", action="store_const", const=True, help="binary: random rotation first")
    p.add_argument("--train-rows", type=int, help="pq: rows sampled for training (default 65536)")
    p.add_argument("--iterations", type=int, help="pq: Lloyd iterations (default 25)")
    p.add_argument("--opq-iterations", type=int, help="pq: OPQ alternations (default 20)")
    p.add_argument("--rerank", choices=sorted(CODECS), help="second, richer codec used to rescore candidates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", help="version label (default: creation time)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("inspect", help="describe an artifact and verify its checksums")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("eval", help="recall@k, reconstruction error, size and speed of an artifact (JSON)")
    p.add_argument("dir", type=Path)
    p.add_argument("--source", required=True, type=Path, help="the float32 .npy the artifact was made from")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--queries", type=Path, help="(q, d) .npy query vectors")
    group.add_argument("--query-ids", type=Path, help="(q,) .npy stored ids used as queries")
    p.add_argument("--truth", type=Path, help="(q, >=k) .npy true neighbour ids (default: exact search on --source)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--metric", default="ip", choices=["ip", "l2", "hamming"])
    p.add_argument("--oversample", type=int, default=1)
    p.add_argument("--exclude-self", action="store_true", help="with --query-ids: drop the query's own id")
    p.set_defaults(func=cmd_eval)


class _ProgressBar:
    """tqdm bars, one per stage, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            # encoding counts rows, so the bar shows rows/s
            unit = "rows" if stage == "encode" else "it"
            bar = self.bars[stage] = tqdm(
                total=total, desc=stage, unit=unit, unit_scale=unit == "rows", file=sys.stderr, leave=True
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: {exc}") from None


def cmd_compress(args: argparse.Namespace) -> int:
    x = _load_npy(args.input, "input")
    options = {opt: getattr(args, flag) for flag, (opt, _) in CODEC_FLAGS.items() if getattr(args, flag) is not None}
    bar = _ProgressBar(not args.quiet)
    start = time.perf_counter()
    try:
        table = compress(
            x,
            args.codec,
            rerank=args.rerank,
            seed=args.seed,
            version=args.version,
            source=str(args.input),
            progress=bar,
            **options,
        )
    finally:
        bar.close()
    table.save(args.out)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.out}: {table.rows} × {table.dim} {table.codec}"
        f"{' + ' + table.rerank.name if table.rerank else ''}, {table.nbytes} bytes "
        f"({table.compression_ratio:.2f}× smaller than fp32) in {elapsed:.1f} s"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    table = load_table(args.dir, verify=True)
    manifest = artifact.read_manifest(args.dir)
    info = table.describe()
    info["path"] = str(args.dir)
    info["format_version"] = manifest["format_version"]
    info["provenance"] = table.provenance
    info["arrays"] = {
        name: {"dtype": e["dtype"], "shape": e["shape"], "sha256": e["sha256"]}
        for name, e in manifest["arrays"].items()
    }
    info["checksums_verified"] = True
    print(json.dumps(info, indent=2))
    return 0


def relative_l2_error(x: np.ndarray, decode: Any, batch: int = 65536) -> float:
    """Mean over rows of |x - x̂| / |x| (rows of norm 0 are skipped)."""
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch):
        ids = np.arange(start, min(x.shape[0], start + batch), dtype=np.int64)
        rows = x[ids].astype(np.float32)
        norms = np.linalg.norm(rows, axis=1)
        err = np.linalg.norm(rows - decode(ids), axis=1)
        keep = norms > 0
        total += float((err[keep] / norms[keep]).sum())
        count += int(keep.sum())
    return total / max(count, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 0.0


def evaluate(
    table: Table,
    source: np.ndarray,
    *,
    queries: np.ndarray | None = None,
    query_ids: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    k: int = 10,
    metric: str = "ip",
    oversample: int = 1,
    exclude_self: bool = False,
) -> dict[str, Any]:
    """The numbers `embserve eval` prints; truth defaults to exact float32 search over `source`
    (by inner product when metric is hamming)."""
    if source.shape != (table.rows, table.dim):
        raise InvalidRequest(f"source has shape {source.shape} but the table is {(table.rows, table.dim)}")

    def run() -> tuple[np.ndarray, np.ndarray]:
        if query_ids is not None:
            return table.search_by_id(query_ids, k, metric, oversample, exclude_self)
        return table.search(queries, k, metric, oversample)

    run()  # warm-up: compile and fault in pages
    start = time.perf_counter()
    found, _ = run()
    elapsed = time.perf_counter() - start
    nq = found.shape[0]
    if truth is None:
        exact = compress(source, "fp32")
        truth_metric = "ip" if metric == "hamming" else metric
        if query_ids is not None:
            truth, _ = exact.search_by_id(query_ids, k, truth_metric, exclude_self=exclude_self)
        else:
            truth, _ = exact.search(queries, k, truth_metric)
    elif truth.shape[0] != nq or truth.ndim != 2 or truth.shape[1] < k:
        raise InvalidRequest(f"truth must be (q={nq}, >= k={k}), got {truth.shape}")
    primary_error = relative_l2_error(source, table.primary.decode)
    # without a rerank codec, lookups decode with the primary codec: one pass serves both figures
    served_error = primary_error if table.rerank is None else relative_l2_error(source, table.richest.decode)
    return {
        "codec": table.codec,
        "params": table.params,
        "rerank": table.rerank.name if table.rerank else None,
        "metric": metric,
        "k": k,
        "oversample": oversample,
        "queries": nq,
        "recall_at_k": round(recall_at_k(found, truth, k), 4),
        "rel_l2_error": round(served_error, 5),
        "primary_rel_l2_error": round(primary_error, 5),
        "nbytes": table.nbytes,
        "fp32_nbytes": table.fp32_nbytes,
        "compression_ratio": round(table.compression_ratio, 3),
        "search_ms_per_query": round(1000 * elapsed / max(nq, 1), 4),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    table = load_table(args.dir)
    source = np.ascontiguousarray(_load_npy(args.source, "source"), dtype=np.float32)
    queries = _load_npy(args.queries, "queries") if args.queries else None
    query_ids = _load_npy(args.query_ids, "query ids") if args.query_ids else None
    truth = _load_npy(args.truth, "truth") if args.truth else None
    result = evaluate(
        table,
        source,
        queries=queries,
        query_ids=query_ids,
        truth=truth,
        k=args.k,
        metric=args.metric,
        oversample=args.oversample,
        exclude_self=args.exclude_self,
    )
    print(json.dumps(result))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a typed error becomes a one-line message and exit status 2."""
    try:
        return int(args.func(args))
    except EmbserveError as exc:
        print(f"embserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
