"""max_answer_bytes: a request whose answer arrays would pass it is refused by name before any
work, on every path that answers rows (found by a review: a lookup of 100,000 ids of a 1,024-wide
table, within max_ids, made a 400 MB answer gRPC could not send, and the call was counted ok)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

import runtime
from runtime.errors import PayloadTooLarge
from service.core import EmbeddingService
from service.multi import MultiLookupRequest, TableLookup
from service.requests import InferRequest, LookupRequest, ScoreRequest, SearchRequest
from service.settings import Settings
from tests.conftest import low_rank_table

LIMIT = 4096
"""bytes: 128 rows of 8 float32, or 341 search results of 12 bytes"""


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = EmbeddingService(Settings(demo=False, max_answer_bytes=LIMIT))
    svc.store.put("users", runtime.compress(low_rank_table(300, 8, seed=41), "fp32"))
    svc.store.put("items", runtime.compress(low_rank_table(300, 4, seed=42), "int8"))
    svc.started = True
    yield svc
    svc.close()


def refused(nbytes: int, described: str = "") -> pytest.RaisesExc[PayloadTooLarge]:
    return pytest.raises(
        PayloadTooLarge, match=rf"the answer would be {nbytes} bytes \({described}.*\), over the limit of {LIMIT}"
    )


async def test_lookups_and_bags(service: EmbeddingService) -> None:
    ids = np.arange(129) % 300
    with refused(129 * 8 * 4, "129 rows × 8 float32"):
        await service.lookup("test", LookupRequest("users", ids))
    assert (await service.lookup("test", LookupRequest("users", ids[:128]))).shape == (128, 8)
    # a bag's answer is a row a bag, whatever the ids pooled into it
    pooled = await service.lookup("test", LookupRequest("users", np.arange(300), lengths=[100, 200]))
    assert pooled.shape == (2, 8)
    with refused(129 * 8 * 4):
        await service.lookup("test", LookupRequest("users", np.arange(129), lengths=[1] * 129))


async def test_many_tables_count_together(service: EmbeddingService) -> None:
    # 100 rows of 8 and 50 of 4: 3,200 + 800 bytes fit; 120 rows of 8 do not
    fits = MultiLookupRequest((TableLookup("users", list(range(100))), TableLookup("items", list(range(50)))))
    assert [r.embeddings.shape for r in (await service.multi_lookup("test", fits)).results] == [(100, 8), (50, 4)]
    over = MultiLookupRequest((TableLookup("users", list(range(120))), TableLookup("items", list(range(50)))))
    with refused(120 * 8 * 4 + 50 * 4 * 4, "1160 float32 over 2 tables"):
        await service.multi_lookup("test", over)


async def test_searches_scores_and_inference(service: EmbeddingService) -> None:
    queries = np.ones((10, 8), np.float32)
    with refused(10 * 35 * 12, "10 queries × 35 results"):
        await service.search("test", SearchRequest("users", queries=queries, k=35))
    ids, scores = await service.search("test", SearchRequest("users", queries=queries, k=34))
    assert ids.shape == scores.shape == (10, 34)
    with refused(10 * 35 * 12):
        await service.search("test", SearchRequest("users", query_ids=np.arange(10), k=35))
    with refused(1025 * 4, "1025 float32 scores"):
        await service.score("test", ScoreRequest("users", np.zeros((1, 1025), np.int64), query_ids=[0]))
    with refused(129 * 8 * 4):
        await service.infer("test", InferRequest("users", {"ids": np.arange(129)}, {}))
    counted = service.metrics.registry.get_sample_value(
        "embserve_requests_total", {"transport": "test", "operation": "infer", "table": "users", "status": "413"}
    )
    assert counted == 1
