"""The multi-table core path in process: typed request in, typed result out, against torch's
EmbeddingBag and the runtime; validation before any table is read; one store snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

import runtime
from runtime.errors import InvalidRequest, TableNotFound
from service.core import EmbeddingService
from service.multi import MultiLookupRequest, TableLookup, check_request, from_jagged
from service.settings import Settings
from tests.conftest import low_rank_table

X_USERS = low_rank_table(100, 8, seed=31)
X_ITEMS = low_rank_table(60, 4, seed=32)


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = EmbeddingService(Settings(demo=False, max_ids=50, max_tables_per_request=3))
    svc.store.put("users", runtime.compress(X_USERS, "fp32", version="u1"))
    svc.store.put("items", runtime.compress(X_ITEMS, "int8", version="i1"))
    svc.started = True
    yield svc
    svc.close()


async def test_weighted_multi_lookup_matches_torch_embedding_bag(service: EmbeddingService) -> None:
    torch = pytest.importorskip("torch")
    ids, lengths, weights = [3, 5, 5, 99, 0], [2, 0, 3], [0.25, -1.5, 2.0, 0.0, 1.0]
    request = MultiLookupRequest(
        (TableLookup("users", ids, lengths=lengths, weights=weights), TableLookup("items", [1, 2, 3])), concat=False
    )
    result = await service.multi_lookup("test", request)
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(X_USERS), mode="sum")
    want = bag(
        torch.tensor(ids), torch.tensor([0, 2, 2]), per_sample_weights=torch.tensor(weights, dtype=torch.float32)
    )
    np.testing.assert_allclose(result.results[0].embeddings, want.numpy(), rtol=1e-6, atol=1e-6)
    items = service.store.get("items").table
    np.testing.assert_array_equal(result.results[1].embeddings, items.lookup([1, 2, 3]))
    assert [r.version for r in result.results] == ["u1", "i1"]


async def test_validation_refuses_the_whole_request_before_reading(service: EmbeddingService) -> None:
    good = TableLookup("users", [1, 2], lengths=[2])
    bad_cases: list[tuple[TableLookup, type[Exception], str]] = [
        (TableLookup("nope", [1]), TableNotFound, "tables[1] ('nope')"),
        (TableLookup("items", [1, 2], lengths=[1, 2]), InvalidRequest, "tables[1] ('items'): lengths sum to 3"),
        (TableLookup("items", [1], offsets=[0], weights=[np.nan]), InvalidRequest, "weights[0] is NaN or Inf"),
        (TableLookup("items", [60]), InvalidRequest, "tables[1] ('items'): ids[0] = 60 is out of range"),
        # in a one-table lookup's words (found by a review: numpy's dtype <U1 and its ragged-shape text)
        (TableLookup("items", ["1"]), InvalidRequest, "tables[1] ('items'): ids must hold numbers, got strings"),
        (
            TableLookup("items", [[1], [2, 3]]),
            InvalidRequest,
            "tables[1] ('items'): ids must be a flat array of numbers",
        ),
    ]
    for bad, kind, message in bad_cases:
        with pytest.raises(kind, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            check_request(MultiLookupRequest((good, bad)), service.store, 3, 50)
    before = service.metrics.registry.get_sample_value(
        "embserve_kernel_duration_seconds_count", {"operation": "multi_lookup", "codec": "multi"}
    )
    with pytest.raises(InvalidRequest):
        await service.multi_lookup("test", MultiLookupRequest((good, bad_cases[1][0])))
    after = service.metrics.registry.get_sample_value(
        "embserve_kernel_duration_seconds_count", {"operation": "multi_lookup", "codec": "multi"}
    )
    assert before == after  # no table compute ran


async def test_store_snapshot_is_taken_once(service: EmbeddingService) -> None:
    request = MultiLookupRequest((TableLookup("users", [1]), TableLookup("users", [1])))
    checked = check_request(request, service.store, 3, 50)
    service.store.put("users", runtime.compress(X_USERS * 2, "fp32", version="u2"))
    assert {item.table.version for item in checked} == {"u1"}
    later = await service.multi_lookup("test", request)
    assert [r.version for r in later.results] == ["u2", "u2"]
    np.testing.assert_allclose(later.results[0].embeddings, 2 * X_USERS[[1]], rtol=1e-6)


def test_jagged_layout_splits_feature_major() -> None:
    request = from_jagged(["a", "b"], [1, 2, 0, 3], [10, 11, 12, 20, 21, 22], [1, 2, 3, 4, 5, 6], "sum", True)
    first, second = request.tables
    assert first.table == "a" and list(first.ids) == [10, 11, 12] and list(first.lengths) == [1, 2]
    assert second.table == "b" and list(second.ids) == [20, 21, 22] and list(second.lengths) == [0, 3]
    assert list(second.weights) == [4, 5, 6] and request.concat
    bad: list[tuple[tuple[Any, ...], str]] = [
        (([], [1], [1]), "features must be a non-empty list"),
        ((["a"], [1], None), "values are required"),
        ((["a", "b"], [1, 1], [1, 2], [1]), "weights has 1 entries but values has 2"),
        # found by a review: weights of any shape were flattened; a missing lengths named numpy's reading of it
        ((["a"], [2], [1, 2], [[1, 2]]), r"weights must be a flat array of numbers, got shape \(1, 2\)"),
        ((["a"], [2], [1, 2], [[1], [2]]), r"weights must be a flat array of numbers, got shape \(2, 1\)"),
        ((["a"], [2], [1, 2], 1), r"weights must be a flat array of numbers, got shape \(\)"),
        ((["a"], None, [1, 2]), "lengths are required"),
    ]
    for args, message in bad:
        with pytest.raises(InvalidRequest, match=message):
            from_jagged(*args)
