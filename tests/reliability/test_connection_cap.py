"""Open connections are capped on both ports: one more than the cap is closed at once (HTTP: a
503 for any request but a probe's or a scrape's), while the connections already open stay open."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import connections
from tests.reliability.conftest import build_root, closed_within, raw_connect, server_env
from tests.service.live import LiveServer, start_server

CAP = 8


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root: Path = build_root(tmp_path_factory.mktemp("cap-artifacts"))
    env = server_env(EMBSERVE_MAX_CONNECTIONS=str(CAP), EMBSERVE_HEADER_TIMEOUT_SECONDS="30")
    server = start_server(tmp_path_factory.mktemp("cap-server"), ["--table", f"t={root / 't' / 'v1'}"], env=env)
    yield server
    assert server.terminate() == 0, server.log()


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def over_the_cap(port: int, request: bytes) -> bytes:
    """What a connection past the cap gets for `request` (b"": none sent), once it is closed."""
    extra = raw_connect(port)
    try:
        if request:
            extra.sendall(request)
        closed, received = closed_within(extra, 2.0)
    finally:
        extra.close()
    assert closed, "a connection over the cap stayed open"
    return received


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_one_connection_over_the_cap_is_closed_at_once(capped: LiveServer, transport: str) -> None:
    port = capped.http_port if transport == "http" else capped.grpc_port
    time.sleep(0.2)  # the readiness probe's connection is gone
    held = [raw_connect(port) for _ in range(CAP)]
    try:
        time.sleep(0.2)  # accepted
        if transport == "grpc":
            over_the_cap(port, b"")
        else:
            lookup = b'POST /v1/tables/t/lookup HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n{"ids": [1]}'
            assert over_the_cap(port, lookup).startswith(b"HTTP/1.1 503")
            # found by a review: the kubelet's probes and Prometheus' scrape were refused too, and
            # a pod busy with clients' connections was restarted as dead; they are answered, once
            for path in (b"/healthz", b"/readyz", b"/metrics?x=1"):
                answer = over_the_cap(port, b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            # past the probes' room too: closed before a byte is read
            probes = [raw_connect(port) for _ in range(connections.PROBE_CONNECTIONS)]
            try:
                time.sleep(0.2)
                assert over_the_cap(port, b"").startswith(b"HTTP/1.1 503")
            finally:
                for sock in probes:
                    sock.close()
        assert all(still_open(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # served again once the held connections are gone
        try:
            if httpx.get(f"http://127.0.0.1:{capped.http_port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    assert httpx.get(f"http://127.0.0.1:{capped.http_port}/healthz", timeout=1).status_code == 200
