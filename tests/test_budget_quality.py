"""The budget benchmark's recommendation metric agrees with the quality table's protocol."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from benchmarks.budget_quality import decoded_quality
from benchmarks.quality import recommendation_quality


def test_decoded_quality_is_the_quality_tables_protocol() -> None:
    rng = np.random.default_rng(0)
    users = rng.standard_normal((60, 8)).astype(np.float32)
    items = rng.standard_normal((90, 8)).astype(np.float32)
    pairs = rng.choice(60 * 90, 1500, replace=False)
    train_pairs, test_pairs = pairs[:1000], pairs[1000:]
    train = {"user": train_pairs // 90, "item": train_pairs % 90}
    test = {"user": test_pairs // 90, "item": test_pairs % 90}
    seen = np.zeros((60, 90), bool)
    seen[train["user"], train["item"]] = True
    truth = np.zeros((60, 90), bool)
    truth[test["user"], test["item"]] = True
    table = runtime.compress(items, "int4")
    expected = recommendation_quality(table, users, train, test, 1)
    got = decoded_quality(table.lookup(np.arange(90)), users, seen, truth)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
