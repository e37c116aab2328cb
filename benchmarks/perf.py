"""Side-by-side kernel benchmarks: embserve against FBGEMM (PyTorch), numpy and Faiss.

Every figure is the median of `--reps` timed repetitions after warm-up (lookups of at most 64
ids: of 101, a call taking microseconds); ours and the peer's are
timed alternately in this one process, each timed call right after an untimed call of its own
(as in a server's steady use: the caches hold what that function last read, not what another
read), and reported as a ratio, at 1 and 2 threads (numba, torch and Faiss all set to the same
count). Data: a low-rank Gaussian signal plus full-rank noise,
float32, seeded; lookups draw ids uniformly and Zipf(1.1) over a random permutation, a pool of
distinct batches for each measurement, so no call reads a batch an earlier one read (Zipf's hot
rows recur, as they do in use).

    pip install -e '.[bench]'            # faiss-cpu, torch==2.13.0 (CPU wheel), matplotlib
    python -m benchmarks.perf            # full: N=1,000,000, d=128 (~7 minutes on 2 cores)
    python -m benchmarks.perf --smoke    # tiny sizes: minutes the first time (numba compiles), then seconds
Results: <out>/perf.json (every row), perf.md (tables), perf.png (ratios against targets).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numba
import numpy as np

import runtime
from runtime.codecs.binary import BinaryCodec, pack_signs
from runtime.kernels import cpu, fastscan, fastscan8


def _optional(module: str) -> Any:
    """Peers are optional: the smoke run works without them."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


torch: Any = _optional("torch")
faiss: Any = _optional("faiss")


@dataclass
class Config:
    rows: int = 1_000_000
    dim: int = 128
    reps: int = 9
    threads: tuple[int, ...] = (1, 2)
    batches: tuple[int, ...] = (1, 64, 1024, 16384)
    nqs: tuple[int, ...] = (1, 64)
    pool: int = 16
    k: int = 100
    out: Path = Path("benchmarks/results")
    smoke: bool = False


@dataclass
class Row:
    section: str
    op: str
    threads: int
    ours: float
    peer: str = ""
    theirs: float | None = None
    unit: str = "s"
    higher_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        """ours / peer for times (lower is better), ours / peer for rates (higher is better)."""
        return None if not self.theirs else self.ours / self.theirs

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        d["ratio"] = self.ratio
        d["target_met"] = self.met
        return d


def machine() -> dict[str, Any]:
    flags = ""
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), model
        )
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx2": " avx2" in flags,
        "avx512f": " avx512f" in flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": getattr(torch, "__version__", None),
        "faiss": getattr(faiss, "__version__", None),
        "threading_layer": numba.threading_layer(),
        # what the kernels were compiled for: LLVM's CPU name, the features used, the vector width
        "kernels": cpu.describe(),
    }


def set_threads(n: int) -> None:
    numba.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)


WARM_SECONDS = 0.05
"""Warm-up a measurement runs for (at most WARM_ROUNDS rounds of every fn) before it is timed."""
WARM_ROUNDS = 50


def alternate_pool(reps: int) -> int:
    """Batches `alternate` reads over `reps` repetitions: the warm-up's two, then an untimed and a
    timed call's a repetition. A pool this large gives every call after the warm-up a batch no
    other call of the same fn reads."""
    return 2 * reps + 2


def alternate(fns: list[Callable[[int], object]], reps: int, pool: int) -> list[float]:
    """Median seconds of each fn(i) (i picks a batch from the pool), timed alternately, each
    repetition starting with the next fn; every timed call comes right after an untimed one of
    the same fn on the batch before it. Pools smaller than `alternate_pool(reps)` repeat batches
    (the scans' 16 queries do, which does not matter where every call reads all the codes)."""
    for fn in fns:  # warm-up: compile, fault pages in
        fn(0)
        fn(1 % pool)
    # then keep every thread busy a little: on a virtual machine the first parallel calls after
    # single-threaded work wait for the hypervisor to run the idle core again (seen on the 2-core
    # EPYC: a 2-thread gather took 400 µs for its first eight calls, then 80 µs). Only the two
    # warm-up batches are used, so the timed ones still meet a cold cache
    deadline = time.perf_counter() + WARM_SECONDS
    for rep in range(WARM_ROUNDS):
        if time.perf_counter() > deadline:
            break
        for fn in fns:
            fn(rep % min(2, pool))
    # The call before a timed one decides much of its time, so each timed call follows a call of
    # its own fn, the state of a server answering one request after another. Rotating the order
    # alone left each fn the same predecessor: on the 2-core EPYC, 1,024 bags of 32 int8 ids at
    # 2 threads took ours 646 us after numpy's float32 gather (16 MiB read, 16 MiB written),
    # 381 us after FBGEMM's call and 315 us after its own; FBGEMM took 894, 673 and 573 us after
    # numpy, ours and its own: 1.38x FBGEMM's speed with both after numpy, 1.82x after their own,
    # but 1.04x in the rotation, where ours always followed numpy and FBGEMM always followed ours
    # (the bag rows of 1,024 ids at 2 threads "missed" at 0.89-0.99x). A random order each
    # repetition would mix predecessors into the median; sweeping the caches before each call
    # evicts the code and interpreter state too (a one-id lookup 1.8 -> 7 us). The order still
    # rotates (repetition r starts with fns[r % n]), so no fn is always first after the warm-up
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(reps):
        for step in range(len(fns)):
            j = (rep + step) % len(fns)
            fns[j]((2 * rep + 2) % pool)
            start = time.perf_counter()
            fns[j]((2 * rep + 3) % pool)
            times[j].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def make_table(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rank = 32
    x = np.empty((rows, dim), dtype=np.float32)
    basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    for start in range(0, rows, 262144):
        stop = min(rows, start + 262144)
        x[start:stop] = rng.standard_normal((stop - start, rank)).astype(np.float32) @ basis
        x[start:stop] += 0.5 * rng.standard_normal((stop - start, dim)).astype(np.float32)
    return x


def id_sampler(rows: int, dist: str, rng: np.random.Generator) -> Callable[[int, int], list[np.ndarray]]:
    """draw(batch, count) -> count distinct batches of `batch` ids, uniform or Zipf(1.1) over a
    random permutation of the rows (the Zipf CDF is built once, not once a batch)."""
    if dist == "uniform":
        return lambda batch, count: [rng.integers(0, rows, batch) for _ in range(count)]
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]  # as numpy's Generator.choice normalizes it
    perm = rng.permutation(rows)

    def draw(batch: int, count: int) -> list[np.ndarray]:
        ranks = np.minimum(np.searchsorted(cdf, rng.random((count, batch)), side="right"), rows - 1)
        return list(perm[ranks])

    return draw


