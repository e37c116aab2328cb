"""SIGTERM with requests in flight: readiness drops at once, running requests finish, new ones
are refused cleanly, and the process exits 0 within the grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import runtime
from tests.conftest import low_rank_table
from tests.service.live import free_ports, start_server


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "v1"
    runtime.compress(low_rank_table(300_000, 64, seed=3), "fp16").save(path)
    return path


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(big_table: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, ["--table", f"big={big_table}", "--grace-seconds", "20"])
    queries = np.random.default_rng(0).standard_normal((1000, 64)).tolist()
    results: list[httpx.Response] = []

    def slow_search() -> None:
        results.append(
            httpx.post(f"{server.http}/v1/tables/big/search", json={"queries": queries, "k": 100}, timeout=60)
        )

    try:
        workers = [threading.Thread(target=slow_search) for _ in range(3)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 10
        # every search admitted (or already answered) before the signal: one still being received and
        # parsed when it lands is a new request, and draining rightly refuses it
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{server.http}/metrics").text
            busy = [line for line in metrics.splitlines() if line.startswith("embserve_requests_in_flight ")]
            if busy and float(busy[0].split()[1]) + len(results) >= 3:
                break
            time.sleep(0.02)
        server.proc.send_signal(15)
        time.sleep(0.3)
        ready = httpx.get(f"{server.http}/readyz")
        assert ready.status_code == 503 and ready.json()["draining"] is True
        refused = httpx.post(f"{server.http}/v1/tables/big/lookup", json={"ids": [1]})
        assert refused.status_code == 503 and "draining" in refused.json()["error"]
        with grpc.insecure_channel(server.grpc) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            )
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        for w in workers:
            w.join(60)
        assert [r.status_code for r in results] == [200, 200, 200]
        assert all(np.array(r.json()["ids"]).shape == (1000, 100) for r in results)
        assert server.proc.wait(30) == 0, server.log()
    finally:
        server.terminate()  # a failed assertion leaves no server running into the next test


@pytest.mark.slow
def test_demo_table_is_served_when_nothing_is_configured(tmp_path: Path) -> None:
    server = start_server(tmp_path, [], env={"EMBSERVE_DEMO_ROWS": "3000"})
    try:
        tables = httpx.get(f"{server.http}/v1/tables").json()["tables"]
        assert [t["name"] for t in tables] == ["demo"]
        assert tables[0]["codec"] == "pq" and tables[0]["rerank"]["codec"] == "int8" and tables[0]["rows"] == 3000
        assert "built-in demo table" in server.log()
        first = httpx.post(f"{server.http}/v1/tables/demo/search", json={"query_ids": [5], "k": 5, "oversample": 4})
        assert first.status_code == 200 and len(first.json()["ids"][0]) == 5
    finally:
        assert server.terminate() == 0
    # the second start reuses the cached artifact
    again = start_server(tmp_path, [], env={"EMBSERVE_DEMO_ROWS": "3000"})
    try:
        assert "building the demo table" not in again.log()
    finally:
        assert again.terminate() == 0


@pytest.mark.slow
def test_a_request_still_running_past_the_grace_gets_503_and_the_exit_is_prompt(tmp_path: Path) -> None:
    """A body that never finishes arriving outlives the drain: past the grace it is answered 503
    (uvicorn cancelled it and answered 500, with a traceback in the log) and the process exits 0
    about a second after the grace, not after a second grace."""
    table = tmp_path / "t" / "v1"
    runtime.compress(low_rank_table(200, 8, seed=1), "int8").save(table)
    server = start_server(tmp_path, ["--table", f"t={table}", "--grace-seconds", "2", "--body-timeout-seconds", "60"])
    try:
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=15)
        sock.sendall(
            b"POST /v1/tables/t/lookup HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 10000\r\n\r\n" + b" " * 100
        )
        time.sleep(0.3)  # admitted and reading its body
        signalled = time.monotonic()
        server.proc.send_signal(15)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"stopped before this request finished" in answer
        assert server.proc.wait(15) == 0, server.log()
        assert time.monotonic() - signalled < 2 + 3
        log = server.log()
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    finally:
        server.terminate()


@pytest.mark.slow
def test_sigterm_while_a_table_loads_exits_0_at_once(tmp_path: Path) -> None:
    """Found by a review: SIGTERM while a table still loaded (here: its kernels compiling into an
    empty numba cache) waited for the load's thread, then the exit watchdog dumped every stack
    and exited 1, 10 s later. Nothing is served yet, so nothing needs draining."""
    table = tmp_path / "t" / "v1"
    runtime.compress(low_rank_table(200, 8, seed=1), "pq", subspaces=4).save(table)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty-cache"), "EMBSERVE_DEMO": "0"}
    log_path = tmp_path / "server.log"
    http_port, grpc_port = free_ports(2)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--table", f"t={table}"]
    cmd += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "embserve listening" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # loading: compiling its kernels takes far longer than this
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=5).status_code == 503
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        assert time.monotonic() - signalled < 5, log_path.read_text()
        assert "Timeout" not in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
