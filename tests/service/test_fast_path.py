"""The octet-stream lookup fast path answers exactly as the FastAPI route behind it: same bodies,
statuses, headers and metrics, for good and bad requests; everything else passes through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

import runtime
from service.core import EmbeddingService
from service.rest import OCTET, create_app, create_asgi
from service.settings import Settings
from tests.conftest import low_rank_table

CASES = [
    ("t", np.array([3, 0, 99, 3], "<i8").tobytes(), OCTET),
    ("t", b"", OCTET),
    ("t", b"\x01\x02\x03", OCTET),  # not a multiple of 8 bytes
    ("t", np.array([100], "<i8").tobytes(), OCTET),  # out of range
    ("t", np.array([-1], "<i8").tobytes(), OCTET),
    ("missing", np.array([1], "<i8").tobytes(), OCTET),
    ("t", np.arange(40, dtype="<i8").tobytes(), OCTET),  # over max_ids
    ("t", np.zeros(600, "<i8").tobytes(), OCTET),  # over max_body_bytes
    ("t", np.array([1], "<i8").tobytes(), "application/octet-stream; charset=binary"),
    ("t", b'{"ids": [1, 2]}', "application/json"),  # not octet: the FastAPI route answers
]


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = EmbeddingService(Settings(demo=False, max_ids=32, max_body_bytes=4096))
    svc.store.put("t", runtime.compress(low_rank_table(100, 8), "int8"))
    svc.started = True
    yield svc
    svc.close()


async def _post(app: object, name: str, body: bytes, content_type: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(f"/v1/tables/{name}/lookup", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(("name", "body", "content_type"), CASES)
async def test_fast_path_answers_as_the_route_does(
    service: EmbeddingService, name: str, body: bytes, content_type: str
) -> None:
    fast = await _post(create_asgi(service), name, body, content_type)
    routed = await _post(create_app(service), name, body, content_type)
    assert fast.status_code == routed.status_code
    assert fast.content == routed.content
    for header in ("content-type", "x-embserve-shape", "x-embserve-dtype"):
        assert fast.headers.get(header) == routed.headers.get(header)
    if fast.status_code == 200 and content_type.startswith(OCTET):
        ids = np.frombuffer(body, "<i8")
        rows = np.frombuffer(fast.content, "<f4").reshape(ids.size, 8)
        np.testing.assert_array_equal(rows, service.store.get("t").table.lookup(ids))
    elif fast.status_code != 200:
        assert "error" in fast.json()


async def test_fast_path_counts_requests_like_the_route(service: EmbeddingService) -> None:
    await _post(create_asgi(service), "t", np.array([1, 2], "<i8").tobytes(), OCTET)
    await _post(create_asgi(service), "t", np.array([500], "<i8").tobytes(), OCTET)
    sample = service.metrics.registry.get_sample_value
    labels = {"transport": "http", "operation": "lookup", "table": "t"}
    assert sample("embserve_requests_total", {**labels, "status": "ok"}) == 1.0
    assert sample("embserve_requests_total", {**labels, "status": "400"}) == 1.0


async def test_other_requests_pass_through(service: EmbeddingService) -> None:
    transport = httpx.ASGITransport(app=create_asgi(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/readyz")).json()["ready"] is True
        assert (await client.get("/v1/tables/t/lookup")).status_code == 405
        assert (await client.post("/v1/tables/t/search", json={"query_ids": [1], "k": 2})).status_code == 200
