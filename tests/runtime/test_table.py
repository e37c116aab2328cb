"""Table behaviour over every registered codec: decode, search, score, pooling, rerank, sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from runtime import CODECS
from runtime.kernels import fastscan
from tests.conftest import low_rank_table
from tests.request_mix import compiled_signatures, needless_specializations, run_in_a_fresh_process, serve_requests

# one entry a configuration; a new codec is tested by adding it here
CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"codec": "fp32"},
    "fp16": {"codec": "fp16"},
    "int8": {"codec": "int8"},
    "int4": {"codec": "int4"},
    "int2": {"codec": "int2"},
    "binary": {"codec": "binary"},
    "binary-rotate": {"codec": "binary", "rotate": True},
    "pq8": {"codec": "pq", "subspaces": 8, "bits": 8, "iterations": 8},
    "pq4": {"codec": "pq", "subspaces": 16, "bits": 4, "iterations": 8},
    "opq": {"codec": "pq", "subspaces": 8, "bits": 8, "opq": True, "iterations": 5, "opq_iterations": 3},
    "pq+int8": {"codec": "pq", "subspaces": 8, "bits": 8, "iterations": 8, "rerank": "int8"},
    "binary+fp16": {"codec": "binary", "rerank": "fp16"},
    "shared": {"codec": "shared", "centroids": 256, "iterations": 4},
    "rq8": {"codec": "rq", "codebooks": 4, "bits": 8, "iterations": 5},
    "rq4": {"codec": "rq", "codebooks": 8, "bits": 4, "iterations": 5},
    "rq8-no-tables": {"codec": "rq", "codebooks": 4, "bits": 8, "iterations": 5, "table_limit": 0},
    "rq+int8": {"codec": "rq", "codebooks": 4, "bits": 8, "iterations": 5, "rerank": "int8"},
}
# bound on mean relative L2 reconstruction error for the low-rank test table
MAX_REL_ERROR = {
    "fp32": 1e-7,
    "fp16": 1e-3,
    "int8": 0.02,
    "int4": 0.2,
    "int2": 0.6,
    "binary": 0.75,
    "binary-rotate": 0.75,
    "pq8": 0.5,
    "pq4": 0.5,
    "opq": 0.5,
    "pq+int8": 0.02,
    "binary+fp16": 1e-3,
    "shared": 0.8,
    "rq8": 0.35,
    "rq4": 0.45,
    "rq8-no-tables": 0.35,
    "rq+int8": 0.02,
}


def l2_norm_slack(t: runtime.Table) -> float:
    """How far an l2 distance may be from the reconstruction's: rq scores l2 with each row's
    squared norm quantized to 8 bits (half a level either way); 0 for every other codec."""
    if t.rerank is not None or t.codec != "rq":
        return 0.0
    lo, hi = t.primary.arrays["norm_range"]
    return float(hi - lo) / 255 / 2 * 1.001


def test_every_codec_is_configured() -> None:
    assert {c["codec"] for c in CONFIGS.values()} == set(CODECS)


TIERS: list[dict[str, Any]] = [
    {"rows": {"start": 0, "stop": 300}, "codec": "pq", "subspaces": 8, "iterations": 4, "rerank": "int8"},
    {"rows": {"start": 300, "stop": 1200}, "codec": "binary", "rerank": "fp16", "dim": 16},
]
SHAPES: dict[str, dict[str, Any]] = {
    "keyed int8": {"codec": "int8", "keys": "reversed"},
    "keyed pq+int8": {"codec": "pq", "subspaces": 8, "iterations": 4, "rerank": "int8", "keys": "reversed"},
    "tiers": {"tiers": TIERS},
    "keyed tiers": {"tiers": TIERS, "keys": "reversed"},
}
"""Table shapes beyond one codec, for the warm-up test only: each has kernels of its own (a keyed
table's lookups probe and gather in one pass; tiers merge, project and rescore per tier). Keys
are the row numbers reversed, so ids and keys address different rows. 1,200 rows."""


def configured_table(name: str, x: np.ndarray) -> runtime.Table:
    """x compressed as CONFIGS[name] (or SHAPES[name]) says."""
    config = dict(CONFIGS[name] if name in CONFIGS else SHAPES[name])
    if config.pop("keys", None) == "reversed":
        config["keys"] = np.arange(x.shape[0], dtype=np.int64)[::-1].copy()
    return runtime.compress(x, config.pop("codec", "int8"), seed=7, **config)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return low_rank_table(1200, 32, seed=3)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def table(request: pytest.FixtureRequest, x: np.ndarray) -> tuple[str, runtime.Table]:
    return request.param, configured_table(request.param, x)


def _brute(decoded: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "ip":
        return -np.sort(-(q @ decoded.T), axis=1)[:, :k]
    return np.sort(((q[:, None, :] - decoded[None]) ** 2).sum(-1), axis=1)[:, :k]


def test_decode_error_and_shapes(table: tuple[str, runtime.Table], x: np.ndarray) -> None:
    name, t = table
    got = t.lookup(np.arange(t.rows))
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.mean(np.linalg.norm(got - x, axis=1) / np.linalg.norm(x, axis=1))
    assert err <= MAX_REL_ERROR[name]
    assert t.lookup([]).shape == (0, x.shape[1])
    assert t.lookup(np.array([5, 5, 0])).tolist() == t.lookup([5, 5, 0]).tolist()


def test_nbytes_counts_every_array(table: tuple[str, runtime.Table]) -> None:
    name, t = table
    held = [*t.primary.arrays.values(), *t.primary.derived.values()]
    if t.rerank is not None:
        held += [*t.rerank.arrays.values(), *t.rerank.derived.values()]
    if "blocked_codes" in t.primary.derived:
        # the 4-bit scan layout replaces the row-major codes in memory
        assert name in ("pq4", "rq4") and fastscan.AVAILABLE
        held = [a for a in held if a is not t.primary.arrays["codes"]]
    assert t.nbytes == sum(a.nbytes for a in held)
    assert t.fp32_nbytes == t.rows * t.dim * 4


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_search_is_exact_over_the_codecs_own_reconstruction(
    table: tuple[str, runtime.Table], x: np.ndarray, metric: str
) -> None:
    _, t = table
    q = x[:7] + 0.05
    ids, scores = t.search(q, 10, metric=metric, oversample=t.rows if t.rerank else 1)
    assert ids.shape == (7, 10) and ids.dtype == np.int64 and scores.dtype == np.float32
    # with rerank and oversample = rows, every row is rescored: exact over the rerank codec
    decoded = t.richest.decode(np.arange(t.rows))
    slack = l2_norm_slack(t) if metric == "l2" else 0.0
    np.testing.assert_allclose(scores, _brute(decoded, q, 10, metric), rtol=2e-4, atol=2e-3 + slack)
    # scores agree with score() of the same ids, and come sorted best first
    np.testing.assert_allclose(t.score(ids, queries=q, metric=metric), scores, rtol=2e-4, atol=2e-3)
    order = -scores if metric == "ip" else scores
    assert (np.diff(order, axis=1) >= -1e-6).all()


def test_search_by_id_matches_scoring_by_id(table: tuple[str, runtime.Table]) -> None:
    _, t = table
    qids = np.array([0, 3, 1199])
    for metric in ("ip", "l2"):
        ids, scores = t.search_by_id(qids, 8, metric=metric, exclude_self=True)
        assert ids.shape == (3, 8)
        assert not (ids == qids[:, None]).any()
        np.testing.assert_allclose(t.score(ids, query_ids=qids, metric=metric), scores, rtol=2e-4, atol=2e-3)
    ids, scores = t.search_by_id(qids, 3, metric="l2", exclude_self=False)
    if t.codec == "shared":
        # rows that share the query's stored row tie with it at distance 0; the lowest id is first
        assert np.allclose(scores[:, 0], 0, atol=1e-3)
        assert (t.primary.arrays["index"][ids[:, 0]] == t.primary.arrays["index"][qids]).all()
        assert (ids[:, 0] <= qids).all()
    else:
        assert (ids[:, 0] == qids).all()  # a row is nearest to itself


def test_k_larger_than_rows_returns_all_rows() -> None:
    t = runtime.compress(low_rank_table(5, 8), "int8")
    ids, _scores = t.search(np.ones((2, 8), np.float32), 100)
    assert ids.shape == (2, 5) and sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]
    ids, _ = t.search_by_id([0], 100, exclude_self=True)
    assert ids.shape == (1, 4) and 0 not in ids[0]


def test_ties_are_broken_by_ascending_id() -> None:
    x = np.ones((50, 8), np.float32)
    x[10:20] *= 2
    for codec in ("fp32", "int8", "fp16"):
        ids, _ = runtime.compress(x, codec).search(np.ones((1, 8), np.float32), 12)
        assert ids[0].tolist() == [*range(10, 20), 0, 1]
    codes = runtime.compress(np.sign(x - 1.5), "binary")
    ids, scores = codes.search(np.ones((1, 8), np.float32), 12, metric="hamming")
    assert ids[0].tolist() == [*range(10, 20), 0, 1] and scores[0, 0] == 0


def test_pooled_lookup_follows_embedding_bag(x: np.ndarray) -> None:
    for codec in ("int8", "int4", "fp16", "pq"):
        options: dict[str, Any] = {"subspaces": 8, "iterations": 3} if codec == "pq" else {}
        t = runtime.compress(x, codec, **options)
        ids = np.array([1, 2, 3, 4, 4, 9])
        offsets = np.array([0, 2, 2, 5])
        rows = t.lookup(ids)
        want_sum = np.stack([rows[0:2].sum(0), np.zeros(32), rows[2:5].sum(0), rows[5:].sum(0)])
        np.testing.assert_allclose(t.lookup_pooled(ids, offsets, "sum"), want_sum, rtol=1e-5, atol=1e-5)
        want_mean = want_sum / np.array([2, 1, 3, 1])[:, None]
        np.testing.assert_allclose(t.lookup_pooled(ids, offsets, "mean"), want_mean, rtol=1e-5, atol=1e-5)


def test_hamming_search_ranks_by_sign_agreement(x: np.ndarray) -> None:
    t = runtime.compress(x, "binary")
    ids, dist = t.search(x[:3], 20, metric="hamming")
    bits = x > 0
    want = (bits[:3, None, :] != bits[None]).sum(-1)
    np.testing.assert_array_equal(dist, np.sort(want, axis=1)[:, :20])
    assert (ids[:, 0] == np.arange(3)).all()


def test_binary_with_rerank_ranks_candidates_by_hamming_and_returns_rerank_scores(x: np.ndarray) -> None:
    t = runtime.compress(x, "binary", rerank="fp32")
    q = x[:4]
    ids, scores = t.search(q, 5, metric="ip", oversample=4)
    cand, _ = t.primary.search(q, 20, "hamming")
    for row in range(4):
        assert set(ids[row]) <= set(cand[row])
        np.testing.assert_allclose(scores[row], x[ids[row]] @ q[row], rtol=1e-5)


def test_pq_id_scores_come_from_codeword_tables(x: np.ndarray) -> None:
    t = runtime.compress(x, "pq", subspaces=8, iterations=5)
    a, b = np.array([0, 1, 2]), np.array([[5, 6], [7, 8], [9, 10]])
    want = np.einsum("qcd,qd->qc", t.lookup(b.ravel()).reshape(3, 2, -1), t.lookup(a))
    np.testing.assert_allclose(t.score(b, query_ids=a), want, rtol=1e-4, atol=1e-4)
    assert t.primary.derived["ip_tables"].shape == (8, 256, 256)


def test_rerank_improves_recall(x: np.ndarray) -> None:
    exact = runtime.compress(x, "fp32")
    q = x[100:140] + 0.01
    truth, _ = exact.search(q, 10)
    plain = runtime.compress(x, "pq", subspaces=4, iterations=5)
    refined = runtime.compress(x, "pq", subspaces=4, iterations=5, rerank="int8")

    def recall(t: runtime.Table, oversample: int) -> float:
        found, _ = t.search(q, 10, oversample=oversample)
        return float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth, strict=True)]))

    assert recall(refined, 10) >= max(recall(plain, 1), 0.9)


def compiled_by_requests_after_warmup(name: str, saved: str) -> dict[str, Any]:
    """Kernel signatures that requests of every kind compile (or load) after warm-up, by kernel:
    to the table of CONFIGS[name] (or SHAPES[name]) saved at `saved`, loaded as a server loads it and warmed, before
    and after its first update, then to the same table compressed in this process (after the
    compression's own kernels ran); and the needless specializations all of that compiled."""
    loaded = runtime.load_table(saved)  # memory-mapped, read-only arrays: what a server serves
    loaded.warmup()
    grown: dict[str, int] = {}

    def compiled_by(*requests: Callable[[], object]) -> None:
        before = compiled_signatures()
        for request in requests:
            request()
        after = compiled_signatures()
        grown.update({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})

    compiled_by(lambda: serve_requests(loaded))
    # the first update (encoded against the trained state), then base and delta rows read together
    ids = np.array([5, 9])
    compiled_by(lambda: loaded.upsert(ids, loaded.lookup(ids[::-1])), lambda: serve_requests(loaded))
    # the table as compressed in the process holds its arrays read-only too, so the kernels
    # compiled for the loaded one serve it: no second compile of each
    built = configured_table(name, low_rank_table(1200, 32, seed=3))
    compiled_by(lambda: serve_requests(built))
    return {"compiled by requests": grown, "needless": needless_specializations()}


@pytest.mark.parametrize("name", sorted(CONFIGS) + sorted(SHAPES))
def test_warmup_leaves_nothing_for_requests_to_compile(name: str, tmp_path: Path) -> None:
    configured_table(name, low_rank_table(1200, 32, seed=3)).save(tmp_path / "t")
    grown = run_in_a_fresh_process(
        "tests.runtime.test_table:compiled_by_requests_after_warmup", name, str(tmp_path / "t")
    )
    assert grown == "{'compiled by requests': {}, 'needless': {}}"


def test_codecs_hold_their_arrays_read_only_whether_built_or_loaded(x: np.ndarray, tmp_path: Path) -> None:
    built = runtime.compress(x, "pq", subspaces=4, iterations=2, rerank="int8")
    built.save(tmp_path / "t")
    loaded = runtime.load_table(tmp_path / "t")
    for table in (built, loaded):
        for codec in (table.primary, table.rerank):
            assert codec is not None and not any(a.flags.writeable for a in codec.arrays.values())
    # the view is the codec's; the caller's array stays writable
    codes = np.zeros((4, 4), np.uint8)
    codec = type(built.primary)(4, x.shape[1], built.primary.params, {**built.primary.state.arrays, "codes": codes})
    assert codes.flags.writeable and not codec.arrays["codes"].flags.writeable
    assert np.shares_memory(codes, codec.arrays["codes"])


def test_every_exported_name_exists() -> None:
    missing = [name for name in runtime.__all__ if not hasattr(runtime, name)]
    assert missing == []


def test_parallel_threshold_is_passed_to_each_table_not_set_globally(x: np.ndarray, tmp_path: Path) -> None:
    from runtime.kernels.rowwise import DEFAULT_PARALLEL_MIN_IDS, use_parallel

    for codec in ("int8", "fp16"):
        runtime.compress(x, codec).save(tmp_path / codec)
        eager = runtime.load_table(tmp_path / codec, parallel_min_ids=1)
        lazy = runtime.load_table(tmp_path / codec, parallel_min_ids=4096)
        default = runtime.load_table(tmp_path / codec)
        assert (eager.primary.parallel_min_ids, lazy.primary.parallel_min_ids) == (1, 4096)
        assert default.primary.parallel_min_ids == DEFAULT_PARALLEL_MIN_IDS  # the others changed nothing shared
        ids = np.arange(1000, dtype=np.int64) % x.shape[0]
        np.testing.assert_array_equal(eager.lookup(ids), lazy.lookup(ids))
    threads = runtime.codecs.base.numba.get_num_threads()
    assert use_parallel(1000, 1000) == (threads > 1) and not use_parallel(999, 1000)
    for bad in (0, 4097):
        with pytest.raises(runtime.InvalidRequest, match=r"parallel_min_ids must be in 1\.\.4096"):
            runtime.load_table(tmp_path / "int8", parallel_min_ids=bad)
