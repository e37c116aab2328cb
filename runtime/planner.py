"""The budget planner: the best tiered table that fits a memory budget, chosen on the data.

Rows are sorted by lookup frequency, most frequent first; a plan cuts that order into contiguous
tiers, each stored with one entry of a menu (a codec, its options and a dimension: r < d is a PCA
projection of the tier). The planner
  1. counts bytes exactly before choosing: each codec's `held_bytes(rows, dim, params)` (tests hold
     it equal to the built codec's `nbytes`), each projection, and the table's own arrays (tier
     index, key map; `table_overhead`), so the chosen plan's bytes are the built table's bytes;
  2. measures, not guesses, each entry's error on each range of the order: every entry is trained
     once on a sample of the table and encodes a sample of each range; the range's error is the
     frequency-weighted squared reconstruction error of its sample scaled up to the range
     (costs are additive over ranges, as the weights are);
  3. searches ranges × entries by a dynamic programme over cut points at quantiles, with bytes
     rounded up to budget/4096 units (so whatever it finds fits), tiers formed by runs of ranges
     with one entry, each tier paying its trained state (codebooks, inner-product tables,
     projection) once; against it, every single entry over all rows (no tier index).
The result is a `Plan`; `compress_to_budget` builds it and refuses a table over the budget.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numba
import numpy as np

from runtime.codecs import codec_class
from runtime.codecs.fp16 import fp16_suspects
from runtime.errors import BudgetTooSmall, InvalidRequest, OverBudget, RowRefused
from runtime.kernels.hashmap import KeyMap
from runtime.table import Table, compress, tier_index_bytes
from runtime.tiers import Projection
from runtime.validation import (
    FP16_MAX,
    check_k,
    check_keys,
    check_queries,
    check_seed,
    check_table_input,
    parse_bytes,
)

FP16_CODECS = frozenset({"fp16", "int8", "int4", "int2", "binary"})
"""Codecs that store a table's values, or per-row scales of them, as fp16."""


def _storable(data: np.ndarray, entries: list[MenuEntry]) -> list[MenuEntry]:
    """The entries that can store data (n, d) float32. An fp16 codec over the table's own values
    asks the codec (`refuse_unstorable`: values past fp16's range or too small for it) about the
    rows any such codec may refuse (`fp16_suspects`, one pass); over projected values, they must
    be within fp16's range, which the largest distance of a row from the mean bounds (how small
    they are is measured on the sample, `_measure`)."""
    refusals: dict[str, str | None] = {}  # codec -> why it cannot store the table's own values
    spread: float | None = None
    suspects: np.ndarray | None = None  # the rows any fp16 codec may refuse, found in one pass
    reasons: dict[str, None] = {}  # why entries were dropped, in order, once each
    kept = []
    for entry in entries:
        if entry.codec in FP16_CODECS and entry.dim == entry.table_dim:
            if entry.codec not in refusals:
                suspects = _fp16_suspects(data) if suspects is None else suspects
                try:
                    codec_class(entry.codec).refuse_unstorable(data[suspects])
                    refusals[entry.codec] = None
                except RowRefused as exc:
                    refusals[entry.codec] = str(exc.moved(int(suspects[exc.row])))
            reason = refusals[entry.codec]
        elif entry.codec in FP16_CODECS:
            spread = _spread(data) if spread is None else spread
            reason = f"its values projected may pass fp16's ±{FP16_MAX:g}" if spread > FP16_MAX else None
        else:
            reason = None
        if reason is None:
            kept.append(entry)
        else:
            reasons[reason] = None
    if not kept:
        raise InvalidRequest(
            f"no menu entry can store this table ({'; '.join(reasons)}); add fp32, pq, rq or shared entries"
        )
    return kept


