"""Stalled clients are closed after the header / body read timeout while normal traffic is served;
on the gRPC port a connection that never speaks HTTP/2 is closed too."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import numpy as np

import runtime
from tests.conftest import low_rank_table
from tests.reliability.conftest import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    KEEP_ALIVE,
    MAX_CONCURRENCY,
    Reliable,
    closed_within,
    open_fds,
    raw_connect,
    server_env,
)
from tests.service.live import LiveServer, start_server

MARGIN = 2.5


def test_stalled_http_clients_are_closed_after_the_read_timeouts(reliable: Reliable) -> None:
    server = reliable.server
    fds_before = open_fds(server.proc.pid)
    silent = [raw_connect(server.http_port) for _ in range(5)]
    partial_headers = [raw_connect(server.http_port) for _ in range(5)]
    # a request whose body is arriving holds a concurrency slot: leave one for the normal traffic
    partial_body = [raw_connect(server.http_port) for _ in range(MAX_CONCURRENCY - 1)]
    try:
        for sock in partial_headers:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nx-slow: ")
        for sock in partial_body:
            sock.sendall(
                b"POST /v1/tables/t/lookup HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                b'content-length: 1000\r\n\r\n{"ids": [1'
            )
        started = time.monotonic()
        while open_fds(server.proc.pid) < fds_before + 10 + MAX_CONCURRENCY - 1 and time.monotonic() < started + 1:
            time.sleep(0.02)  # the server accepts them
        assert open_fds(server.proc.pid) >= fds_before + 10 + MAX_CONCURRENCY - 1
        for _ in range(5):  # normal traffic is served meanwhile
            assert httpx.get(f"{server.http}/healthz").status_code == 200
            assert httpx.post(f"{server.http}/v1/tables/t/lookup", json={"ids": [1]}).status_code == 200
        for group, timeout in (
            (silent, HEADER_TIMEOUT),
            (partial_headers, HEADER_TIMEOUT),
            (partial_body, BODY_TIMEOUT),
        ):
            for sock in group:
                closed, received = closed_within(sock, timeout + MARGIN - (time.monotonic() - started))
                sock.close()
                assert closed, f"a stalled connection was still open {time.monotonic() - started:.1f} s later"
                assert received.startswith(b"HTTP/1.1 408"), received[:200]
    finally:
        for sock in silent + partial_headers + partial_body:
            sock.close()
    deadline = time.monotonic() + 2
    while open_fds(server.proc.pid) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(server.proc.pid) <= fds_before + 2
    assert httpx.get(f"{server.http}/healthz").status_code == 200


def test_silent_grpc_connection_is_closed_after_the_header_timeout(reliable: Reliable) -> None:
    sock = raw_connect(reliable.server.grpc_port)
    try:
        closed, _ = closed_within(sock, HEADER_TIMEOUT + MARGIN)
        assert closed, "a gRPC connection that sent nothing was still open"
    finally:
        sock.close()


def test_connection_idle_after_an_unread_body_is_closed_by_keep_alive(reliable: Reliable) -> None:
    """/healthz answers without reading the body sent with it; the rest of that body arrives after
    the response, and then the connection is idle: the keep-alive timeout must still close it."""
    sock = raw_connect(reliable.server.http_port)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\ncontent-length: 10\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"0123456789")
        closed, _ = closed_within(sock, KEEP_ALIVE + MARGIN)
        assert closed, "an idle kept-alive connection stayed open"
    finally:
        sock.close()


def test_an_answer_left_unread_is_dropped_after_the_body_timeout(tmp_path: Path) -> None:
    # found by a review: uvicorn writes a whole answer into the connection's buffer and the
    # request is over, so six clients that never read held 1.5 GB for as long as they stayed
    table = tmp_path / "wide" / "v1"
    runtime.compress(low_rank_table(2000, 256, seed=3), "int8").save(table)
    env = server_env(EMBSERVE_MAX_IDS="100000")
    server = start_server(tmp_path, ["--table", f"wide={table}"], env=env)
    try:
        ids = np.arange(20_000, dtype="<i8") % 2000
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room on our side
        sock.connect(("127.0.0.1", server.http_port))
        sock.sendall(
            b"POST /v1/tables/wide/lookup HTTP/1.1\r\nhost: t\r\ncontent-type: application/octet-stream\r\n"
            + f"content-length: {ids.nbytes}\r\n\r\n".encode()
            + ids.tobytes()
        )
        deadline = time.monotonic() + BODY_TIMEOUT + 10
        while write_timeouts(server) < 1:  # 20 MB of answer, unread
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.1)
        closed, received = closed_within(sock, 10)
        sock.close()
        assert closed and len(received) < 20_000 * 256 * 4
        assert httpx.get(f"{server.http}/healthz").status_code == 200
    finally:
        assert server.terminate() == 0


def write_timeouts(server: LiveServer) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    prefix = 'embserve_read_timeouts_total{phase="write",transport="http"} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))
