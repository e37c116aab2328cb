"""A warmed table answers requests without compiling: request bodies arrive as read-only
`np.frombuffer` views, which numba would compile as a separate type on first use (seconds, on the
request; a cold server's first binary multi-table lookup timed out that way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import runtime
from runtime.validation import check_ids, check_keys, check_offsets, check_queries, check_weights
from tests.conftest import low_rank_table
from tests.request_mix import compiled_signatures, run_in_a_fresh_process


def read_only(values: list[float] | list[int], dtype: str) -> np.ndarray:
    arr = np.frombuffer(np.array(values, dtype).tobytes(), dtype)
    assert not arr.flags.writeable
    return arr


def test_checked_request_arrays_are_writable() -> None:
    assert check_ids(read_only([1, 2], "<i8"), 5).flags.writeable
    assert check_keys(read_only([-7, 2], "<i8")).flags.writeable
    assert check_offsets(read_only([0, 1], "<i8"), 2).flags.writeable
    assert check_weights(read_only([0.5, 2.0], "<f4"), 2).flags.writeable
    assert check_queries(read_only([1.0, 2.0, 3.0], "<f4").reshape(1, 3), 3).flags.writeable
    # a writable array is passed through, not copied
    ids = np.array([1, 2], np.int64)
    assert check_ids(ids, 5) is ids


def compiled_by_read_only_requests_after_warmup(directory: str) -> dict[str, tuple[int, int]]:
    """Kernels whose compiled signatures read-only request arrays add after warm-up: name ->
    (signatures before, after)."""
    root = Path(directory)
    keys = np.arange(64, dtype=np.int64) * 1_000_003 - 11
    runtime.compress(low_rank_table(64, 8, seed=1), "int8").save(root / "dense")
    runtime.compress(low_rank_table(64, 8, seed=2), "fp32", keys=keys).save(root / "keyed")
    dense = runtime.load_table(root / "dense")
    keyed = runtime.load_table(root / "keyed")
    dense.warmup()
    keyed.warmup()
    before = compiled_signatures()
    ids = read_only([3, 1, 4, 1, 5], "<i8")
    offsets = read_only([0, 2, 2], "<i8")
    weights = read_only([0.5, 2.0, -1.0, 1.0, 0.25], "<f4")
    queries = read_only(list(np.linspace(-1, 1, 16)), "<f4").reshape(2, 8)
    dense.lookup(ids)
    dense.lookup_pooled(ids, offsets, "mean")
    dense.lookup_pooled(ids, offsets, "sum", per_sample_weights=weights)
    dense.search(queries, 3)
    dense.score(read_only([1, 2, 3, 4], "<i8").reshape(2, 2), queries=queries)
    keyed.lookup(keys[read_only([3, 1, 4], "<i8")])
    keyed.lookup(read_only([int(keys[3]), int(keys[9])], "<i8"))
    keyed.lookup_pooled(read_only([int(keys[3]), int(keys[9])], "<i8"), offsets[:2], "sum", weights[:2])
    # the first update (a new key, a changed row, a deleted key), then reads over base and delta
    keyed.upsert(read_only([int(keys[5]), 77], "<i8"), low_rank_table(2, 8, seed=3))
    keyed.delete(read_only([int(keys[6])], "<i8"))
    keyed.lookup(read_only([int(keys[3]), 77, int(keys[5])], "<i8"))
    keyed.lookup_pooled(read_only([int(keys[3]), 77, int(keys[5])], "<i8"), offsets[:2], "mean")
    keyed.search(queries, 3)
    grown = {name: (before.get(name, 0), count) for name, count in compiled_signatures().items()}
    return {name: seen for name, seen in grown.items() if seen[0] != seen[1]}


def test_read_only_requests_compile_nothing_after_warmup(tmp_path: Path) -> None:
    grown = run_in_a_fresh_process(
        "tests.runtime.test_request_compiles:compiled_by_read_only_requests_after_warmup", str(tmp_path)
    )
    assert grown == "{}"
