"""Compression quality on the real MovieLens-1M ALS tables (../shared/data/ml1m-als64).

For each codec configuration: the numbers `embserve eval` prints for item-to-item search against
the dataset's exact top-10 (recall@10, excluding the query row), and the user->item
recommendation quality (Recall@20, NDCG@20; user table exact, item table compressed, train items
excluded) against the uncompressed 0.2511 / 0.3552. Faiss IndexPQ with the same M and bits is
measured beside our PQ on the same data when faiss is installed.

    python -m benchmarks.quality [--data DIR] [--out benchmarks/results] [--section codecs|budget|all]
Writes quality.json, quality_rq.json (rq against its peers) and quality.md into --out; the budget
section (`benchmarks.budget_quality`: planned tables against the best single codec at 1/4 .. 1/32
of the float32 bytes) budget.json and budget.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import runtime
from runtime.cli import evaluate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml1m-als64"

CONFIGS: list[tuple[str, dict[str, Any], int]] = [
    ("fp16", {"codec": "fp16"}, 1),
    ("int8", {"codec": "int8"}, 1),
    ("int4", {"codec": "int4"}, 1),
    ("int2", {"codec": "int2"}, 1),
    ("binary", {"codec": "binary"}, 1),
    ("binary rotate", {"codec": "binary", "rotate": True}, 1),
    ("binary + int8 rerank ×10", {"codec": "binary", "rerank": "int8"}, 10),
    ("pq M=16 b=8", {"codec": "pq", "subspaces": 16, "bits": 8}, 1),
    ("pq M=16 b=8 opq", {"codec": "pq", "subspaces": 16, "bits": 8, "opq": True}, 1),
    ("pq M=32 b=4", {"codec": "pq", "subspaces": 32, "bits": 4}, 1),
    ("pq M=16 b=8 + int8 rerank ×10", {"codec": "pq", "subspaces": 16, "bits": 8, "rerank": "int8"}, 10),
    ("pq M=32 b=8", {"codec": "pq", "subspaces": 32, "bits": 8}, 1),
    ("rq M=15 b=8", {"codec": "rq", "codebooks": 15, "bits": 8}, 1),
    ("rq M=16 b=8", {"codec": "rq", "codebooks": 16, "bits": 8}, 1),
    ("rq M=32 b=4", {"codec": "rq", "codebooks": 32, "bits": 4}, 1),
    ("rq M=31 b=8", {"codec": "rq", "codebooks": 31, "bits": 8}, 1),
    ("rq M=32 b=8", {"codec": "rq", "codebooks": 32, "bits": 8}, 1),
]
# user->item recall@10 (the dataset's exact top-10 of user vectors over the items) at 16 and 32
# code bytes a row: our rq, Faiss's IndexResidualQuantizer and our PQ with the same M and bits
RQ_PEERS = [(16, 8), (32, 4), (32, 8)]


def recommendation_quality(
    table: runtime.Table, users: np.ndarray, train: Any, test: Any, oversample: int, k: int = 20
) -> tuple[float, float]:
    """Recall@k and NDCG@k with full ranking over all items; scores from the table's primary
    codes, then (with a rerank codec) the best k × oversample rescored by the rerank codec, as
    the service's search does."""
    n_users, n_items = users.shape[0], table.rows
    seen = [[] for _ in range(n_users)]  # type: list[list[int]]
    for u, i in zip(train["user"], train["item"], strict=True):
        seen[u].append(i)
    truth = [set() for _ in range(n_users)]  # type: list[set[int]]
    for u, i in zip(test["user"], test["item"], strict=True):
        truth[u].add(int(i))
    all_items = np.arange(n_items)
    recalls, ndcgs = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    batch = 256
    for start in range(0, n_users, batch):
        us = np.arange(start, min(n_users, start + batch))
        q = users[us].astype(np.float32)
        scores = table.primary.score(
            table.primary.prepare("ip", queries=q), np.broadcast_to(all_items, (us.size, n_items)).copy()
        )
        for row, u in enumerate(us):
            scores[row, seen[u]] = -np.inf
        depth = k * oversample if table.rerank is not None else k
        top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        if table.rerank is not None:
            rescored = table.rerank.score(table.rerank.prepare("ip", queries=q), top)
            order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
            top = np.take_along_axis(top, order, axis=1)
        for row, u in enumerate(us):
            if not truth[u]:
                continue
            hits = np.array([int(i) in truth[u] for i in top[row]], dtype=float)
            recalls.append(hits.sum() / len(truth[u]))
            ideal = discounts[: min(len(truth[u]), k)].sum()
            ndcgs.append(float((hits * discounts).sum() / ideal))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def faiss_pq_recall(items: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int, bits: int) -> float | None:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexPQ(items.shape[1], m, bits, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    _, found = index.search(items[queries], 11)
    found = [[i for i in row if i != q][:10] for row, q in zip(found, queries, strict=True)]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def faiss_rq_recall(
    items: np.ndarray, users: np.ndarray, truth: np.ndarray, m: int, bits: int, beam: int
) -> float | None:
    """Faiss IndexResidualQuantizer (inner product, decoding search), trained on all items as ours
    is (train_rows exceeds them), beam width as ours. One OpenMP thread: on a shared 2-core machine
    its spinning threads slow it several-fold, and only its recall is reported here."""
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    index = faiss.IndexResidualQuantizer(items.shape[1], m, bits, faiss.METRIC_INNER_PRODUCT)
    index.rq.max_beam_size = beam
    index.train(items)
    index.add(items)
    _, found = index.search(users, 10)
    return user_recall(found, truth)


def user_recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def rq_peers(items: np.ndarray, users: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for m, bits in RQ_PEERS:
        rq = runtime.compress(items, "rq", codebooks=m, bits=bits, seed=0)
        pq = runtime.compress(items, "pq", subspaces=m, bits=bits, seed=0)
        row = {
            "codebooks": m,
            "bits": bits,
            "code_bytes": m * bits // 8,
            "rq_bytes_per_row": rq.primary.arrays["codes"].shape[1],
            "ours_rq": user_recall(rq.search(users, 10)[0], truth),
            "faiss_rq": faiss_rq_recall(items, users, truth, m, bits, rq.primary.params["beam"]),
            "ours_pq": user_recall(pq.search(users, 10)[0], truth),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def our_pq_vector_recall(table: runtime.Table, items: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    """Same protocol as Faiss above: the query's float32 row as the query vector, self dropped."""
    found, _ = table.search(items[queries], 11)
    rows = [[i for i in row if i != q][:10] for row, q in zip(found, queries, strict=True)]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(rows, truth, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--section", choices=["codecs", "budget", "all"], default="all")
    args = parser.parse_args(argv)
    if not (args.data / "item_emb.npy").is_file():
        print(f"skip: dataset not found at {args.data}", file=sys.stderr)
        return 0
    if args.section in ("budget", "all"):
        from benchmarks.budget_quality import run as run_budget

        run_budget(args.data, args.out)
    if args.section == "budget":
        return 0
    items = np.load(args.data / "item_emb.npy")
    users = np.load(args.data / "user_emb.npy")
    queries = np.load(args.data / "gt_item2item_queries.npy")
    truth = np.load(args.data / "gt_item2item_top10_ids.npy")
    train, test = np.load(args.data / "train.npz"), np.load(args.data / "test.npz")
    rows: list[dict[str, Any]] = []
    exact = runtime.compress(items, "fp32")
    base_recall, base_ndcg = recommendation_quality(exact, users, train, test, 1)
    rows.append(
        {
            "config": "fp32 (reference)",
            "recall_at_10": 1.0,
            "rec_recall_at_20": base_recall,
            "rec_ndcg_at_20": base_ndcg,
            "rel_l2_error": 0.0,
            "bytes_per_row": 256.0,
            "nbytes": exact.nbytes,
            "compression_ratio": 1.0,
        }
    )
    for label, config, oversample in CONFIGS:
        options = dict(config)
        table = runtime.compress(items, options.pop("codec"), seed=0, **options)
        result = evaluate(table, items, query_ids=queries, truth=truth, k=10, oversample=oversample, exclude_self=True)
        rec_recall, rec_ndcg = recommendation_quality(table, users, train, test, oversample)
        row = {
            "config": label,
            "recall_at_10": result["recall_at_k"],
            "rec_recall_at_20": rec_recall,
            "rec_ndcg_at_20": rec_ndcg,
            "rel_l2_error": result["primary_rel_l2_error"],
            "bytes_per_row": sum(a.nbytes for a in table.primary.arrays.values() if a.shape[0] == table.rows)
            / table.rows,
            "nbytes": result["nbytes"],
            "compression_ratio": result["compression_ratio"],
        }
        if config["codec"] == "pq" and "rerank" not in config and not config.get("opq"):
            row["vector_query_recall_at_10"] = our_pq_vector_recall(table, items, queries, truth)
            row["faiss_indexpq_recall_at_10"] = faiss_pq_recall(
                items, queries, truth, config["subspaces"], config["bits"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    user_queries = users[np.load(args.data / "gt_user2item_queries.npy")].astype(np.float32)
    peers = rq_peers(items, user_queries, np.load(args.data / "gt_user2item_top10_ids.npy"))
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2))
    (args.out / "quality_rq.json").write_text(json.dumps(peers, indent=2))
    lines = [
        "| config | item→item recall@10 | user→item Recall@20 | NDCG@20 | rel. L2 error | code bytes/row "
        "| table bytes (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['recall_at_10']:.4f} | {r['rec_recall_at_20']:.4f} | {r['rec_ndcg_at_20']:.4f} | "
            f"{r['rel_l2_error']:.4f} | {r['bytes_per_row']:.1f} | {r['nbytes']:,} ({r['compression_ratio']:.2f}×) |"
        )
    faiss_rows = [r for r in rows if "faiss_indexpq_recall_at_10" in r]
    if faiss_rows:
        lines += ["", "| PQ, query = float32 row | ours recall@10 | Faiss IndexPQ recall@10 |", "|---|---|---|"]
        for r in faiss_rows:
            theirs = r["faiss_indexpq_recall_at_10"]
            faiss_text = "n/a" if theirs is None else f"{theirs:.4f}"
            lines.append(f"| {r['config']} | {r['vector_query_recall_at_10']:.4f} | {faiss_text} |")
    lines += [
        "",
        "| user→item recall@10 | code bytes (rq incl. norm) | ours rq | Faiss IndexResidualQuantizer | ours pq |",
        "|---|---|---|---|---|",
    ]
    for p in peers:
        faiss_text = "n/a" if p["faiss_rq"] is None else f"{p['faiss_rq']:.4f}"
        lines.append(
            f"| M={p['codebooks']} b={p['bits']} | {p['code_bytes']} ({p['rq_bytes_per_row']}) | {p['ours_rq']:.4f} | "
            f"{faiss_text} | {p['ours_pq']:.4f} |"
        )
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