# ---------------------------------------------------------------------------------------------
# the timed calls: i picks a batch from the pool
def _ours_lookup(table: runtime.Table, pool: list[np.ndarray], offsets: np.ndarray, pooled: bool, i: int) -> np.ndarray:
    return table.lookup_pooled(pool[i], offsets) if pooled else table.lookup(pool[i])


def _numpy_lookup(x: np.ndarray, pool: list[np.ndarray], offsets: np.ndarray, pooled: bool, i: int) -> np.ndarray:
    rows = x[pool[i]]
    return np.add.reduceat(rows, offsets, axis=0) if pooled else rows


def _fbgemm_lookup(op: Any, weight: Any, ids: list[Any], offsets: Any, i: int) -> Any:
    return op(weight, ids[i], offsets, False, 0, False, None, None, False)


def _hamming_ours(codec: BinaryCodec, queries: list[np.ndarray], nq: int, k: int, i: int) -> object:
    return codec.search(queries[i][:nq], k, "hamming")


def _faiss_search(index: Any, queries: list[np.ndarray], nq: int, k: int, i: int) -> object:
    return index.search(queries[i][:nq], k)


def _ours_search(table: runtime.Table, queries: list[np.ndarray], nq: int, k: int, i: int) -> object:
    return table.search(queries[i][:nq], k)


def lookup_target(codec: str, batch: int, pooled: bool, peer: str) -> float | None:
    """Issue 13's lookup targets (ours / peer rows/s, at 1 and 2 threads, both id distributions):
    bags of 32 of int8 and int4 at least FBGEMM's; plain lookups of 1 and 64 ids at least
    FBGEMM's (int8, int4) or numpy fp32 indexing's (fp16); int8 plain B=1024 at least FBGEMM's."""
    if pooled:
        return 1.0 if peer == "FBGEMM" else None
    if batch in (1, 64):
        return 1.0 if peer == ("numpy fp32" if codec == "fp16" else "FBGEMM") else None
    return 1.0 if (codec, batch, peer) == ("int8", 1024, "FBGEMM") else None


SMALL_BATCH_REPS = 101
"""Timed calls of each lookup of at most 64 ids (at least; --reps may ask more). Such a call takes
a few µs, so a median of 9 moved by 20 % between runs with single interrupts; each call still has
a batch of its own, so every one meets a cold cache as the larger batches' do."""


