"""Over the concurrency limit a request is refused before its body is read, and health endpoints
answer at once, while the limit is held by requests genuinely in flight (admitted, body arriving)."""

from __future__ import annotations

import http.client
import statistics
import threading
import time

import httpx
import numpy as np

from tests.reliability.conftest import MAX_CONCURRENCY, Reliable, raw_connect

BODY = (
    '{"queries": ' + str(np.round(np.random.default_rng(0).standard_normal((400, 32)), 6).tolist()) + ', "k": 10}'
).encode()


def timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - start


def test_429_and_healthz_answer_at_once_with_the_limit_full(reliable: Reliable) -> None:
    port = reliable.server.http_port
    assert len(BODY) > 100_000
    stop = threading.Event()
    holders = [raw_connect(port) for _ in range(MAX_CONCURRENCY)]
    for sock in holders:
        sock.sendall(
            b"POST /v1/tables/t/search HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:16]
        )

    def trickle() -> None:  # a byte now and then: slow, but inside the body read timeout
        sent = 16
        while not stop.wait(0.3):
            for sock in holders:
                sock.sendall(BODY[sent : sent + 1])
            sent += 1

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        deadline = time.monotonic() + 1.0
        status = 0
        while status != 429 and time.monotonic() < deadline:
            status, _ = timed(conn, "POST", "/v1/tables/t/search", BODY)
        assert status == 429, f"with {MAX_CONCURRENCY} requests in flight a search got {status}, not 429"
        refusals, health = [], []
        for _ in range(9):
            status, seconds = timed(conn, "POST", "/v1/tables/t/search", BODY)
            assert status == 429
            refusals.append(seconds)
            status, seconds = timed(conn, "GET", "/healthz")
            assert status == 200
            health.append(seconds)
        assert statistics.median(refusals) < 0.020, f"429 took {[round(t * 1e3, 1) for t in refusals]} ms"
        assert statistics.median(health) < 0.020, f"/healthz took {[round(t * 1e3, 1) for t in health]} ms"
    finally:
        stop.set()
        feeder.join()
        for sock in holders:
            sock.close()
        conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots come back once the holders are gone
        r = httpx.post(f"{reliable.server.http}/v1/tables/t/search", content=BODY, timeout=5)
        if r.status_code == 200:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
