"""The codec protocol: train once and encode later rows alike; prepare once, scan (with rows
left out) and score; options declared once and derived into the CLI, warm-up and test matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import CODECS, codec_class, compress
from runtime.cli import add_commands
from runtime.codecs import example_configs
from runtime.errors import InvalidRequest, RowRefused
from runtime.warm import CONFIGS as WARM_CONFIGS
from tests.conftest import low_rank_table

EXAMPLES = {f"{c['codec']}-{i}": c for i, c in enumerate(example_configs())}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return low_rank_table(700, 32, seed=11)


def test_example_configs_cover_every_codec_and_choice() -> None:
    configs = example_configs()
    assert {c["codec"] for c in configs} == set(CODECS)
    for name, cls in CODECS.items():
        for option in cls.options:
            wanted = set(option.choices) | ({True, False} if option.kind is bool else set())
            seen = {c.get(option.name, option.default) for c in configs if c["codec"] == name}
            assert wanted <= seen, (name, option.name)
    assert all(c in WARM_CONFIGS for c in configs)


def test_every_declared_option_is_a_cli_flag() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    for cls in CODECS.values():
        for option in cls.options:
            flag = "--" + option.name.replace("_", "-")
            value = [] if option.kind is bool else [str(option.choices[-1] if option.choices else 3)]
            args = parser.parse_args(["compress", "in.npy", "--codec", cls.name, "--out", "o", flag, *value])
            assert getattr(args, option.name) == (True if option.kind is bool else option.kind(value[0]))


def test_table_module_names_no_codec_or_metric() -> None:
    source = (Path(__file__).resolve().parents[2] / "runtime" / "table.py").read_text()
    for word in ['"hamming"', *(f'"{name}"' for name in CODECS if name != "int8")]:
        assert word not in source, word


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rows_encoded_later_match_rows_encoded_at_fit(name: str, x: np.ndarray) -> None:
    config = dict(EXAMPLES[name])
    cls = codec_class(config.pop("codec"))
    fitted = cls.fit(x, seed=4, **config)
    state = fitted.state
    assert not set(state.arrays) & set(cls.row_arrays)
    later = cls.encode(state, x[100:160])
    for array_name in cls.row_arrays:
        np.testing.assert_array_equal(later[array_name], fitted.arrays[array_name][100:160])
    # the same state over other rows: a codec that decodes them as the fitted one does
    sibling = fitted.with_rows(later)
    np.testing.assert_array_equal(sibling.decode(np.arange(60)), fitted.decode(np.arange(100, 160)))


def _full_ranking(codec: Any, prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    return codec.scan(prepared, codec.rows)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_scan_with_rows_left_out_is_the_ranking_without_them(name: str, x: np.ndarray) -> None:
    config = dict(EXAMPLES[name])
    codec = codec_class(config.pop("codec")).fit(x[:300], seed=4, **config)
    exclude = np.unique(np.random.default_rng(0).integers(0, 300, 40)).astype(np.int64)
    for metric in codec.metrics:
        for prepared in (codec.prepare(metric, queries=x[400:403]), codec.prepare(metric, ids=exclude[:2])):
            ids, scores = codec.scan(prepared, 10, exclude=exclude)
            assert ids.shape == (prepared.count, 10)
            assert not np.isin(ids, exclude).any()
            all_ids, all_scores = codec.scan(prepared, 300)
            for row in range(ids.shape[0]):
                kept = ~np.isin(all_ids[row], exclude)
                np.testing.assert_allclose(scores[row], all_scores[row][kept][:10], rtol=1e-5, atol=1e-5)
            # score() on the found rows gives the scan's scores
            np.testing.assert_allclose(codec.score(prepared, ids), scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_scan_asks_again_when_the_best_rows_are_all_left_out(name: str, x: np.ndarray) -> None:
    config = dict(EXAMPLES[name])
    codec = codec_class(config.pop("codec")).fit(x[:300], seed=4, **config)
    prepared = codec.prepare("ip", queries=x[400:401])
    all_ids, all_scores = codec.scan(prepared, 300)
    exclude = all_ids[0, :100].copy()  # the 100 best: more than the first ask's extra rows
    ids, scores = codec.scan(prepared, 10, exclude=exclude)
    np.testing.assert_array_equal(ids[0], all_ids[0, 100:110])
    np.testing.assert_allclose(scores[0], all_scores[0, 100:110], rtol=1e-6)


@pytest.mark.parametrize("name", ["int8", "int4", "int2", "fp16"])
def test_gathering_codecs_decode_by_their_bound_gather(name: str, x: np.ndarray) -> None:
    # decode runs the kernel `direct_gather` binds (one compile for lookups and rescoring): its
    # rows are the twin's, for batches on this thread and in parallel tasks, under the table's
    # parallel_min_ids as it changes, and an id past the rows is an IndexError, not a stray read
    cls = codec_class(name)
    codec = cls.fit(x, seed=0)
    if name == "fp16":
        twin = codec.arrays["values"].astype(np.float32)
    else:
        from runtime.kernels.rowwise import dequantize_numpy

        bits = {"int8": 8, "int4": 4, "int2": 2}[name]
        twin = dequantize_numpy(codec.arrays["rows"], np.arange(codec.rows), codec.dim, bits)
    ids = np.random.default_rng(3).integers(0, codec.rows, 3000)
    for min_ids in (codec.parallel_min_ids, 1):
        codec.parallel_min_ids = min_ids
        np.testing.assert_array_equal(codec.decode(ids[:5]), twin[ids[:5]])
        np.testing.assert_array_equal(codec.decode(ids), twin[ids])
        assert codec._decoding_gather is not None and codec._decoding_gather[0] == min_ids
    assert codec.decode(np.empty(0, np.int64)).shape == (0, codec.dim)
    np.testing.assert_array_equal(codec.decode(np.array([1, 2], np.int32)), twin[[1, 2]])
    with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(2, 1\)"):
        codec.decode(np.array([[1], [2]]))
    for outside in (codec.rows, -1):
        with pytest.raises(IndexError, match=rf"row {outside} is outside \[0, {codec.rows}\)"):
            codec.decode(np.array([0, outside]))


@pytest.mark.parametrize("name", ["int8", "int4", "int2", "fp16", "binary"])
def test_rows_too_small_for_fp16_are_refused_by_their_row_in_the_whole_input(name: str) -> None:
    # found by a review: values of 1e-6 stored every row's fp16 scale (or value) as zero or a
    # subnormal, and int8 decoded noise (relative error 2.6) from an artifact written without a word
    rng = np.random.default_rng(3)
    x = rng.standard_normal((70_000, 16)).astype(np.float32)
    x[5] = 0.0  # a row of zeros is stored (its scale is 0 exactly)
    x[69_000] *= np.float32(1e-9)  # in encode's second block of 65,536 rows: named in x, not in its block
    with pytest.raises(RowRefused, match=rf"codec '{name}' stores fp16: row 69000's .* is too small for it"):
        compress(x, name)
    x[69_000] = rng.standard_normal(16)
    table = compress(x, name)
    np.testing.assert_array_equal(table.lookup(np.array([5])), np.zeros((1, 16), np.float32))
    # an update is held to it too, and changes nothing when refused
    before = table.lookup(np.arange(3))
    tiny = np.full((2, 16), 1e-9, np.float32)
    tiny[0] = 1.0
    with pytest.raises(RowRefused, match=r"row 1's"):
        table.upsert(np.array([1, 2]), tiny)
    np.testing.assert_array_equal(table.lookup(np.arange(3)), before)
    assert table.sequence == 0
    # in a tiered table, too, by its row in the input, not in its tier (found by a second review)
    tiers = [
        {"rows": {"start": 0, "stop": 35_000}, "codec": "fp32"},
        {"rows": {"start": 35_000, "stop": 70_000}, "codec": name},
    ]
    x[69_000] *= np.float32(1e-9)
    with pytest.raises(RowRefused, match=r"row 69000's"):
        compress(x, tiers=tiers)
    x[69_000] = rng.standard_normal(16)
    tiered = compress(x, tiers=tiers)
    with pytest.raises(RowRefused, match=r"row 2's"):
        tiered.upsert(np.array([1, 40_000, 40_001]), np.concatenate([np.ones((2, 16), np.float32), tiny[1:]]))


def test_a_sample_below_the_codewords_is_refused_where_the_table_has_more_rows(x: np.ndarray) -> None:
    # found by a review: pq with bits=4 and train_rows=1 trained 16 codewords on one row (relative
    # error 1.4), shared 256 centroids on 100 rows, where rq refused the same
    with pytest.raises(InvalidRequest, match=r"pq option train_rows=1 is below the 16 codewords it learns"):
        compress(x, "pq", subspaces=8, bits=4, train_rows=1)
    with pytest.raises(InvalidRequest, match=r"shared option train_rows=100 is below the 256 codewords it learns"):
        compress(x, "shared", centroids=256, train_rows=100)
    # a table of fewer rows than codewords trains on all of them: each row its own codeword
    small = x[:100]
    table = compress(small, "pq", subspaces=8, bits=8)
    np.testing.assert_allclose(table.lookup(np.arange(100)), small, atol=1e-5)
    assert compress(small, "shared", centroids=256, train_rows=100).rows == 100


def test_a_rerank_codec_poorer_than_the_primary_is_refused(x: np.ndarray) -> None:
    # found by a review: fp32 reranked by int2 was accepted, and every lookup of a table paid for
    # in fp32 came back as int2 rows (relative error 0.45): lookups and rescoring read the rerank codec
    with pytest.raises(
        InvalidRequest, match=r"rerank codec 'int2' holds values at a lower precision than the primary 'fp32'"
    ):
        compress(x, "fp32", rerank="int2")
    with pytest.raises(
        InvalidRequest, match=r"rerank codec 'int8' holds values at a lower precision than the primary 'fp16'"
    ):
        compress(x, tiers=[{"rows": {"start": 0, "stop": 700}, "codec": "fp16", "rerank": "int8"}])
    # fewer bytes a row is no measure across families: binary reranked by pq or rq, fewer bytes
    # than binary's and far better reconstructions, stays allowed (a bytes-a-row rule refused them)
    for rerank, options in (("pq", {"subspaces": 4, "bits": 4}), ("rq", {"codebooks": 2})):
        assert compress(x, "binary", rerank=rerank, rerank_options=options).rerank is not None
    assert compress(x, "pq", subspaces=8, rerank="int8").rerank is not None
