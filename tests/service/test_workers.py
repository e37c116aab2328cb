"""`embserve serve --workers 2`: two real worker processes behind one pair of ports.

Connections are told apart by the `x-embserve-worker` header; a kept-alive connection stays with
the worker that accepted it, so each check below is made once per worker."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import runtime
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.settings import Settings
from service.workers import WorkerRole, _admin_change, _pin_sequence, numba_threads_per_worker
from tests.conftest import low_rank_table
from tests.service.live import LiveServer, start_server

TOKEN = "s3cret"
DIM = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("workers-root")
    x = low_rank_table(60_000, DIM, seed=5)
    runtime.compress(x, "fp16").save(base / "v1")
    runtime.compress(-x, "fp16").save(base / "v2")
    return base


def connect_to_every_worker(
    server: LiveServer, workers: int, timeout: float = 60
) -> dict[int, http.client.HTTPConnection]:
    """One kept-alive connection per worker, each already answered ready by its worker."""
    found: dict[int, http.client.HTTPConnection] = {}
    deadline = time.monotonic() + timeout
    while len(found) < workers:
        assert time.monotonic() < deadline, f"saw only workers {sorted(found)}:\n{server.log()}"
        conn = fresh(server)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        worker = int(response.headers["x-embserve-worker"])
        if response.status == 200 and worker not in found:
            found[worker] = conn
        else:
            conn.close()
            time.sleep(0.02)
    return found


_opened: list[http.client.HTTPConnection] = []


def fresh(server: LiveServer) -> http.client.HTTPConnection:
    """A new connection (so a new pick by the kernel among the workers), closed after the test."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    _opened.append(conn)
    return conn


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: object = None, token: bool = False
) -> tuple[int, dict[str, str], Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {TOKEN}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.headers), json.loads(response.read())


def grpc_upsert(server: LiveServer, table: str, key: int, row: np.ndarray) -> pb.UpdateResponse:
    """One row (1, DIM) float32 upserted under `key` over gRPC, with the admin token."""
    with grpc.insecure_channel(server.grpc) as channel:
        return pb_grpc.EmbeddingServiceStub(channel).Upsert(
            pb.UpsertRequest(
                table=table,
                keys=pb.Tensor(dtype="int64", shape=[1], data=np.array([key], "<i8").tobytes()),
                rows=pb.Tensor(dtype="float32", shape=[1, DIM], data=row.tobytes()),
            ),
            metadata=[("authorization", f"Bearer {TOKEN}")],
            timeout=30,
        )


def scrape(conn: http.client.HTTPConnection, pattern: str) -> float:
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = [float(line.split()[-1]) for line in text.splitlines() if re.fullmatch(pattern, line.rsplit(" ", 1)[0])]
    assert len(found) == 1, (pattern, text)
    return found[0]


def test_admin_changes_are_replayed_to_siblings_only_from_the_shared_port() -> None:
    """Unit check of what gets replayed: loads and deletes only without Redis, row updates always."""
    assert _admin_change("PUT", "/v1/tables/t", relay_loads=True)
    assert _admin_change("DELETE", "/v1/tables/t", relay_loads=True)
    assert not _admin_change("PUT", "/v1/tables/t", relay_loads=False)
    assert _admin_change("POST", "/v1/tables/t/upsert", relay_loads=False)
    assert _admin_change("POST", "/v1/tables/t/delete", relay_loads=False)
    assert not _admin_change("POST", "/v1/tables/t/lookup", relay_loads=True)
    assert not _admin_change("GET", "/v1/tables/t", relay_loads=True)
    assert WorkerRole(1, 3, Path("/x")).siblings() == [0, 2]


def test_replayed_row_updates_carry_the_sequence_reached() -> None:
    answer = json.dumps({"table": "t", "applied": 1, "sequence": 7}).encode()
    json_body = json.dumps({"keys": [1], "rows": [[0.5]]}).encode()
    headers, body = _pin_sequence("/v1/tables/t/upsert", [("content-type", "application/json")], json_body, answer)
    assert json.loads(body) == {"keys": [1], "rows": [[0.5]], "sequence": 7}
    octet = [("content-type", "application/octet-stream"), ("x-embserve-sequence", "3")]
    headers, body = _pin_sequence("/v1/tables/t/delete", octet, b"\x01" * 8, answer)
    assert ("x-embserve-sequence", "7") in headers and ("x-embserve-sequence", "3") not in headers
    assert body == b"\x01" * 8
    # loads are replayed as they came
    assert _pin_sequence("/v1/tables/t", [], b'{"path": "v2"}', b"{}") == ([], b'{"path": "v2"}')


def test_numba_threads_split_the_cpus_unless_set() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert numba_threads_per_worker(Settings(workers=1)) <= cpus
    assert numba_threads_per_worker(Settings(workers=cpus * 4)) == 1
    assert numba_threads_per_worker(Settings(workers=2, numba_threads=3)) == 3


