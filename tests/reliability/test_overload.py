"""Clients that send their bodies slowly hold connections, not concurrency slots: with more of
them than the limit, lookups over HTTP and gRPC and the health endpoints still answer. (Over the
limit a request is refused from its headers alone: tests/service/test_overload.py.)"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import httpx
import numpy as np

from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from tests.reliability.conftest import MAX_CONCURRENCY, Reliable, raw_connect

BODY = (
    '{"queries": ' + str(np.round(np.random.default_rng(0).standard_normal((400, 32)), 6).tolist()) + ', "k": 10}'
).encode()
HEAD = 16


def arriving_bytes(reliable: Reliable) -> float:
    text = httpx.get(f"{reliable.server.http}/metrics", timeout=5).text
    line = next(line for line in text.splitlines() if line.startswith("embserve_http_body_bytes_arriving "))
    return float(line.split()[1])


def test_bodies_still_arriving_hold_no_slot_and_others_are_served(reliable: Reliable) -> None:
    # found by an adversarial probe: a slot was taken before the body was read, so a byte every
    # few seconds on as many connections as the limit kept every HTTP and gRPC request out
    port = reliable.server.http_port
    assert len(BODY) > 100_000
    stop = threading.Event()
    holders: list[socket.socket] = [raw_connect(port) for _ in range(MAX_CONCURRENCY + 2)]
    for sock in holders:
        sock.sendall(
            b"POST /v1/tables/t/search HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:HEAD]
        )

    def trickle() -> None:  # a byte now and then: slow, but inside the body read timeout
        sent = HEAD
        while not stop.wait(0.3):
            for sock in holders:
                sock.sendall(BODY[sent : sent + 1])
            sent += 1

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        with httpx.Client(base_url=reliable.server.http, timeout=5) as client:
            deadline = time.monotonic() + 10
            while arriving_bytes(reliable) < len(holders) * HEAD:  # every holder's head is in
                assert time.monotonic() < deadline, "the holders' bodies never arrived"
                time.sleep(0.02)
            for _ in range(5):
                r = client.post("/v1/tables/t/search", content=BODY, headers={"content-type": "application/json"})
                assert r.status_code == 200, r.text
                assert client.get("/healthz").status_code == 200
            with grpc.insecure_channel(reliable.server.grpc) as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                reply = stub.Lookup(pb.LookupRequest(table="t", ids=array_to_tensor(np.arange(8))), timeout=5)
                assert list(reply.embeddings.shape) == [8, 32]
            assert arriving_bytes(reliable) >= len(holders) * HEAD  # the holders are still there
    finally:
        stop.set()
        feeder.join()
        for sock in holders:
            sock.close()
