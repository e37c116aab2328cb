"""Backpressure and readiness errors, in process: over the concurrency limit the answer is
429 / RESOURCE_EXHAUSTED at once; while draining, 503 / UNAVAILABLE. An HTTP body is read before
its request takes a slot (the ASGI front, driven by hand here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import runtime
from service.core import EmbeddingService
from service.rest import create_app, create_asgi
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


def lookup_scope() -> dict[str, Any]:
    body_length = str(len(LOOKUP_BODY)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", body_length)]
    return {"type": "http", "method": "POST", "path": "/v1/tables/t/lookup", "headers": headers, "query_string": b""}


LOOKUP_BODY = b'{"ids": [1, 2, 3]}'


class Exchange:
    """One ASGI request driven by hand: its body handed over in `parts` as the test releases
    them, its answer collected."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.released = asyncio.Event()
        self.reads = 0
        self.status = 0
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if self.reads > 1:
            await self.released.wait()
        if self.reads > len(self.parts):
            await asyncio.Event().wait()  # a client that says nothing more
        return {"type": "http.request", "body": self.parts[self.reads - 1], "more_body": self.reads < len(self.parts)}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.body += message.get("body", b"")


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_http_over_limit_is_refused_from_its_headers_without_reading_the_body(service: EmbeddingService) -> None:
    app = create_asgi(service)
    exchange = Exchange([LOOKUP_BODY])
    with service.request("test", "hold", "t"):  # occupy the only slot
        await asyncio.wait_for(app(lookup_scope(), exchange.receive, exchange.send), 10)
    assert (exchange.status, exchange.reads) == (429, 0)
    exchange = Exchange([LOOKUP_BODY])
    await asyncio.wait_for(app(lookup_scope(), exchange.receive, exchange.send), 10)
    assert exchange.status == 200, exchange.body


async def test_a_body_arriving_holds_no_slot_and_takes_one_once_it_is_in(service: EmbeddingService) -> None:
    app = create_asgi(service)
    slow = Exchange([LOOKUP_BODY[:5], LOOKUP_BODY[5:]])
    task = asyncio.create_task(app(lookup_scope(), slow.receive, slow.send))
    await wait_until(lambda: service.receiving == 1)
    assert (service.in_flight, service.arriving_body_bytes) == (0, 5)
    fast = Exchange([LOOKUP_BODY])
    await asyncio.wait_for(app(lookup_scope(), fast.receive, fast.send), 10)  # the only slot is free: served
    assert fast.status == 200, fast.body
    slow.released.set()
    await asyncio.wait_for(task, 10)
    assert slow.status == 200 and (service.receiving, service.in_flight, service.arriving_body_bytes) == (0, 0, 0)


async def test_bodies_arriving_at_once_are_bounded_in_bytes() -> None:
    svc = EmbeddingService(Settings(demo=False, max_arriving_body_bytes=2048, max_body_bytes=2048))
    svc.store.put("t", runtime.compress(low_rank_table(100, 8), "int8"))
    svc.started = True
    app = create_asgi(svc)
    try:
        first = Exchange([b" " * 1500, LOOKUP_BODY])
        task = asyncio.create_task(app(lookup_scope() | {"headers": []}, first.receive, first.send))
        await wait_until(lambda: svc.arriving_body_bytes == 1500)
        second = Exchange([b" " * 1000, LOOKUP_BODY])
        await asyncio.wait_for(app(lookup_scope() | {"headers": []}, second.receive, second.send), 10)
        assert second.status == 429 and b"arriving at once exceed" in second.body
        assert svc.arriving_body_bytes == 1500  # the refused body's bytes are given back
        first.released.set()
        await asyncio.wait_for(task, 10)
        assert first.status == 200 and svc.arriving_body_bytes == 0
    finally:
        svc.close()
    labels = {"transport": "http", "operation": "lookup", "table": "t", "status": "429"}
    assert svc.metrics.registry.get_sample_value("embserve_requests_total", labels) == 1.0


async def test_the_drain_waits_for_a_body_arriving_and_serves_it(service: EmbeddingService) -> None:
    app = create_asgi(service)
    slow = Exchange([LOOKUP_BODY[:5], LOOKUP_BODY[5:]])
    task = asyncio.create_task(app(lookup_scope(), slow.receive, slow.send))
    await wait_until(lambda: service.receiving == 1)
    service.start_draining()
    assert not await service.wait_idle(0.05)
    late = Exchange([LOOKUP_BODY])
    await asyncio.wait_for(app(lookup_scope(), late.receive, late.send), 10)
    assert (late.status, late.reads) == (503, 0)
    slow.released.set()
    await asyncio.wait_for(task, 10)
    assert slow.status == 200, slow.body
    assert await service.wait_idle(0.05)


async def test_an_admin_request_without_the_token_is_refused_before_its_body_is_read() -> None:
    # found by a review: with the body read before the slot, a caller without the token made the
    # server take in up to the body limit before its 401
    svc = EmbeddingService(Settings(demo=False, admin_token="secret"))
    svc.started = True
    app = create_asgi(svc)
    scope = {"type": "http", "method": "PUT", "path": "/v1/tables/t", "headers": [], "query_string": b""}
    try:
        for headers, status in (([], 401), ([(b"authorization", b"Bearer wrong")], 401)):
            exchange = Exchange([b'{"path": "t/v1"}'])
            await asyncio.wait_for(app(scope | {"headers": headers}, exchange.receive, exchange.send), 10)
            assert (exchange.status, exchange.reads) == (status, 0)
    finally:
        svc.close()
