"""Backpressure and readiness errors, in process: over the concurrency limit the answer is
429 / RESOURCE_EXHAUSTED at once; while draining, 503 / UNAVAILABLE."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import numpy as np
import pytest

import runtime
from service.core import EmbeddingService
from service.rest import create_app
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import NativeServicer, array_to_tensor
from service.settings import Settings
from tests.conftest import low_rank_table


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = EmbeddingService(Settings(max_concurrency=1, demo=False))
    svc.store.put("t", runtime.compress(low_rank_table(100, 8), "int8"))
    svc.started = True
    yield svc
    svc.close()


async def test_http_over_limit_is_429_and_draining_is_503(service: EmbeddingService) -> None:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v1/tables/t/lookup", json={"ids": [1]})).status_code == 200
        with service.request("test", "hold", "t"):  # occupy the only slot
            r = await client.post("/v1/tables/t/lookup", json={"ids": [1]})
            assert r.status_code == 429 and "limit" in r.json()["error"]
        assert (await client.post("/v1/tables/t/lookup", json={"ids": [1]})).status_code == 200
        service.start_draining()
        r = await client.post("/v1/tables/t/lookup", json={"ids": [1]})
        assert r.status_code == 503 and (await client.get("/readyz")).status_code == 503
    text = service.metrics.registry.get_sample_value(
        "embserve_requests_total", {"transport": "http", "operation": "lookup", "table": "t", "status": "429"}
    )
    assert text == 1.0


async def test_grpc_over_limit_is_resource_exhausted(service: EmbeddingService) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_EmbeddingServiceServicer_to_server(NativeServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            request = pb.LookupRequest(table="t", ids=array_to_tensor(np.array([1])))
            with service.request("test", "hold", "t"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Lookup(request)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Lookup(request)).embeddings.shape == [1, 8]
            service.start_draining()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Lookup(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
    # each refusal counted once: by the admission, not again by the call's own record
    for status in ("429", "503"):
        labels = {"transport": "grpc", "operation": "lookup", "table": "t", "status": status}
        assert service.metrics.registry.get_sample_value("embserve_requests_total", labels) == 1.0, status
