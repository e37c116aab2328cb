"""The codec protocol: train once and encode later rows alike; prepare once, scan (with rows
left out) and score; options declared once and derived into the CLI, warm-up and test matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import CODECS, codec_class
from runtime.cli import add_commands
from runtime.codecs import example_configs
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