def bench_lookup(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    rng = np.random.default_rng(1)
    tables = {codec: runtime.compress(x, codec) for codec in ("int8", "int4", "fp16")}
    packed = {}
    if torch is not None:
        xt = torch.from_numpy(x)
        packed["int8"] = torch.ops.quantized.embedding_bag_byte_prepack(xt)
        packed["int4"] = torch.ops.quantized.embedding_bag_4bit_prepack(xt)
    for dist in ("uniform", "zipf"):
        draw = id_sampler(cfg.rows, dist, rng)
        for batch in cfg.batches:
            reps = max(cfg.reps, SMALL_BATCH_REPS) if batch <= 64 and not cfg.smoke else cfg.reps
            pool_size = max(cfg.pool, alternate_pool(reps))
            for pooled in (False, True):
                if pooled and batch < 32:
                    continue
                offsets = np.arange(0, batch, 32 if pooled else 1, dtype=np.int64)
                torch_off = torch.from_numpy(offsets) if torch is not None else None
                for codec, table in tables.items():
                    for threads in cfg.threads:
                        # batches of their own: the rows an earlier measurement read (another
                        # codec's peer reads the same float32 rows) would still be in cache
                        pool = draw(batch, pool_size)
                        torch_ids = [torch.from_numpy(p) for p in pool] if torch is not None else []
                        ours = partial(_ours_lookup, table, pool, offsets, pooled)
                        peers: list[tuple[str, Callable[[int], object]]] = [
                            ("numpy fp32", partial(_numpy_lookup, x, pool, offsets, pooled))
                        ]
                        if codec in packed:
                            op = (
                                torch.ops.quantized.embedding_bag_byte_rowwise_offsets
                                if codec == "int8"
                                else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets
                            )
                            peers.insert(
                                0, ("FBGEMM", partial(_fbgemm_lookup, op, packed[codec], torch_ids, torch_off))
                            )
                        set_threads(threads)
                        medians = alternate([ours] + [fn for _, fn in peers], reps, pool_size)
                        for (peer, _), theirs in zip(peers, medians[1:], strict=True):
                            target = lookup_target(codec, batch, pooled, peer)
                            rows_out.append(
                                Row(
                                    "lookup",
                                    f"{codec} {'bags of 32' if pooled else 'plain'} B={batch} {dist}",
                                    threads,
                                    batch / medians[0],
                                    peer,
                                    batch / theirs,
                                    "rows/s",
                                    True,
                                    {"bytes_read": int(batch * (table.nbytes / table.rows)), "reps": reps},
                                    target,
                                )
                            )


def exact_topk(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids (q, min(k, n)) int64 of the largest inner products of each query (q, d) with the rows of
    x (n, d), best first, ties to the smaller id. Matrix products of 256 queries by 65,536 rows at a
    time, so the truth for thousands of queries over 1M rows takes seconds, not a matrix-vector
    pass a query."""
    nq, n = queries.shape[0], x.shape[0]
    k = min(k, n)
    out = np.empty((nq, k), dtype=np.int64)
    if k == 0:
        return out
    for q0 in range(0, nq, 256):
        block = np.ascontiguousarray(queries[q0 : q0 + 256], dtype=np.float32)
        found_keys: list[list[np.ndarray]] = [[] for _ in range(block.shape[0])]
        found_ids: list[list[np.ndarray]] = [[] for _ in range(block.shape[0])]
        for r0 in range(0, n, 65536):
            scores = block @ x[r0 : r0 + 65536].T
            kk = min(k, scores.shape[1])
            # every row scoring at least the block's kk-th best, so no tie at the cut is lost
            cut = np.partition(scores, scores.shape[1] - kk, axis=1)[:, scores.shape[1] - kk]
            for i in range(block.shape[0]):
                keep = np.flatnonzero(scores[i] >= cut[i])
                found_keys[i].append(scores[i, keep])
                found_ids[i].append(keep + r0)
        for i in range(block.shape[0]):
            keys, ids = np.concatenate(found_keys[i]), np.concatenate(found_ids[i])
            out[q0 + i] = ids[np.lexsort((ids, -keys.astype(np.float64)))[:k]]
    return out


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def search_row(
    section: str,
    op: str,
    nq: int,
    threads: int,
    ours: float,
    peer: str,
    theirs: float | None,
    extra: dict[str, Any] | None = None,
    target: float | None = None,
) -> Row:
    """A search timing as a row: at one query its median time (ms, lower is better), at more its
    throughput (queries/s, higher is better). ours and theirs: median seconds a call (theirs None
    without a peer); op is named with its nq."""
    extra = extra or {}
    if nq == 1:
        their_ms = None if theirs is None else theirs * 1e3
        return Row(section, f"{op} nq=1", threads, ours * 1e3, peer, their_ms, "ms", False, extra, target)
    their_rate = None if theirs is None else nq / theirs
    return Row(section, f"{op} nq={nq}", threads, nq / ours, peer, their_rate, "queries/s", True, extra, target)


def _pq_scan_path(m: int, bits: int) -> str:
    """Which scan kernel a PQ table of M subspaces and `bits` bits takes on this machine."""
    if bits == 4:
        return "4-bit fast scan" if fastscan.AVAILABLE else "scalar ADC scan"
    return "8-bit fast scan (VBMI permutes)" if fastscan8.supported(m) else "scalar ADC scan"


def bench_pq(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> dict[str, runtime.Table]:
    rng = np.random.default_rng(2)
    query_pool = [
        x[rng.integers(0, cfg.rows, max(cfg.nqs))]
        + 0.1 * rng.standard_normal((max(cfg.nqs), cfg.dim)).astype(np.float32)
        for _ in range(cfg.pool)
    ]
    # recall over every pooled query (512 at full size): 64 alone leave a 0.02 standard error
    recall_queries = np.concatenate(query_pool)[:512]
    truth = exact_topk(x, recall_queries, 10)
    train = min(cfg.rows, 65536)
    # the same rows PqCodec samples with seed 0
    sample = x[np.sort(np.random.default_rng(0).choice(cfg.rows, train, replace=False))] if train < cfg.rows else x
    tables = {}
    for m, bits in ((16, 8), (32, 8), (32, 4)):
        table = runtime.compress(x, "pq", subspaces=m, bits=bits, seed=0, train_rows=train)
        tables[f"pq{m}x{bits}"] = table
        peers: list[tuple[str, Any]] = []
        if faiss is not None:
            index = faiss.IndexPQ(cfg.dim, m, bits, faiss.METRIC_INNER_PRODUCT)
            index.train(sample)
            index.add(x)
            peers.append(("Faiss IndexPQ", index))
            if bits == 4:
                fast = faiss.IndexPQFastScan(cfg.dim, m, bits, faiss.METRIC_INNER_PRODUCT)
                fast.train(sample)
                fast.add(x)
                peers.append(("Faiss IndexPQFastScan", fast))
        ours_recall = recall(table.search(recall_queries, 10)[0], truth)
        for nq in cfg.nqs:
            for peer, index in peers or [("", None)]:
                peer_recall = recall(index.search(recall_queries, 10)[1], truth) if index is not None else None
                fns: list[Callable[[int], object]] = [partial(_ours_search, table, query_pool, nq, cfg.k)]
                if index is not None:
                    fns.append(partial(_faiss_search, index, query_pool, nq, cfg.k))
                for threads in cfg.threads:
                    set_threads(threads)
                    medians = alternate(fns, cfg.reps if nq == 1 else max(3, cfg.reps // 3), cfg.pool)
                    target = None
                    if peer == "Faiss IndexPQ" and m == 16 and bits == 8:
                        # the issue: nq=1 at most 0.5x Faiss' time on 1 thread and 0.4x on 2
                        target = (0.5 if threads == 1 else 0.4) if nq == 1 else (1.5 if threads == 2 else None)
                    if peer == "Faiss IndexPQFastScan" and nq == 1:
                        target = 1.0
                    extra = {
                        "recall_at_10_ours": ours_recall,
                        "recall_at_10_peer": peer_recall,
                        "bytes_read": int(table.primary.arrays["codes"].nbytes),
                        "path": _pq_scan_path(m, bits),
                    }
                    theirs = medians[1] if index is not None else None
                    rows_out.append(
                        search_row(
                            "pq adc top-100", f"M={m} {bits}-bit", nq, threads, medians[0], peer, theirs, extra, target
                        )
                    )
    return tables


def bench_quantized_search(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    """Exact top-k over int8 / int4 / fp16 rows against Faiss IndexScalarQuantizer (8-bit, 4-bit,
    fp16), and over float32 rows against IndexFlatIP, each scanning every row; recall@10 of each
    against the float32 truth. int2 rows alone: Faiss has no 2-bit scalar quantizer."""
    rng = np.random.default_rng(6)
    query_pool = [
        x[rng.integers(0, cfg.rows, max(cfg.nqs))]
        + 0.1 * rng.standard_normal((max(cfg.nqs), cfg.dim)).astype(np.float32)
        for _ in range(cfg.pool)
    ]
    recall_queries = np.concatenate(query_pool)[:256]
    truth = exact_topk(x, recall_queries, 10)
    peer_types = {"int8": "QT_8bit", "int4": "QT_4bit", "fp16": "QT_fp16", "fp32": "flat", "int2": None}
    for codec, qtype in peer_types.items():
        table = runtime.compress(x, codec)
        index = None
        peer = {"flat": "Faiss IndexFlatIP", None: ""}.get(qtype, f"Faiss IndexScalarQuantizer {qtype}")
        target = None if qtype is None else 1.0
        if faiss is not None and qtype is not None:
            if qtype == "flat":
                index = faiss.IndexFlatIP(cfg.dim)
            else:
                index = faiss.IndexScalarQuantizer(
                    cfg.dim, getattr(faiss.ScalarQuantizer, qtype), faiss.METRIC_INNER_PRODUCT
                )
                index.train(x)
            index.add(x)
        extra = {
            "recall_at_10_ours": recall(table.search(recall_queries, 10)[0], truth),
            "recall_at_10_peer": None if index is None else recall(index.search(recall_queries, 10)[1], truth),
            "bytes_read": int(table.nbytes),
        }
        for nq in cfg.nqs:
            fns: list[Callable[[int], object]] = [partial(_ours_search, table, query_pool, nq, cfg.k)]
            if index is not None:
                fns.append(partial(_faiss_search, index, query_pool, nq, cfg.k))
            for threads in cfg.threads:
                set_threads(threads)
                medians = alternate(fns, cfg.reps if nq == 1 else max(3, cfg.reps // 3), cfg.pool)
                theirs = medians[1] if index is not None else None
                section = "exact search on quantized rows, top-100"
                rows_out.append(search_row(section, codec, nq, threads, medians[0], peer, theirs, dict(extra), target))


EXCLUDED_IDS = 1_000


def exclusion_pool(table: runtime.Table, queries: list[np.ndarray], nq: int, rows: int) -> list[np.ndarray]:
    """For each batch of the pool, EXCLUDED_IDS distinct ids (n,) int64 its nq queries leave out:
    each query's own top 10 (so leaving them out changes every answer), the rest drawn at random."""
    rng = np.random.default_rng(8)
    pool = []
    for batch in queries:
        best = np.unique(table.search(batch[:nq], 10)[0])[: EXCLUDED_IDS // 2]
        drawn = rng.choice(rows, EXCLUDED_IDS, replace=False)
        pool.append(np.concatenate([best, np.setdiff1d(drawn, best)])[:EXCLUDED_IDS].astype(np.int64))
    return pool


def _ours_excluding(
    table: runtime.Table, queries: list[np.ndarray], excluded: list[np.ndarray], nq: int, k: int, i: int
) -> object:
    return table.search(queries[i][:nq], k, exclude_ids=excluded[i])


def _faiss_excluding(index: Any, queries: list[np.ndarray], selectors: list[Any], nq: int, k: int, i: int) -> object:
    return index.search(queries[i][:nq], k, params=selectors[i])


def bench_exclusions(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    """Exact top-k over int8 rows leaving EXCLUDED_IDS ids out of every query's results, against
    Faiss IndexScalarQuantizer QT_8bit searching with IDSelectorNot(IDSelectorBatch) of the same
    ids, and against our own search leaving nothing out (the cost of the exclusions)."""
    rng = np.random.default_rng(7)
    queries = [x[rng.integers(0, cfg.rows, max(cfg.nqs))] for _ in range(cfg.pool)]
    table = runtime.compress(x, "int8")
    index = None
    if faiss is not None:
        index = faiss.IndexScalarQuantizer(cfg.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
    section = f"search leaving {EXCLUDED_IDS:,} ids out, int8, top-{cfg.k}"
    for nq in cfg.nqs:
        excluded = exclusion_pool(table, queries, nq, cfg.rows)
        for i, ids in enumerate(excluded[:2]):  # the answers leave them out, on both sides
            assert not np.isin(table.search(queries[i][:nq], cfg.k, exclude_ids=ids)[0], ids).any()
        fns: list[Callable[[int], object]] = [
            partial(_ours_excluding, table, queries, excluded, nq, cfg.k),
            partial(_ours_search, table, queries, nq, cfg.k),
        ]
        if index is not None:
            selectors = [faiss.SearchParameters(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(e))) for e in excluded]
            assert not np.isin(index.search(queries[0][:nq], cfg.k, params=selectors[0])[1], excluded[0]).any()
            fns.append(partial(_faiss_excluding, index, queries, selectors, nq, cfg.k))
        for threads in cfg.threads:
            set_threads(threads)
            medians = alternate(fns, cfg.reps if nq == 1 else max(3, cfg.reps // 3), cfg.pool)
            peers = [("ours leaving nothing out", medians[1])]
            if index is not None:
                peers.append(("Faiss IndexScalarQuantizer QT_8bit + IDSelectorNot", medians[2]))
            for peer, theirs in peers:
                rows_out.append(search_row(section, "int8", nq, threads, medians[0], peer, theirs))


def bench_hamming(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    rng = np.random.default_rng(3)
    base = runtime.compress(x, "binary").primary
    rotated = runtime.compress(x, "binary", rotate=True, seed=5).primary
    rotation = rotated.arrays["rotation"]
    raw = [
        x[rng.integers(0, cfg.rows, max(cfg.nqs))]
        + 0.1 * rng.standard_normal((max(cfg.nqs), cfg.dim)).astype(np.float32)
        for _ in range(cfg.pool)
    ]
    for bits in (128, 256):
        codec: Any
        if bits == cfg.dim:
            codec, queries = base, raw
        else:  # 2d bits: the plain signs and the signs after a rotation, side by side
            codes = np.ascontiguousarray(np.hstack([base.arrays["codes"], rotated.arrays["codes"]]))
            codec = BinaryCodec(
                cfg.rows, 2 * cfg.dim, {"rotate": False}, {"codes": codes, "scales": base.arrays["scales"]}
            )
            queries = [np.hstack([q, q @ rotation]) for q in raw]
        packed = [pack_signs(q) for q in queries]
        index = None
        if faiss is not None:
            index = faiss.IndexBinaryFlat(bits)
            index.add(codec.arrays["codes"].view(np.uint8))
        for nq in cfg.nqs:
            fns: list[Callable[[int], object]] = [partial(_hamming_ours, codec, queries, nq, cfg.k)]
            if index is not None:
                fns.append(partial(_faiss_search, index, [p.view(np.uint8) for p in packed], nq, cfg.k))
            for threads in cfg.threads:
                set_threads(threads)
                medians = alternate(fns, cfg.reps if nq == 1 else max(3, cfg.reps // 3), cfg.pool)
                theirs = medians[1] if index is not None else None
                extra = {"bytes_read": int(codec.arrays["codes"].nbytes)}
                # the 256-bit targets: nq=1 at most 0.6x Faiss' time, nq=64 at 2 threads its throughput
                target: float | None = None
                if bits == 256:
                    target = 0.6 if nq == 1 else (1.0 if threads == 2 else None)
                op = f"{bits}-bit"
                peer = "Faiss IndexBinaryFlat"
                rows_out.append(search_row("hamming top-100", op, nq, threads, medians[0], peer, theirs, extra, target))


def bench_by_id(cfg: Config, table: runtime.Table, rows_out: list[Row]) -> None:
    rng = np.random.default_rng(4)
    pq = table.primary
    # the peer side reads its own copy of the codes: sharing one array, whichever side runs second
    # would find the candidates' rows already in cache
    peer = copy.deepcopy(pq)
    pool = alternate_pool(cfg.reps)
    qids = [rng.integers(0, cfg.rows, 1) for _ in range(pool)]
    cands = [rng.integers(0, cfg.rows, (1, 1000)) for _ in range(pool)]
    for threads in cfg.threads:
        set_threads(threads)
        a, b = alternate(
            [lambda i: pq.search_by_id(qids[i], cfg.k, "ip"), lambda i: peer.search(peer.decode(qids[i]), cfg.k, "ip")],
            cfg.reps,
            pool,
        )
        rows_out.append(
            Row(
                "search by stored id",
                "PQ M=16 top-100 via inner-product tables",
                threads,
                a * 1e3,
                "decode + ADC",
                b * 1e3,
                "ms",
            )
        )
        a, b = alternate(
            [
                lambda i: pq.score(pq.prepare("ip", ids=qids[i]), cands[i]),
                lambda i: peer.score(peer.prepare("ip", queries=peer.decode(qids[i])), cands[i]),
            ],
            cfg.reps,
            pool,
        )
        rows_out.append(
            Row(
                "score candidates",
                "1000 candidates, 1 query, via inner-product tables",
                threads,
                a * 1e6,
                "decode query + ADC",
                b * 1e6,
                "µs",
            )
        )


SHARED_DATA = Path(
    os.environ.get("EMBSERVE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "ml1m-als64")
)


def _faiss_pq(dim: int, m: int, bits: int, opq: bool) -> Any:
    pq = faiss.IndexPQ(dim, m, bits, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexPreTransform(faiss.OPQMatrix(dim, m), pq) if opq else pq


def _compress_pair(
    x: np.ndarray, sample: np.ndarray, m: int, bits: int, opq: bool, train: int
) -> tuple[Callable[[], runtime.Table], Callable[[], Any]]:
    def ours() -> runtime.Table:
        return runtime.compress(x, "pq", subspaces=m, bits=bits, opq=opq, seed=0, train_rows=train)

    def theirs() -> Any:
        index = _faiss_pq(x.shape[1], m, bits, opq)
        index.train(sample)
        index.add(x)
        return index

    return ours, theirs


def bench_compress(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    """PQ train + encode against Faiss train + add, same training rows (the ones PqCodec samples),
    alternated, one timed call each a repetition (a compression takes seconds)."""
    if faiss is None:
        print("compress: faiss-cpu is not installed, so there is no peer; section skipped", file=sys.stderr)
        return
    cases: list[tuple[str, np.ndarray, int, int, bool, float | None]] = [
        (f"{cfg.rows:,}×{cfg.dim} M=16 8-bit", x, 16, 8, False, 1.0),
        (f"{cfg.rows:,}×{cfg.dim} M=16 8-bit OPQ", x, 16, 8, True, 1.5),
        # 16 codewords a subspace (the fast-scan codec): no issue target, the peer is Faiss IndexPQ nbits=4
        (f"{cfg.rows:,}×{cfg.dim} M=32 4-bit", x, 32, 4, False, None),
    ]
    # the shape of the sentence-embedding table the issue measured (86,537 × 384, M=48), synthetic
    sentence_rows = 86_537
    if not cfg.smoke:
        cases.append(
            (f"{sentence_rows:,}×384 M=48 8-bit (synthetic)", make_table(sentence_rows, 384, 7), 48, 8, False, 1.0)
        )
    if (SHARED_DATA / "item_emb.npy").exists():
        items = np.load(SHARED_DATA / "item_emb.npy").astype(np.float32)
        cases.append((f"MovieLens items {items.shape[0]:,}×{items.shape[1]} M=16 8-bit", items, 16, 8, False, 1.0))
    else:
        print(f"compress: {SHARED_DATA} absent, real-data row skipped", file=sys.stderr)
    reps = 1 if cfg.smoke else 3
    # 2,048 queries leave recall@10 a standard error of about 0.005 (256 left 0.02, as wide as the
    # differences between two k-means seeds); the truth is shared by the cases on one table
    recall_queries = 256 if cfg.smoke else 2048
    truths: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for label, data, m, bits, opq, target in cases[:1] if cfg.smoke else cases:
        train = min(data.shape[0], 65536)
        rng = np.random.default_rng(0)
        sample = data[np.sort(rng.choice(data.shape[0], train, replace=False))] if train < data.shape[0] else data
        ours, theirs = _compress_pair(data, sample, m, bits, opq, train)
        if id(data) not in truths:
            rng = np.random.default_rng(9)
            noise = 0.1 * rng.standard_normal((recall_queries, data.shape[1])).astype(np.float32)
            queries = data[rng.integers(0, data.shape[0], recall_queries)] + noise
            truths[id(data)] = (queries, exact_topk(data, queries, 10))
        queries, truth = truths[id(data)]
        for threads in cfg.threads:
            set_threads(threads)
            times: list[list[float]] = [[], []]
            table = index = None
            for _ in range(reps):
                start = time.perf_counter()
                table = ours()
                times[0].append(time.perf_counter() - start)
                start = time.perf_counter()
                index = theirs()
                times[1].append(time.perf_counter() - start)
            assert table is not None and index is not None
            extra = {
                "recall_at_10_ours": recall(table.search(queries, 10)[0], truth),
                "recall_at_10_peer": recall(index.search(queries, 10)[1], truth),
                "bytes_read": int(data.nbytes),
                "train_rows": train,
                "recall_queries": recall_queries,
                "reps": reps,
            }
            peer = "Faiss OPQMatrix + IndexPQ" if opq else "Faiss IndexPQ"
            rows_out.append(
                Row(
                    "pq compression (train + encode)",
                    label,
                    threads,
                    float(np.median(times[0])),
                    peer + " train + add",
                    float(np.median(times[1])),
                    "s",
                    False,
                    extra,
                    target,
                )
            )


def copy_bandwidth(cfg: Config) -> float:
    """Bytes a second a plain memory copy moves (read + write of a buffer far beyond cache)."""
    size = 64 << 20 if cfg.smoke else 512 << 20
    src = np.ones(size // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / float(np.median(times))


STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, runtime
t1 = time.perf_counter()
table = runtime.load_table(sys.argv[1])
t2 = time.perf_counter()
table.warmup()
t3 = time.perf_counter()
q = table.lookup([1, 2, 3])
s = time.perf_counter(); table.search(q, 100, oversample=4); first = time.perf_counter() - s
s = time.perf_counter(); table.lookup(np.arange(256)); first_lookup = time.perf_counter() - s
times = []
for _ in range(9):
    s = time.perf_counter(); table.search(q + 0.01, 100, oversample=4); times.append(time.perf_counter() - s)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2, "first_search_ms": first * 1e3,
                  "first_lookup_ms": first_lookup * 1e3, "steady_search_ms": sorted(times)[4] * 1e3}))
"""


def bench_startup(cfg: Config, x: np.ndarray) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runtime.compress(x, "pq", subspaces=16, bits=8, rerank="int8", iterations=10).save(Path(tmp) / "t")
        runs = []
        # the first fresh process may compile (a cache invalidated by a source change, or the
        # read-only array signatures); the second shows a warm cache, as a built image has
        for _ in range(2):
            run = subprocess.run(
                [sys.executable, "-c", STARTUP, str(Path(tmp) / "t")], capture_output=True, text=True, timeout=900
            )
            if run.returncode != 0:
                raise RuntimeError(run.stderr)
            runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
        result: dict[str, Any] = dict(runs[1])
        result["cold_cache_warmup_s"] = runs[0]["warmup_s"]
        result["rows"] = cfg.rows
        return result


# ---------------------------------------------------------------------------------------------
def write_results(cfg: Config, rows: list[Row], extra: dict[str, Any]) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "config": {k: str(v) for k, v in cfg.__dict__.items()},
        **extra,
        "rows": [r.as_dict() for r in rows],
    }
    (cfg.out / "perf.json").write_text(json.dumps(payload, indent=2, default=str))
    m = payload["machine"]
    width = m["kernels"]["vector_width"]
    lines = [
        f"# embserve kernel benchmarks ({'smoke' if cfg.smoke else 'full'})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, AVX2 {m['avx2']}, AVX-512 {m['avx512f']}; numpy {m['numpy']}, "
        f"numba {m['numba']} ({m['threading_layer']}), torch {m['torch']}, faiss {m['faiss']}.",
        f"Kernels compiled for LLVM CPU {m['kernels']['llvm_cpu']} "
        + (f"with {width} vectors; " if width.endswith("-bit") else f"(vector width {width}); ")
        + f"features used: {', '.join(m['kernels']['features'])}.",
        f"Data: {cfg.rows:,} × {cfg.dim} float32; medians of {cfg.reps} alternated repetitions "
        f"(each timed call after an untimed one of the same function); k = {cfg.k}.",
        f"Memory copy bandwidth: {extra['copy_bandwidth_gbs']:.1f} GB/s (read + write).",
        "",
        "Ratio = ours / peer: for rates (rows/s, queries/s) higher is better, for times (ms, µs) lower is better.",
        "",
    ]
    for section in dict.fromkeys(r.section for r in rows):
        lines += [
            f"## {section}",
            "",
            "| op | threads | ours | peer | peer value | ratio | target | met | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r.section == section):
            notes = []
            if "recall_at_10_ours" in r.extra:
                peer_recall = r.extra["recall_at_10_peer"]
                notes.append(
                    f"recall@10 ours {r.extra['recall_at_10_ours']:.3f}"
                    + (f" / peer {peer_recall:.3f}" if peer_recall is not None else "")
                    + (f" ({r.extra['recall_queries']:,} queries)" if "recall_queries" in r.extra else "")
                )
            if "bytes_read" in r.extra and r.unit in ("ms",):
                notes.append(f"{r.extra['bytes_read'] / (r.ours / 1e3) / 1e9:.1f} GB/s of codes")
            if "bytes_read" in r.extra and "nq" in r.extra and r.unit == "queries/s":
                # codes are read once per call, whatever the number of queries
                notes.append(f"{r.extra['bytes_read'] * r.ours / r.extra['nq'] / 1e9:.1f} GB/s of codes")
            if "path" in r.extra:
                notes.append(r.extra["path"])
            if r.section == "lookup" and r.extra.get("reps", cfg.reps) != cfg.reps:
                notes.append(f"median of {r.extra['reps']}")
            if "bytes_read" in r.extra and r.unit == "s":
                notes.append(f"{r.extra['bytes_read'] / r.ours / 1e9:.2f} GB/s of input; median of {r.extra['reps']}")
            theirs = "—" if r.theirs is None else f"{r.theirs:,.4g} {r.unit}"
            ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
            target = "—" if r.target is None else (f"≥ {r.target}" if r.higher_is_better else f"≤ {r.target}")
            met = {None: "", True: "yes", False: "**no**"}[r.met]
            cells = [
                r.op,
                str(r.threads),
                f"{r.ours:,.4g} {r.unit}",
                r.peer or "—",
                theirs,
                ratio,
                target,
                met,
                "; ".join(notes),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "startup" in extra:
        s = extra["startup"]
        lines += [
            "## start-up (fresh process)",
            "",
            f"{s['rows']:,}-row PQ M=16 + int8 artifact: import {s['import_s']:.2f} s, "
            f"load + sha256 {s['load_s']:.2f} s, warm-up {s['warmup_s']:.2f} s "
            f"({s['cold_cache_warmup_s']:.2f} s in the first process, which may compile); "
            f"first search {s['first_search_ms']:.1f} ms vs steady {s['steady_search_ms']:.1f} ms; "
            f"first 256-id lookup {s['first_lookup_ms']:.2f} ms.",
            "",
        ]
    (cfg.out / "perf.md").write_text("\n".join(lines))
    plot(cfg, rows)


def plot(cfg: Config, rows: list[Row]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    chosen = [r for r in rows if r.ratio and (r.target is not None or r.section != "lookup")]
    if not chosen:
        return
    # plot "how many times better than the peer" so that right of 1 is always good
    ratios = [float(r.ratio or 1.0) for r in chosen]
    goodness = [ratio if r.higher_is_better else 1 / ratio for ratio, r in zip(ratios, chosen, strict=True)]
    labels = [f"{r.section}: {r.op} vs {r.peer} ({r.threads}t)" for r in chosen]
    fig, ax = plt.subplots(figsize=(14, 0.32 * len(chosen) + 1.5))
    colors = ["tab:green" if g >= 1 else "tab:red" for g in goodness]
    ax.barh(range(len(chosen)), goodness, color=colors)
    for i, r in enumerate(chosen):
        if r.target is not None:
            goal = r.target if r.higher_is_better else 1 / r.target
            ax.plot([goal, goal], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_yticks(range(len(chosen)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speed relative to the peer (>1: embserve faster; black tick: target)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(cfg.out / "perf.png", dpi=110)
    plt.close(fig)


RQ_AGAINST_PQ = ((15, 16, 8), (31, 32, 8), (30, 32, 4))
"""(rq codebooks, pq subspaces, bits) with equal stored bytes a row: rq's norm code is a byte (two
nibbles at 4 bits), so rq holds one codebook (two at 4 bits) fewer than PQ has subspaces."""


def bench_rq(cfg: Config, x: np.ndarray, rows_out: list[Row]) -> None:
    """ADC top-k of residual quantization beside our PQ at equal bytes a row (issue 14: rq scans
    at PQ speed, target <= 1.1x PQ's time). Both are trained briefly on the same sample size: scan
    speed does not depend on codebook quality; recall@10 is reported beside each row all the same."""
    rng = np.random.default_rng(4)
    query_pool = [
        x[rng.integers(0, cfg.rows, max(cfg.nqs))]
        + 0.1 * rng.standard_normal((max(cfg.nqs), cfg.dim)).astype(np.float32)
        for _ in range(cfg.pool)
    ]
    recall_queries = np.concatenate(query_pool)[:512]
    truth = exact_topk(x, recall_queries, 10)
    train = min(cfg.rows, 16384)
    for rq_m, pq_m, bits in RQ_AGAINST_PQ[:1] + RQ_AGAINST_PQ[2:] if cfg.smoke else RQ_AGAINST_PQ:
        rq = runtime.compress(x, "rq", codebooks=rq_m, bits=bits, beam=1, iterations=2, refine=0, train_rows=train)
        pq = runtime.compress(x, "pq", subspaces=pq_m, bits=bits, iterations=4, train_rows=train)
        extra = {
            "bytes_per_row_rq": int(rq.primary.arrays["codes"].shape[1]),
            "bytes_per_row_pq": int(pq.primary.arrays["codes"].shape[1]),
            "recall_at_10_ours": recall(rq.search(recall_queries, 10)[0], truth),
            "recall_at_10_peer": recall(pq.search(recall_queries, 10)[0], truth),
        }
        for nq in cfg.nqs:
            fns: list[Callable[[int], object]] = [
                partial(_ours_search, rq, query_pool, nq, cfg.k),
                partial(_ours_search, pq, query_pool, nq, cfg.k),
            ]
            for threads in cfg.threads:
                set_threads(threads)
                medians = alternate(fns, cfg.reps if nq == 1 else max(3, cfg.reps // 3), cfg.pool)
                rows_out.append(
                    Row(
                        "rq adc top-100",
                        f"rq M={rq_m} {bits}-bit + norm nq={nq}",
                        threads,
                        medians[0] * 1e3,
                        f"our pq M={pq_m} {bits}-bit",
                        medians[1] * 1e3,
                        "ms",
                        False,
                        extra,
                        1.1,
                    )
                )


def _tables_section(cfg: Config, x: np.ndarray, rows: list[Row]) -> None:
    from benchmarks.tables_bench import bench_tables  # it imports this module

    bench_tables(cfg, x, rows)


SECTIONS = ("lookup", "pq", "rq", "quantized", "exclude", "hamming", "byid", "compress", "startup", "tables")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: minutes the first time (numba compiles), then seconds"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset to run (results go to --out; keep the committed ones with a scratch --out)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"no section {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    cfg = Config()
    if args.smoke:
        cfg = Config(
            rows=20_000,
            reps=3,
            batches=(1, 64),
            nqs=(1, 4),
            pool=4,
            k=10,
            out=Path("benchmarks/results/smoke"),
            smoke=True,
        )
    if args.rows:
        cfg.rows = args.rows
    if args.reps:
        cfg.reps = args.reps
    if args.out:
        cfg.out = args.out
    cfg.threads = tuple(t for t in cfg.threads if t <= (os.cpu_count() or 1))
    sections = set(args.sections.split(","))
    x = make_table(cfg.rows, cfg.dim)
    rows: list[Row] = []
    extra: dict[str, Any] = {"copy_bandwidth_gbs": copy_bandwidth(cfg) / 1e9}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("lookup", lambda: bench_lookup(cfg, x, rows)),
        ("quantized", lambda: bench_quantized_search(cfg, x, rows)),
        ("exclude", lambda: bench_exclusions(cfg, x, rows)),
        ("hamming", lambda: bench_hamming(cfg, x, rows)),
    ]
    tables: dict[str, runtime.Table] = {}
    if "pq" in sections or "byid" in sections:
        steps.insert(1, ("pq", lambda: tables.update(bench_pq(cfg, x, rows))))
    steps.append(("rq", lambda: bench_rq(cfg, x, rows)))
    steps.append(("byid", lambda: bench_by_id(cfg, tables["pq16x8"], rows)))
    steps.append(("compress", lambda: bench_compress(cfg, x, rows)))
    steps.append(("startup", lambda: extra.update(startup=bench_startup(cfg, x))))
    steps.append(("tables", lambda: _tables_section(cfg, x, rows)))
    for name, step in steps:
        if name in sections or (name == "pq" and "byid" in sections):
            started = time.perf_counter()
            step()
            print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    write_results(cfg, rows, extra)
    print((cfg.out / "perf.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
