"""Budgeted tables on MovieLens-1M (../shared/data/ml1m-als64): the planner against the best single
codec at budgets of 1/4, 1/8, 1/16 and 1/32 of the float32 item table's bytes.

For each budget: user->item Recall@20 and NDCG@20 (the README quality table's protocol: all items
ranked by <user, item>, train items excluded) of (a) the planned table (item_freq.npy as lookup
frequencies; and again with 300 sampled user vectors as the planner's --queries), (b) the best
single codec of the planner's default menu that fits the same budget (every entry that fits is
built and measured; the best Recall@20 is reported), (c) float32. Each table's bytes are split
into per-row codes and fixed costs (trained state: codebooks, inner-product tables, projections;
tier index) to show where small budgets go.

    python -m benchmarks.quality --section budget [--data DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import runtime
from benchmarks.perf import machine
from runtime import planner

FRACTIONS = (4, 8, 16, 32)


def decoded_quality(
    items_hat: np.ndarray, users: np.ndarray, seen: np.ndarray, truth: np.ndarray, k: int = 20
) -> tuple[float, float]:
    """Recall@k, NDCG@k of ranking all items by users @ items_hat.T; seen/truth (users, items) bool."""
    scores = users @ items_hat.T
    scores[seen] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(truth, top, axis=1)
    counts = truth.sum(axis=1)
    keep = counts > 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(counts, k) - 1]
    recall = hits.sum(axis=1)[keep] / counts[keep]
    ndcg = (hits * discounts).sum(axis=1)[keep] / ideal[keep]
    return float(recall.mean()), float(ndcg.mean())


def _split(table: runtime.Table) -> tuple[int, int]:
    """-> (bytes of per-row codes, everything else: trained state, projections, tier index)."""
    rows = 0
    for tier in table.tiers:
        for codec in (tier.primary, tier.rerank):
            if codec is not None:
                held = codec.held_arrays()
                rows += sum(a.nbytes for n, a in held.items() if n in codec.row_arrays or n == "blocked_codes")
    return rows, table.nbytes - rows


def _label(tier: dict[str, Any]) -> str:
    skip = {"rows", "share", "nbytes", "est_error", "codec", "dim"}
    options = "".join(f" {k}={v}" for k, v in tier.items() if k not in skip)
    return f"{tier['codec']}{options} @{tier['dim']}d"


def _row(label: str, budget: int, table: runtime.Table, quality: tuple[float, float], **extra: Any) -> dict[str, Any]:
    codes, fixed = _split(table)
    return {
        "config": label,
        "budget": budget,
        "nbytes": table.nbytes,
        "code_bytes": codes,
        "fixed_bytes": fixed,
        "rec_recall_at_20": quality[0],
        "rec_ndcg_at_20": quality[1],
        **extra,
    }


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as the README's markdown table."""
    lines = [
        "| budget (bytes) | table | Recall@20 | NDCG@20 | bytes held (codes + fixed) | tiers (rows × entry) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fraction, label = r["config"].split(" ", 1)
        lines.append(
            f"| {fraction}: {r['budget']:,} | {label} | {r['rec_recall_at_20']:.4f} | {r['rec_ndcg_at_20']:.4f} | "
            f"{r['nbytes']:,} ({r['code_bytes']:,} + {r['fixed_bytes']:,}) | {r['tiers']} |"
        )
    return "\n".join(lines) + "\n"


def run(data: Path, out: Path) -> list[dict[str, Any]]:
    items = np.load(data / "item_emb.npy")
    users = np.load(data / "user_emb.npy")
    freq = np.load(data / "item_freq.npy")
    train, test = np.load(data / "train.npz"), np.load(data / "test.npz")
    seen = np.zeros((users.shape[0], items.shape[0]), bool)
    seen[train["user"], train["item"]] = True
    truth = np.zeros_like(seen)
    truth[test["user"], test["item"]] = True
    sample_users = users[np.random.default_rng(0).choice(users.shape[0], 300, replace=False)]
    all_ids = np.arange(items.shape[0], dtype=np.int64)
    fp32 = runtime.compress(items, "fp32")
    reference = decoded_quality(items, users, seen, truth)

    # every default-menu entry as a one-tier table, built and measured once
    singles = []
    for spec in planner.default_menu(items.shape[1]):
        entry = planner.parse_menu([spec], items.shape[1])[0]
        table = runtime.compress(items, tiers=[{"rows": {"start": 0, "stop": items.shape[0]}, **entry.spec()}])
        singles.append((entry.label, table, decoded_quality(table.lookup(all_ids), users, seen, truth)))
        print(f"single {entry.label}: {table.nbytes:,} B, Recall@20 {singles[-1][2][0]:.4f}", flush=True)

    rows: list[dict[str, Any]] = []
    for fraction in FRACTIONS:
        budget = items.nbytes // fraction
        for label, queries in (("plan", None), ("plan + user queries", sample_users)):
            start = time.perf_counter()
            table = planner.compress_to_budget(items, budget, freq, queries=queries)
            seconds = time.perf_counter() - start
            assert table.nbytes <= budget
            plan = table.provenance["plan"]
            tiers = "; ".join(f"{t['rows']}× {_label(t)}" for t in plan["tiers"])
            quality = decoded_quality(table.lookup(all_ids), users, seen, truth)
            rows.append(
                _row(
                    f"1/{fraction} {label}",
                    budget,
                    table,
                    quality,
                    tiers=tiers,
                    est_error=plan["est_error"],
                    measured_error=plan["measured_error"],
                    plan_recall=plan["recall"],
                    plan_and_compress_seconds=round(seconds, 2),
                )
            )
        fitting = [(lab, t, q) for lab, t, q in singles if t.nbytes <= budget]
        if fitting:
            lab, t, q = max(fitting, key=lambda s: s[2][0])
            rows.append(_row(f"1/{fraction} best single codec", budget, t, q, tiers=lab))
        rows.append(_row(f"1/{fraction} float32", budget, fp32, reference, tiers="fp32 (over the budget)"))
        for row in rows[-4:]:
            print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**machine(), "note": "shared 2-core machine (noisy timings)", "rows": rows}
    (out / "budget.json").write_text(json.dumps(meta, indent=2))
    text = render(rows)
    (out / "budget.md").write_text(text)
    print(text)
    return rows
