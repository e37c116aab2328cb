"""Residual quantization against its peers on a synthetic table (issue 14's speed and recall targets).

- train + encode: our `rq` against Faiss's IndexResidualQuantizer with the same M, bits and beam
  width, trained on the same sample and encoding the same rows, at 1 and 2 threads (numba, Faiss's
  OpenMP and numpy's OpenBLAS all held to the count; each count runs in its own process, since
  OpenBLAS reads its thread count at import);
- recall@10 of 1000 held-out query vectors (inner product, exact top-10 as truth) for our rq,
  Faiss's RQ and our PQ at the same code bytes, with the paired standard error of ours - Faiss, and
  the mean squared reconstruction error of the first 100,000 rows under both rqs;
- ADC top-10 search time of rq against PQ at equal stored bytes a row (rq's bytes include its norm
  code: M = 15 + 1 against PQ M = 16), medians of alternated runs.

    python -m benchmarks.rq_bench [--rows 200000] [--dim 128] [--threads 1,2] [--configs 16x8,32x8]
                                  [--no-adc] [--out benchmarks/results]
Writes rq.json and rq.md into --out. Without faiss-cpu installed the Faiss columns read n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    import importlib.util

    import numba
    import numpy as np

    import runtime
    from benchmarks.perf import alternate, machine, make_table, set_threads
    from runtime.codecs.rq import RqCodec, training_rows

    # Faiss is the peer, optional (the smoke test runs without it): its columns are then empty
    faiss: Any = importlib.import_module("faiss") if importlib.util.find_spec("faiss") is not None else None
    set_threads(threads)
    data = make_table(args.rows + args.queries, args.dim, seed=3)
    x, queries = data[: args.rows], data[args.rows :]
    # the rows our rq trains on when given every row and train_rows (its own draw, reproduced here
    # so Faiss trains on exactly these); the rows it holds out to judge refinement are not trained on
    picked, _ = training_rows(args.rows, min(args.rows, args.train_rows), np.random.default_rng(0))
    sample = x[picked]
    truth = np.concatenate([top10(queries[i : i + 100] @ x.T) for i in range(0, len(queries), 100)])

    def recalls(found: np.ndarray) -> np.ndarray:
        return np.array([len(set(f[:10]) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])

    # the reconstruction error of the first rows: a quality figure with far less sampling noise than
    # recall over a thousand queries
    judged = x[: min(args.rows, 100_000)]

    def squared_error(recon: np.ndarray) -> float:
        return float(np.mean(np.einsum("nd,nd->n", judged - recon, judged - recon, dtype=np.float64)))

    out: dict[str, Any] = {"threads": threads, "rows": args.rows, "dim": args.dim, "machine": machine(), "rq": []}
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    for m, bits in configs:
        start = time.perf_counter()
        state = RqCodec.train(x, seed=0, codebooks=m, bits=bits, beam=args.beam, train_rows=len(sample))
        trained = time.perf_counter()
        codec = RqCodec.from_parts(state, RqCodec.encode(state, x), args.dim)
        ours_train, ours_encode = trained - start, time.perf_counter() - trained
        row: dict[str, Any] = {
            "codebooks": m,
            "bits": bits,
            "beam": args.beam,
            "refine": state.params["refine"],
            "train_sample": len(sample),
            "ours_train_s": ours_train,
            "ours_encode_s": ours_encode,
            "faiss_train_s": None,
            "faiss_encode_s": None,
            "time_ratio": None,
        }
        index = None
        if faiss is not None:
            # inner product by lookup tables: the same scores as the default decoding search (which
            # decodes every row for every query: hours for thousands of queries over 1M rows)
            lut_search = faiss.AdditiveQuantizer.ST_LUT_nonorm
            index = faiss.IndexResidualQuantizer(args.dim, m, bits, faiss.METRIC_INNER_PRODUCT, lut_search)
            index.rq.max_beam_size = args.beam
            start = time.perf_counter()
            index.train(sample)
            trained = time.perf_counter()
            index.add(x)
            faiss_train, faiss_encode = trained - start, time.perf_counter() - trained
            row["faiss_train_s"], row["faiss_encode_s"] = faiss_train, faiss_encode
            row["time_ratio"] = (ours_train + ours_encode) / (faiss_train + faiss_encode)
        if threads > 1:
            ours_recalls = recalls(codec.search(queries, 10, "ip")[0])
            row["ours_recall_at_10"] = float(ours_recalls.mean())
            row["ours_squared_error"] = squared_error(codec.decode(np.arange(len(judged))))
            row["faiss_recall_at_10"] = row["faiss_squared_error"] = row["recall_difference_se"] = None
            if index is not None:
                faiss_recalls = recalls(index.search(queries, 10)[1])
                row["faiss_recall_at_10"] = float(faiss_recalls.mean())
                row["faiss_squared_error"] = squared_error(index.reconstruct_n(0, len(judged)))
                # paired over the same queries: the standard error of ours - Faiss
                row["recall_difference_se"] = float(np.std(ours_recalls - faiss_recalls) / np.sqrt(len(queries)))
            pq = runtime.compress(x, "pq", subspaces=m, bits=bits, seed=0, train_rows=len(sample))
            row["pq_recall_at_10"] = float(recalls(pq.search(queries, 10)[0]).mean())
            row["ours_bytes_per_row"] = codec.arrays["codes"].shape[1]
            row["code_bytes_per_row"] = m * bits // 8
        out["rq"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if threads > 1 and not args.no_adc:
        out["adc"] = _adc_times(x, queries, numba.get_num_threads(), alternate)
    return out


def top10(scores: Any) -> Any:
    """scores (q, n) float32 -> (q, min(10, n)) int64: each row's ten largest, best first."""
    import numpy as np

    part = np.argpartition(-scores, min(9, scores.shape[1] - 1), axis=1)[:, :10]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _adc_times(x: Any, queries: Any, threads: int, alternate: Any) -> list[dict[str, Any]]:
    """Top-10 ADC search, 16 queries a call: rq over M codes + its norm code against PQ with as
    many bytes a row. Tables trained briefly: scan speed does not depend on codebook quality."""
    import runtime

    rows = []
    for rq_m, pq_m, bits in ((15, 16, 8), (31, 32, 8), (30, 32, 4)):
        rq = runtime.compress(x, "rq", codebooks=rq_m, bits=bits, beam=1, iterations=2, refine=0, train_rows=8192)
        pq = runtime.compress(x, "pq", subspaces=pq_m, bits=bits, iterations=2, train_rows=8192)
        pool = [queries[i * 16 : (i + 1) * 16] for i in range(8)]
        times = alternate(
            [lambda i, t=rq, p=pool: t.search(p[i], 10), lambda i, t=pq, p=pool: t.search(p[i], 10)], reps=15, pool=8
        )
        rows.append(
            {
                "bytes_per_row": rq.primary.arrays["codes"].shape[1],
                "rq": f"M={rq_m} b={bits} + norm",
                "pq": f"M={pq_m} b={bits}",
                "rq_ms": times[0] * 1e3,
                "pq_ms": times[1] * 1e3,
                "ratio": times[0] / times[1],
                "threads": threads,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _markdown(runs: list[dict[str, Any]]) -> str:
    cpu = runs[0]["machine"]["cpu"]
    lines = [
        f"rq benchmark: {runs[0]['rows']:,} × {runs[0]['dim']} synthetic rows, the same training sample of "
        f"{runs[0]['rq'][0]['train_sample']:,} rows for both, {cpu}, shared machine (noisy)",
        "",
        "| threads | M | bits | beam | ours train + encode s | Faiss RQ train + add s | ratio (target ≤ 1.0) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rq"]:
            ours = r["ours_train_s"] + r["ours_encode_s"]
            if r["faiss_train_s"] is None:
                theirs_text, ratio_text = "n/a (Faiss not installed)", "n/a"
            else:
                theirs = r["faiss_train_s"] + r["faiss_encode_s"]
                theirs_text = f"{theirs:.1f} ({r['faiss_train_s']:.1f} + {r['faiss_encode_s']:.1f})"
                ratio_text = f"{r['time_ratio']:.2f}"
            lines.append(
                f"| {run['threads']} | {r['codebooks']} | {r['bits']} | {r['beam']} | {ours:.1f} "
                f"({r['ours_train_s']:.1f} + {r['ours_encode_s']:.1f}) | {theirs_text} | {ratio_text} |"
            )
    lines += [
        "",
        "| code bytes (ours incl. norm) | ours rq recall@10 | Faiss RQ recall@10 | ours − Faiss (± 1 s.e.) "
        "| our PQ recall@10 | ours rq squared error | Faiss RQ squared error |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rq"]:
            if "ours_recall_at_10" in r:
                faiss_text = difference_text = faiss_error_text = "n/a"
                if r["faiss_recall_at_10"] is not None:
                    faiss_text = f"{r['faiss_recall_at_10']:.4f}"
                    difference = r["ours_recall_at_10"] - r["faiss_recall_at_10"]
                    difference_text = f"{difference:+.4f} ± {r['recall_difference_se']:.4f}"
                    faiss_error_text = f"{r['faiss_squared_error']:.4f}"
                lines.append(
                    f"| {r['code_bytes_per_row']} ({r['ours_bytes_per_row']}) M={r['codebooks']} b={r['bits']} | "
                    f"{r['ours_recall_at_10']:.4f} | {faiss_text} | {difference_text} | {r['pq_recall_at_10']:.4f} "
                    f"| {r['ours_squared_error']:.4f} | {faiss_error_text} |"
                )
    adc = [a for run in runs for a in run.get("adc", [])]
    if adc:
        lines += ["", "| bytes/row | rq | pq | rq ms | pq ms | ratio (target ≤ 1.1) |", "|---|---|---|---|---|---|"]
    for a in adc:
        lines.append(
            f"| {a['bytes_per_row']} | {a['rq']} | {a['pq']} | {a['rq_ms']:.2f} | {a['pq_ms']:.2f} | {a['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--train-rows", type=int, default=16384)
    parser.add_argument("--beam", type=int, default=5, help="beam width for both (Faiss's default is 5)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--configs", default="16x8,32x8", help="codebooks x bits, comma separated")
    parser.add_argument("--no-adc", action="store_true", help="leave out the ADC search times")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_run(args, args.one)))
        return 0
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        argv_one = [sys.executable, "-m", "benchmarks.rq_bench", *(argv or sys.argv[1:]), "--one", str(threads)]
        done = subprocess.run(argv_one, env=env, check=True, stdout=subprocess.PIPE, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rq.json").write_text(json.dumps(runs, indent=2))
    text = _markdown(runs)
    (args.out / "rq.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
