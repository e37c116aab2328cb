"""A client that hangs up mid-body is counted and logged at debug level at most: no ERROR lines,
no tracebacks, on every HTTP route that reads a body."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.conftest import ADMIN_TOKEN, Reliable, raw_connect

ROUTES = [
    ("POST", "/v1/tables/t/lookup", "application/json"),
    ("POST", "/v1/tables/t/lookup", "application/octet-stream"),
    ("POST", "/v1/tables/t/search", "application/json"),
    ("POST", "/v1/tables/t/score", "application/json"),
    ("POST", "/v2/models/t/infer", "application/json"),
    ("PUT", "/v1/tables/t", "application/json"),
]


def disconnects(reliable: Reliable) -> float:
    text = httpx.get(f"{reliable.server.http}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "embserve_client_disconnects"
        for sample in family.samples
        if sample.name == "embserve_client_disconnects_total"
    )


def test_hang_up_mid_body_is_counted_not_logged_as_error(reliable: Reliable) -> None:
    log_start = len(reliable.server.log())
    before = disconnects(reliable)
    for method, path, content_type in ROUTES:
        sock = raw_connect(reliable.server.http_port)
        # an admin call reads its body only once the token checks out
        token = f"authorization: Bearer {ADMIN_TOKEN}\r\n" if method == "PUT" else ""
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: t\r\ncontent-type: {content_type}\r\n{token}"
            "content-length: 10000\r\n\r\n".encode()
            + b"\x01" * 100
        )
        time.sleep(0.05)  # the request is admitted and reading its body
        sock.close()
    deadline = time.monotonic() + 5
    while disconnects(reliable) < before + len(ROUTES) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert disconnects(reliable) == before + len(ROUTES)
    assert httpx.post(f"{reliable.server.http}/v1/tables/t/lookup", json={"ids": [1]}).status_code == 200
    log = reliable.server.log()[log_start:]
    assert "Traceback" not in log and "ERROR" not in log, log