@pytest.mark.external
@pytest.mark.slow
def test_two_workers_share_ports_admin_changes_and_metrics(root: Path, tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        ["--workers", "2", "--table", f"t={root / 'v1'}", "--artifact-root", str(root), "--admin-token", TOKEN],
    )
    try:
        conns = connect_to_every_worker(server, 2)
        v1, v2 = runtime.load_table(root / "v1"), runtime.load_table(root / "v2")
        ids = [3, 17, 59_999]
        lookups = 0
        for conn in conns.values():
            status, _, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": ids})
            lookups += 1
            assert status == 200
            np.testing.assert_allclose(body["embeddings"], v1.lookup(np.array(ids)), rtol=1e-6)

        # a swap sent on a fresh connection lands on one worker and reaches both
        status, headers, body = call(fresh(server), "PUT", "/v1/tables/t", {"path": "v2"}, True)
        assert status == 200, body
        for worker, conn in conns.items():
            status, headers, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": ids})
            lookups += 1
            assert status == 200 and int(headers["x-embserve-worker"]) == worker
            np.testing.assert_allclose(body["embeddings"], v2.lookup(np.array(ids)), rtol=1e-6)

        # a row update likewise, and a second one keeps both workers' sequences equal
        new_row = np.full((1, DIM), 0.25, dtype=np.float32)
        for _ in range(2):
            status, _, body = call(
                fresh(server),
                "POST",
                "/v1/tables/t/upsert",
                {"keys": [17], "rows": new_row.tolist()},
                True,
            )
            assert status == 200, body
        for conn in conns.values():
            status, _, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": [17]})
            lookups += 1
            np.testing.assert_allclose(body["embeddings"], new_row, atol=2e-3)
            assert call(conn, "GET", "/v1/tables/t")[2]["sequence"] == 2

        # a gRPC upsert, too, reaches both workers
        grpc_row = np.full((1, DIM), -0.5, dtype=np.float32)
        assert grpc_upsert(server, "t", 17, grpc_row).sequence == 3
        for conn in conns.values():
            status, _, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": [17]})
            lookups += 1
            np.testing.assert_allclose(body["embeddings"], grpc_row, atol=2e-3)
            assert call(conn, "GET", "/v1/tables/t")[2]["sequence"] == 3
        new_row = grpc_row

        # refusals as on a single server: the token before the body (a malformed body without it
        # is 401, counted), and over gRPC the typed status, not UNKNOWN
        conn = fresh(server)
        conn.request("POST", "/v1/tables/t/upsert", body=b"{", headers={"authorization": "Bearer wrong"})
        refused = conn.getresponse()
        assert refused.status == 401 and "not the admin token" in json.loads(refused.read())["error"]
        with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as no_token:
            pb_grpc.EmbeddingServiceStub(channel).Upsert(
                pb.UpsertRequest(table="t", keys=pb.Tensor(dtype="int64", shape=[2], data=b"\0" * 8)), timeout=30
            )
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for conn in conns.values():
            assert (
                scrape(
                    conn, r'embserve_requests_total\{operation="admin_upsert",status="401",table="t",transport="http"\}'
                )
                == 1
            )

        # gRPC listens on the shared port too: every new channel sees the updated row
        for _ in range(4):
            with grpc.insecure_channel(server.grpc, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                reply = pb_grpc.EmbeddingServiceStub(channel).Lookup(
                    pb.LookupRequest(
                        table="t", ids=pb.Tensor(dtype="int64", shape=[1], data=np.array([17], "<i8").tobytes())
                    ),
                    timeout=10,
                )
            np.testing.assert_allclose(np.frombuffer(reply.embeddings.data, "<f4"), new_row[0], atol=2e-3)

        # one scrape, from either worker, counts both workers' requests
        for conn in conns.values():
            assert (
                scrape(conn, r'embserve_requests_total\{operation="lookup",status="ok",table="t",transport="http"\}')
                == lookups
            )
            assert scrape(conn, r"embserve_ready") == 1
            assert scrape(conn, r'embserve_table_info\{codec="fp16",rerank="",table="t",version="[^"]*"\}') == 1
    finally:
        assert server.terminate() == 0, server.log()


@pytest.mark.external
@pytest.mark.slow
def test_changes_reach_every_worker_whatever_its_load_the_name_or_the_body(root: Path, tmp_path: Path) -> None:
    # found by reviews: a replay went through the sibling's admission, so a sibling whose one
    # slot was busy refused it (429) and the workers were left serving other rows; its path went
    # out decoded, so a load of table "u?v" replaced table "u" on the siblings; and a JSON body
    # written again with the sequence reached (and with ", " separators, at first) passed the
    # sibling's body limit. The upsert below is exactly at the limit as sent.
    rows = np.full((390, DIM), 0.25, dtype=np.float32)
    update = json.dumps({"keys": list(range(390)), "rows": rows.tolist()}, separators=(",", ":"))
    server = start_server(
        tmp_path,
        [
            "--workers", "2", "--table", f"t={root / 'v1'}", "--artifact-root", str(root), "--admin-token", TOKEN,
            "--max-concurrency", "1", "--max-body-bytes", str(len(update)), "--max-queries", "100000",
        ],
    )  # fmt: skip
    try:
        conns = connect_to_every_worker(server, 2)
        v2 = runtime.load_table(root / "v2")
        # t as served at the start (the artifact root's state file may hold a swap by another test)
        t_rows = np.array(call(conns[0], "POST", "/v1/tables/t/lookup", {"ids": [5, 390]})[2]["embeddings"])
        odd = "/v1/tables/u%3Fv%20w"
        status, _, body = call(fresh(server), "PUT", odd, {"path": "v2"}, True)
        assert status == 200 and body["name"] == "u?v w", body
        grpc_row = np.full((1, DIM), 0.75, dtype=np.float32)
        grpc_upsert(server, "u?v w", 5, grpc_row)
        for conn in conns.values():
            status, _, body = call(conn, "POST", f"{odd}/lookup", {"ids": [5, 6]})
            assert status == 200, body
            np.testing.assert_allclose(body["embeddings"][0], grpc_row[0], atol=2e-3)
            np.testing.assert_allclose(body["embeddings"][1], v2.lookup(np.array([6]))[0], rtol=1e-6)
            status, _, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": [5, 390]})
            np.testing.assert_array_equal(body["embeddings"], t_rows)
            assert call(conn, "GET", "/v1/tables/t")[2]["sequence"] == 0

        # worker 1's one slot busy with a long search while the upsert lands on worker 0
        searched: list[int] = []
        search = threading.Thread(
            target=lambda: searched.append(
                call(conns[1], "POST", "/v1/tables/t/search", {"query_ids": list(range(6000)), "k": 200})[0]
            )
        )
        search.start()
        deadline = time.monotonic() + 10
        while scrape(conns[0], "embserve_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        conns[0].request(
            "POST",
            "/v1/tables/t/upsert",
            body=update,
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        response = conns[0].getresponse()
        answer = response.read()
        still_searching = search.is_alive()
        search.join(120)
        assert response.status == 200, answer
        assert still_searching, "the search should have held worker 1's slot while the upsert was replayed"
        assert searched == [200]
        for conn in conns.values():
            status, _, body = call(conn, "POST", "/v1/tables/t/lookup", {"ids": [0, 389, 390]})
            np.testing.assert_allclose(body["embeddings"][:2], rows[:2], atol=2e-3)
            np.testing.assert_array_equal(body["embeddings"][2], t_rows[1])
            assert call(conn, "GET", "/v1/tables/t")[2]["sequence"] == 1
    finally:
        assert server.terminate() == 0, server.log()


@pytest.mark.external
@pytest.mark.slow
def test_sigterm_drains_every_worker_and_a_dead_worker_stops_the_pod(root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    runtime.compress(low_rank_table(200_000, DIM, seed=6), "fp16").save(big)
    server = start_server(tmp_path, ["--workers", "2", "--table", f"t={big}", "--grace-seconds", "20"])
    try:
        conns = connect_to_every_worker(server, 2)
        queries = np.random.default_rng(0).standard_normal((1000, DIM)).tolist()
        results: dict[int, int] = {}

        def slow_search(worker: int, conn: http.client.HTTPConnection) -> None:
            results[worker] = call(conn, "POST", "/v1/tables/t/search", {"queries": queries, "k": 200})[0]

        threads = [threading.Thread(target=slow_search, args=item) for item in conns.items()]
        for thread in threads:
            thread.start()
        probe = fresh(server)
        deadline = time.monotonic() + 10
        while (busy := scrape(probe, "embserve_requests_in_flight")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy == 2, "both searches should be running when SIGTERM arrives"
        server.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert results == {0: 200, 1: 200}
        assert server.proc.wait(30) == 0, server.log()
    finally:
        server.terminate()

    # a worker killed from outside: the supervisor stops its sibling and exits 1
    server = start_server(tmp_path, ["--workers", "2", "--table", f"t={root / 'v1'}"])
    try:
        connect_to_every_worker(server, 2)
        pids = [int(p) for p in re.findall(r"workers \(pids (\d+), (\d+)\)", server.log())[0]]
        os.kill(pids[1], signal.SIGKILL)
        assert server.proc.wait(30) == 1, server.log()
        assert "worker 1" in server.log() and "exited" in server.log()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        server.terminate()