def _fp16_suspects(data: np.ndarray, step: int = 65536) -> np.ndarray:
    """`fp16_suspects` of data (n, d) float32, a block of rows at a time -> row indices (m,)."""
    found = [start + fp16_suspects(data[start : start + step]) for start in range(0, len(data), step)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _spread(data: np.ndarray, step: int = 65536) -> float:
    """The largest distance of a row of data (n, d) from the mean, a block of rows at a time."""
    mean = data.mean(axis=0)
    return max(float(np.linalg.norm(data[a : a + step] - mean, axis=1).max()) for a in range(0, len(data), step))


BUDGET_STEPS = 4096
"""The DP counts bytes in units of budget / BUDGET_STEPS, every cost rounded up."""
TRAIN_ROWS = 2048
EVAL_ROWS = 256
"""Rows of each range encoded to measure an entry's error there."""
ESTIMATE_ITERATIONS = 5
TIER_COST = 1e-6
"""Objective charged for each tier (relative error): of two plans that differ less, the one of
fewer tiers (fewer scans a search) wins, and noise between ranges does not split tiers."""
UNWEIGHTED_SHARE = 1e-3
"""The objective adds this share of the unweighted error, so rows of zero frequency still prefer
the more faithful of two entries of equal weighted error."""
ROW_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WEIGHT_QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def against_fp32(ratio: float) -> str:
    """A table's size next to float32's, given fp32 bytes / its bytes: a small table whose trained
    state (codebooks, inner-product tables) outweighs its codes is larger, and says so."""
    if ratio >= 1.005:
        return f"{ratio:.2f}× smaller than fp32"
    if ratio <= 0.995:
        return f"{1 / ratio:.2f}× larger than fp32"
    return "the size of fp32"


def parse_size(text: Any) -> int:
    """'512MiB', '2GB', '1e9', 4096 -> bytes (int > 0, `parse_bytes`); anything else is refused."""
    size = parse_bytes(text)
    if size is None:
        raise InvalidRequest(f"budget must be a size such as 512MiB, 2GB or 1e9, got {text!r}")
    if size < 1:
        raise InvalidRequest(f"budget must be a positive size of at least one byte, got {text!r}")
    return size


def _sig(value: float) -> float:
    """value to 6 significant digits, for JSON."""
    return float(f"{value:.6g}")


def table_overhead(rows: int, tiers: int, keyed: bool) -> int:
    """Bytes a table holds beside its tiers: with several tiers the tier index (`tier_index_bytes`);
    keyed, the keys (int64) and the key map's slots."""
    index = tier_index_bytes(rows, tiers)
    keys = rows * 8 + KeyMap.bytes_for(rows) if keyed else 0
    return index + keys


@dataclass(frozen=True)
class MenuEntry:
    """One way to store a tier: codec with checked params, on `dim` dims (< the table's: PCA)."""

    codec: str
    options: dict[str, Any]
    params: dict[str, Any]
    dim: int
    table_dim: int

    @property
    def label(self) -> str:
        text = self.codec + "".join(f" {k}={v}" for k, v in self.options.items())
        return text + (f" @{self.dim}d" if self.dim != self.table_dim else "")

    def fixed_bytes(self) -> int:
        """Bytes a tier of this entry holds whatever its rows: trained state and projection."""
        projection = self.table_dim * 4 + self.table_dim * self.dim * 4 if self.dim != self.table_dim else 0
        return codec_class(self.codec).held_bytes(0, self.dim, self.params) + projection

    def nbytes(self, rows: int) -> int:
        """Exact bytes of a tier of `rows` rows."""
        return (
            self.fixed_bytes()
            + codec_class(self.codec).held_bytes(rows, self.dim, self.params)
            - (codec_class(self.codec).held_bytes(0, self.dim, self.params))
        )

    def min_rows(self) -> int:
        """Fewest rows this entry can be trained on: RQ's k-means learns a codebook of 2**bits
        codewords from as many rows; the other codecs train on any number."""
        return 1 << int(self.params["bits"]) if self.codec == "rq" else 1

    def spec(self) -> dict[str, Any]:
        """The tier object `compress(tiers=...)` takes, less its rows."""
        out: dict[str, Any] = {"codec": self.codec, **self.options}
        if self.dim != self.table_dim:
            out["dim"] = self.dim
        return out


def default_menu(dim: int) -> list[dict[str, Any]]:
    """fp32 on d; fp16, int8/4/2 and binary on d, 3d/4, d/2 and d/4 dims; 8-bit PQ with 4 and 8
    dims a subspace and 4-bit PQ with 2 and 4 on d, one of each on the reduced dimensions; 8-bit RQ
    with d/8 codebooks and 4-bit RQ with d/4 on d; shared rows (16, 256, 1024 centroids) on d.
    Entries whose options do not fit a dimension (PQ subspaces that do not divide it) are left out."""
    menu: list[dict[str, Any]] = [{"codec": "fp32"}]
    dims = sorted({dim, dim * 3 // 4, dim // 2, dim // 4} - {0}, reverse=True)
    for r in dims:
        reduced = {} if r == dim else {"dim": r}
        menu += [{"codec": name, **reduced} for name in ("fp16", "int8", "int4", "int2", "binary")]
        for bits, widths in ((8, (4, 8)), (4, (2, 4))) if r == dim else ((8, (4,)), (4, (2,))):
            for width in widths:
                m = r // width
                if m >= 1 and r % width == 0 and (bits == 8 or m % 2 == 0):
                    menu.append({"codec": "pq", "subspaces": m, "bits": bits, **reduced})
    # residual quantization on d: 8-bit with d/8 codebooks, 4-bit with d/4; without LISA
    # cross-codebook tables (table_limit 0: scoring by stored id decodes the query instead),
    # whose M^2 K^2 floats would outweigh a small table's codes
    for m, bits in ((dim // 8, 8), (dim // 4, 4)):
        if m >= 1 and (bits == 8 or m % 2 == 0):
            menu.append({"codec": "rq", "codebooks": m, "bits": bits, "table_limit": 0})
    menu += [{"codec": "shared", "centroids": c} for c in (16, 256, 1024)]
    return menu


def parse_menu(menu: Any, dim: int) -> list[MenuEntry]:
    """A list of {"codec", "dim" (int, or a fraction of d in (0, 1)), codec options} -> entries;
    an unknown codec or option, or a dimension out of range, is refused naming the entry."""
    if not isinstance(menu, list) or not menu:
        raise InvalidRequest("menu must be a non-empty list of entries such as {'codec': 'int8'}")
    entries = []
    for i, item in enumerate(menu):
        if not isinstance(item, dict) or not isinstance(item.get("codec"), str):
            raise InvalidRequest(f"menu[{i}] must be an object with a codec name, got {item!r}")
        options = {k: v for k, v in item.items() if k not in ("codec", "dim")}
        cls = codec_class(item["codec"])
        raw = item.get("dim", dim)
        if isinstance(raw, float) and 0 < raw < 1:
            raw = max(1, round(raw * dim))
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)) or not 1 <= raw <= dim:
            raise InvalidRequest(f"menu[{i}].dim must be 1..{dim} or a fraction in (0, 1), got {raw!r}")
        try:
            params = cls.check_options(int(raw), options)
            cls.held_bytes(0, int(raw), params)
        except InvalidRequest as exc:
            raise InvalidRequest(f"menu[{i}]: {exc}") from None
        except NotImplementedError as exc:
            raise InvalidRequest(f"menu[{i}]: {exc}; the planner cannot count it against a budget") from None
        entries.append(MenuEntry(item["codec"], options, params, int(raw), dim))
    return entries


def check_freq(freq: Any, rows: int) -> np.ndarray:
    """(rows,) non-negative finite lookup counts or rates -> float64 weights summing to 1
    (all zero, or none given: every row weighs the same)."""
    if freq is None:
        return np.full(rows, 1.0 / rows)
    arr = np.asarray(freq)
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        raise InvalidRequest(f"freq must be a 1-D numeric array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] != rows:
        raise InvalidRequest(f"freq has {arr.shape[0]} entries for a table of {rows} rows")
    values = arr.astype(np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InvalidRequest(f"freq[{pos}] = {arr[pos].item()!r}: frequencies must be finite and >= 0")
    # scaled by the largest first: summing counts near the float64 limit overflows to inf, and
    # every weight would be 0
    largest = values.max(initial=0.0)
    if largest == 0:
        return np.full(rows, 1.0 / rows)
    values /= largest
    return values / values.sum()


@dataclass(frozen=True)
class PlannedTier:
    """Rows order[start:stop] (by descending frequency) stored with `entry`."""

    start: int
    stop: int
    entry: MenuEntry
    nbytes: int
    share: float
    error: float

    def describe(self) -> dict[str, Any]:
        return {
            "rows": self.stop - self.start,
            "share": round(self.share, 6),
            **self.entry.spec(),
            "dim": self.entry.dim,
            "nbytes": self.nbytes,
            "est_error": _sig(self.error),
        }


@dataclass(frozen=True)
class Plan:
    """A tier assignment, its exact bytes and its estimated fitness.

    order (rows,) int64: rows by descending frequency (ties by ascending row); error: estimated
    frequency-weighted relative squared reconstruction error sum_i w_i |x_i - x̂_i|^2 /
    sum_i w_i |x_i|^2; fitness = 1 - error; recall: recall@k of the sample queries (when given)."""

    budget: int
    rows: int
    dim: int
    keyed: bool
    order: np.ndarray
    tiers: tuple[PlannedTier, ...]
    error: float
    recall: float | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    sample: tuple[np.ndarray, np.ndarray, float] | None = field(default=None, repr=False)
    """(rows measured, rows each stands for, weighted energy): to measure the built table alike."""

    @property
    def overhead(self) -> int:
        return table_overhead(self.rows, len(self.tiers), self.keyed)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tiers) + self.overhead

    @property
    def fitness(self) -> float:
        return 1.0 - self.error

    def tier_specs(self) -> list[dict[str, Any]]:
        """The `tiers` argument of `compress` (and the `--tiers` JSON): hottest tier first."""
        if len(self.tiers) == 1:
            return [{"rows": {"start": 0, "stop": self.rows}, **self.tiers[0].entry.spec()}]
        return [{"rows": np.sort(self.order[t.start : t.stop]).tolist(), **t.entry.spec()} for t in self.tiers]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (stored in the manifest's provenance as "plan")."""
        return {
            "budget": self.budget,
            "nbytes": self.nbytes,
            "fp32_nbytes": self.rows * self.dim * 4,
            "overhead_nbytes": self.overhead,
            "est_error": _sig(self.error),
            "fitness": _sig(self.fitness),
            "recall": None if self.recall is None else round(self.recall, 4),
            "tiers": [t.describe() for t in self.tiers],
        }

    def text(self) -> str:
        """The plan as a table for a terminal."""
        head = (
            f"{'tier':>4}  {'rows':>10}  {'share':>7}  {'codec and options':<30} {'dim':>4}  "
            f"{'bytes':>13}  {'est. error':>10}"
        )
        lines = [head, "-" * len(head)]
        for i, t in enumerate(self.tiers):
            options = " ".join(f"{k}={v}" for k, v in t.entry.options.items())
            name = f"{t.entry.codec} {options}".strip()
            lines.append(
                f"{i:>4}  {t.stop - t.start:>10,}  {100 * t.share:>6.2f}%  {name:<30} "
                f"{t.entry.dim:>4}  {t.nbytes:>13,}  {t.error:>10.6f}"
            )
        lines.append(f"{'':>4}  {'tier index and key map':<50} {'':>4}  {self.overhead:>13,}")
        lines.append(
            f"total {self.nbytes:,} bytes of a {self.budget:,}-byte budget "
            f"({against_fp32(self.rows * self.dim * 4 / self.nbytes)}); "
            f"est. weighted error {self.error:.6f}, fitness {self.fitness:.6f}"
            + ("" if self.recall is None else f", recall@10 of the sample queries {self.recall:.4f}")
        )
        return "\n".join(lines)


# ---- measuring ----------------------------------------------------------------------------------
def _cuts(weights_sorted: np.ndarray) -> np.ndarray:
    """Cut points (ascending, 0 and n included) in the frequency order: row fractions, cumulative
    weight quantiles and where zero frequency starts."""
    n = weights_sorted.shape[0]
    points = {0, n}
    points.update(round(f * n) for f in ROW_FRACTIONS)
    cumulative = np.cumsum(weights_sorted)
    points.update(int(np.searchsorted(cumulative, q * cumulative[-1])) + 1 for q in WEIGHT_QUANTILES)
    zero = np.flatnonzero(weights_sorted <= 0)
    if zero.size:
        points.add(int(zero[0]))
    return np.array(sorted(p for p in points if 0 <= p <= n), dtype=np.int64)


def _estimate_params(entry: MenuEntry) -> dict[str, Any]:
    params = dict(entry.options)
    for option in codec_class(entry.codec).options:
        if option.name == "train_rows":
            params["train_rows"] = min(int(entry.params["train_rows"]), TRAIN_ROWS)
        if option.name == "iterations":
            params["iterations"] = min(int(entry.params["iterations"]), ESTIMATE_ITERATIONS)
    return params


def _reconstructor(entry: MenuEntry, sample: np.ndarray, pca: Projection, seed: int) -> Any:
    """Train `entry` on sample (s, d) float32 -> a function rows (b, d) -> reconstructions (b, d).
    pca: the sample's full principal basis; a reduced entry keeps its first `dim` directions, as
    `Projection.fit(sample, dim)` would."""
    cls = codec_class(entry.codec)
    projection = None
    if entry.dim != entry.table_dim:
        projection = Projection(pca.mean, np.ascontiguousarray(pca.basis[:, : entry.dim]))
        sample = projection.to_tier(sample)
    state = cls.train(sample, seed=seed, **_estimate_params(entry))

    def rebuild(x: np.ndarray) -> np.ndarray:
        z = x if projection is None else projection.to_tier(x)
        codec = cls.from_parts(state, cls.encode(state, z), entry.dim)
        out = codec.decode(np.arange(x.shape[0], dtype=np.int64))
        return out if projection is None else projection.from_tier(out)

    return rebuild


@dataclass
class _Measured:
    cuts: np.ndarray
    weighted: np.ndarray  # (E, G) weighted squared error, relative to the weighted energy
    unweighted: np.ndarray  # (E, G) unweighted, relative to the unweighted energy
    rebuilders: list[Any]
    sample_rows: np.ndarray  # (s,) int64 global rows measured
    factor: np.ndarray  # (s,) float64: rows of its range a sampled row stands for
    energy: float  # sum_i w_i |x_i|^2
    refused: list[str | None]  # (E,) why an entry could not store the sample (None: it could)

    def subset(self, kept: list[int]) -> _Measured:
        """The measurements of entries `kept` only, in that order."""
        return replace(
            self,
            weighted=self.weighted[kept],
            unweighted=self.unweighted[kept],
            rebuilders=[self.rebuilders[e] for e in kept],
            refused=[self.refused[e] for e in kept],
        )


def _measure(x: np.ndarray, entries: list[MenuEntry], order: np.ndarray, weights: np.ndarray, seed: int) -> _Measured:
    # measuring is many kernel calls on a few thousand rows, where a parallel region's start and
    # join cost more than the work; numba's thread count is per calling thread, restored after
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return _measure_serial(x, entries, order, weights, seed)
    finally:
        numba.set_num_threads(threads)


def _measure_serial(
    x: np.ndarray, entries: list[MenuEntry], order: np.ndarray, weights: np.ndarray, seed: int
) -> _Measured:
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    cuts = _cuts(weights[order])
    train = x[np.sort(rng.choice(n, min(n, TRAIN_ROWS), replace=False))]
    norms = np.einsum("nd,nd->n", x, x).astype(np.float64)
    energy_w = max(float(weights @ norms), 1e-30)
    energy_u = max(float(norms.sum()), 1e-30)
    picks, scale = [], []
    for a, b in itertools.pairwise(cuts):
        take = min(b - a, EVAL_ROWS)
        picks.append(order[a + np.sort(rng.choice(b - a, take, replace=False))])
        scale.append((b - a) / take)
    sample_rows = np.concatenate(picks)
    rows = x[sample_rows]
    segment = np.repeat(np.arange(len(picks)), [p.size for p in picks])
    factor = np.repeat(np.array(scale), [p.size for p in picks])
    weighted = np.zeros((len(entries), len(picks)))
    unweighted = np.zeros((len(entries), len(picks)))
    rebuilders: list[Any] = []
    refused: list[str | None] = []
    pca = Projection.fit(train, train.shape[1], np.random.default_rng(seed))
    for e, entry in enumerate(entries):
        try:
            rebuild = _reconstructor(entry, train, pca, seed)
            diff = rows - rebuild(rows)
        except RowRefused as exc:
            rebuilders.append(None)
            refused.append(f"{entry.label}: {exc}")
            continue
        rebuilders.append(rebuild)
        refused.append(None)
        err = np.einsum("nd,nd->n", diff, diff).astype(np.float64) * factor
        weighted[e] = np.bincount(segment, err * weights[sample_rows], len(picks)) / energy_w
        unweighted[e] = np.bincount(segment, err, len(picks)) / energy_u
    return _Measured(cuts, weighted, unweighted, rebuilders, sample_rows, factor, energy_w, refused)


# ---- searching ----------------------------------------------------------------------------------
def _segment_bytes(entry: MenuEntry, rows: int) -> int:
    """Bytes `rows` more rows add to a tier of `entry`, so that the sum over a tier's ranges bounds
    its exact bytes from above: exact for codecs whose bytes grow by a fixed amount a row; for the
    others (a layout padded to blocks of rows), rounded up to whole blocks of 32 rows."""
    cls = codec_class(entry.codec)

    def held(r: int) -> int:
        return cls.held_bytes(r, entry.dim, entry.params)

    base, per_row = held(0), held(1) - held(0)
    if all(held(r) == base + r * per_row for r in (2, 31, 32, 33, 4097)):
        return rows * per_row
    return held(-(-rows // 32) * 32) - base


def _dp(
    entries: list[MenuEntry], cuts: np.ndarray, cost: np.ndarray, available: int
) -> list[tuple[int, int, int]] | None:
    """Minimum-cost runs of ranges: -> [(first range, stop range, entry)] or None when nothing fits
    in `available` bytes. cost (E, G) additive over ranges."""
    if available <= 0:
        return None
    unit = max(1, -(-available // BUDGET_STEPS))
    steps = available // unit
    n_e, n_g = cost.shape
    sizes = np.diff(cuts)
    fixed = np.array([-(-e.fixed_bytes() // unit) for e in entries], dtype=np.int64)
    per = np.array([[-(-_segment_bytes(e, int(m)) // unit) for m in sizes] for e in entries], dtype=np.int64)
    inf = np.inf

    def shifted(a: np.ndarray, by: int) -> np.ndarray:
        out = np.full(steps + 1, inf)
        if by <= steps:
            out[by:] = a[: steps + 1 - by]
        return out

    g = np.full((n_e, steps + 1), inf)
    for e in range(n_e):
        g[e] = shifted(np.zeros(steps + 1), int(fixed[e] + per[e, 0])) + cost[e, 0] + TIER_COST
    started = np.zeros((n_g, n_e, steps + 1), dtype=bool)
    came_from = np.zeros((n_g, steps + 1), dtype=np.int32)
    started[0] = True
    for s in range(1, n_g):
        best = g.min(axis=0)
        came_from[s] = g.argmin(axis=0)
        nxt = np.empty_like(g)
        for e in range(n_e):
            cont = shifted(g[e], int(per[e, s]))
            new = shifted(best, int(fixed[e] + per[e, s])) + TIER_COST
            started[s, e] = new < cont
            nxt[e] = np.minimum(cont, new) + cost[e, s]
        g = nxt
    e = int(g[:, steps].argmin())
    if not np.isfinite(g[e, steps]):
        return None
    runs: list[tuple[int, int, int]] = []
    b, stop = steps, n_g
    for s in range(n_g - 1, -1, -1):
        if started[s, e, b]:
            runs.append((s, stop, e))
            stop = s
            if s > 0:
                b -= int(fixed[e] + per[e, s])
                e = int(came_from[s, b])
        else:
            b -= int(per[e, s])
    return runs[::-1]


def _plan_from_runs(
    runs: list[tuple[int, int, int]],
    entries: list[MenuEntry],
    measured: _Measured,
    cost: np.ndarray,
    weights: np.ndarray,
    order: np.ndarray,
    budget: int,
    keyed: bool,
) -> tuple[float, Plan]:
    """-> (the objective the search minimised, the plan)."""
    cuts = measured.cuts
    cum = np.concatenate([[0.0], np.cumsum(weights[order])])
    tiers, objective = [], 0.0
    for first, stop, e in runs:
        a, b = int(cuts[first]), int(cuts[stop])
        share = float(cum[b] - cum[a])
        error = float(measured.weighted[e, first:stop].sum())
        tiers.append(PlannedTier(a, b, entries[e], entries[e].nbytes(b - a), share, error))
        objective += float(cost[e, first:stop].sum()) + TIER_COST
    plan = Plan(budget, order.shape[0], entries[0].table_dim, keyed, order, tuple(tiers), sum(t.error for t in tiers))
    return objective, plan


def _recall(x: np.ndarray, queries: np.ndarray, rebuilt: np.ndarray, k: int) -> float:
    truth = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]
    found = np.argsort(-(queries @ rebuilt.T), axis=1, kind="stable")[:, :k]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth, strict=True)]))


def _rebuild_all(x: np.ndarray, plan: Plan, entries: list[MenuEntry], measured: _Measured) -> np.ndarray:
    out = np.empty_like(x)
    for tier in plan.tiers:
        rows = plan.order[tier.start : tier.stop]
        out[rows] = measured.rebuilders[entries.index(tier.entry)](x[rows])
    return out


def plan(
    x: Any,
    budget_bytes: Any,
    freq: Any = None,
    keys: Any = None,
    menu: Any = None,
    queries: Any = None,
    *,
    k: int = 10,
    seed: int = 0,
) -> Plan:
    """The plan of least estimated frequency-weighted error whose table holds at most
    `budget_bytes` (a size: 512MiB, 2GB, 1e9) in memory. x (n, d) float32; freq (n,) lookup
    counts (None: uniform); keys (n,) int64 when the table will be keyed (the key map is counted);
    menu: entries as `default_menu` returns; queries (q, d): recall@k of plans against exact search
    breaks near-ties (plans within 10% of the least error) and is reported.
    Raises BudgetTooSmall naming the smallest budget any plan from the menu fits."""
    budget = parse_size(budget_bytes)
    data = check_table_input(x)
    seed = check_seed(seed)
    k = check_k(k)
    n, d = data.shape
    weights = check_freq(freq, n)
    keyed = keys is not None
    if keyed:
        key_array = check_keys(keys, "keys")
        if key_array.shape[0] != n:
            raise InvalidRequest(f"{key_array.shape[0]} keys for {n} rows")
        # as compress refuses them: a plan for keys that repeat could not be built
        repeated = KeyMap(key_array).duplicate
        if repeated >= 0:
            raise InvalidRequest(f"keys[{repeated}] = {int(key_array[repeated])} repeats an earlier key")
    query_array = None if queries is None else check_queries(queries, d)
    entries = parse_menu(default_menu(d) if menu is None else menu, d)
    # an entry that cannot be trained on this few rows (8-bit RQ on a table of 100) is in no
    # plan; measuring it raised, so a small table could not be planned with the default menu
    trainable = [e for e in entries if e.min_rows() <= n]
    if not trainable:
        raise InvalidRequest(
            f"no menu entry can be trained on {n} rows: {entries[0].label} needs at least {entries[0].min_rows()}"
        )
    entries = trainable
    # codecs that store values (or their scales) as fp16 cannot hold every table (values past its
    # range, or too small for it): measuring them raised, naming a codec the caller never chose
    entries = _storable(data, entries)
    single_bytes = [e.nbytes(n) + table_overhead(n, 1, keyed) for e in entries]
    if min(single_bytes) > budget:
        raise BudgetTooSmall(
            f"no plan fits {budget:,} bytes: the smallest table this menu makes of {n} × {d}"
            f"{' (keyed)' if keyed else ''} takes {min(single_bytes):,} bytes "
            f"({entries[int(np.argmin(single_bytes))].label}); give a budget of at least that"
        )
    # an entry whose trained state alone (codebooks, inner-product tables) is over the budget is
    # in no plan: not worth training to measure
    entries = [e for e in entries if e.fixed_bytes() + table_overhead(n, 1, keyed) <= budget]
    order = np.argsort(-weights, kind="stable").astype(np.int64)
    measured = _measure(data, entries, order, weights, seed)
    # a reduced entry checked by its sample: an fp16 codec over projected values too small for it
    kept = [e for e in range(len(entries)) if measured.refused[e] is None]
    if not kept:
        raise InvalidRequest(f"no menu entry can store this table: {measured.refused[0]}")
    entries, measured = [entries[e] for e in kept], measured.subset(kept)
    single_bytes = [e.nbytes(n) + table_overhead(n, 1, keyed) for e in entries]
    cost = measured.weighted + UNWEIGHTED_SHARE * measured.unweighted
    g = len(measured.cuts) - 1
    candidates = [
        _plan_from_runs([(0, g, e)], entries, measured, cost, weights, order, budget, keyed)
        for e in range(len(entries))
        if single_bytes[e] <= budget
    ]
    runs = _dp(entries, measured.cuts, cost, budget - table_overhead(n, 2, keyed)) if g > 1 else None
    if runs is not None and len(runs) > 1:
        candidates.append(_plan_from_runs(runs, entries, measured, cost, weights, order, budget, keyed))
    # a tier of an entry must hold enough rows to train it (a run of 2 rows is no 4-bit RQ tier);
    # the single-entry plans always do, every entry left being trainable on the whole table
    candidates = [c for c in candidates if all(t.stop - t.start >= t.entry.min_rows() for t in c[1].tiers)]
    candidates.sort(key=lambda c: (c[0], c[1].nbytes))
    alternatives = [
        {"tiers": [t.entry.label for t in p.tiers], "nbytes": p.nbytes, "est_error": _sig(p.error)}
        for _, p in candidates[:8]
    ]
    best, chosen = candidates[0]
    recall = None
    if query_array is not None and query_array.shape[0]:
        close = [p for objective, p in candidates[:8] if objective <= 1.1 * best + 1e-12]
        scored = [(_recall(data, query_array, _rebuild_all(data, p, entries, measured), min(k, n)), p) for p in close]
        # most recall first; among equal recall, the earlier (lower objective) plan
        recall, chosen = max(scored, key=lambda rp: (rp[0], -close.index(rp[1])))
    if chosen.nbytes > budget:  # the DP rounds every cost up, so this cannot happen: a guard, not a path
        raise OverBudget(f"the plan takes {chosen.nbytes:,} bytes, over the {budget:,}-byte budget")
    sample = (measured.sample_rows, measured.factor, measured.energy)
    return Plan(budget, n, d, keyed, order, chosen.tiers, chosen.error, recall, alternatives, sample)


def measured_error(plan: Plan, table: Any, x: np.ndarray, weights: np.ndarray) -> float:
    """The built table's frequency-weighted relative squared error, on the rows the planner
    measured and scaled up alike: comparable with `plan.error`. x (n, d) float32, weights (n,)."""
    if plan.sample is None:
        raise InvalidRequest("this plan carries no measurement sample")
    rows, factor, energy = plan.sample
    got = table.lookup(rows if not table.keyed else table.keys[rows])
    diff = x[rows] - got
    err = np.einsum("nd,nd->n", diff, diff).astype(np.float64)
    return float((weights[rows] * factor) @ err / energy)


def compress_to_budget(
    x: Any,
    budget_bytes: Any,
    freq: Any = None,
    keys: Any = None,
    menu: Any = None,
    queries: Any = None,
    *,
    seed: int = 0,
    **options: Any,
) -> Table:
    """Plan (as `plan`) and compress in one step; `options` go to `compress` (missing, version,
    source, progress, delta_capacity, new_key_tier). The built table's `nbytes` is checked against
    the budget (OverBudget rather than a table over it); the plan, and the built table's error
    measured on the planner's sample, are kept in `provenance["plan"]` (saved in the manifest)."""
    chosen = plan(x, budget_bytes, freq, keys, menu, queries, seed=seed)
    data = check_table_input(x)
    table = compress(data, tiers=chosen.tier_specs(), keys=keys, seed=seed, **options)
    if table.nbytes > chosen.budget:
        raise OverBudget(
            f"the built table holds {table.nbytes:,} bytes, over the {chosen.budget:,}-byte budget "
            f"(the plan counted {chosen.nbytes:,}); refusing it"
        )
    summary = chosen.describe()
    summary["built_nbytes"] = table.nbytes
    summary["measured_error"] = _sig(measured_error(chosen, table, data, check_freq(freq, data.shape[0])))
    summary["measured_fitness"] = _sig(1 - summary["measured_error"])
    table.provenance["plan"] = summary
    return table
