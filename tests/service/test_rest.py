"""Native HTTP API against a live server, results compared with the runtime directly."""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from tests.service.conftest import Served


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.server.http, timeout=30) as c:
        yield c


def test_list_and_describe(client: httpx.Client, served: Served) -> None:
    tables = {t["name"]: t for t in client.get("/v1/tables").json()["tables"]}
    assert {"items", "bits"} <= set(tables)
    info = client.get("/v1/tables/items").json()
    table = served.tables["items"]
    assert (info["rows"], info["dim"], info["codec"], info["nbytes"]) == (table.rows, table.dim, "pq", table.nbytes)
    assert info["rerank"]["codec"] == "int8"
    assert info["fp32_nbytes"] == table.fp32_nbytes and info["version"] == table.version and info["loaded_at"]


def test_lookup_json_and_octet_match_runtime(client: httpx.Client, served: Served) -> None:
    ids = [0, 5, 3999, 5]
    want = served.tables["items"].lookup(ids)
    got = client.post("/v1/tables/items/lookup", json={"ids": ids}).json()
    assert got["shape"] == [4, 32]
    np.testing.assert_allclose(np.array(got["embeddings"], np.float32), want, rtol=1e-6)
    r = client.post(
        "/v1/tables/items/lookup",
        content=np.array(ids, "<i8").tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200 and r.headers["x-embserve-shape"] == "4,32"
    np.testing.assert_array_equal(np.frombuffer(r.content, "<f4").reshape(4, 32), want)
    empty = client.post("/v1/tables/items/lookup", json={"ids": []}).json()
    assert empty["shape"] == [0, 32]


def test_pooled_lookup(client: httpx.Client, served: Served) -> None:
    body = {"ids": [1, 2, 3, 4, 5], "offsets": [0, 2], "mode": "mean"}
    got = np.array(client.post("/v1/tables/items/lookup", json=body).json()["embeddings"], np.float32)
    np.testing.assert_allclose(got, served.tables["items"].lookup_pooled([1, 2, 3, 4, 5], [0, 2], "mean"), rtol=1e-5)


def test_search_and_score_match_runtime(client: httpx.Client, served: Served) -> None:
    table = served.tables["items"]
    q = table.lookup([10, 20]) + 0.01
    body: dict[str, Any] = {"queries": q.tolist(), "k": 7, "metric": "l2", "oversample": 5}
    got = client.post("/v1/tables/items/search", json=body).json()
    want_ids, want_scores = table.search(q, 7, "l2", 5)
    np.testing.assert_array_equal(got["ids"], want_ids)
    np.testing.assert_allclose(got["scores"], want_scores, rtol=1e-5)
    got = client.post("/v1/tables/items/search", json={"query_ids": [3, 4], "k": 5, "oversample": 4}).json()
    want_ids, _ = table.search_by_id([3, 4], 5, "ip", 4, True)
    np.testing.assert_array_equal(got["ids"], want_ids)
    got = client.post("/v1/tables/items/score", json={"candidate_ids": [[1, 2], [3, 4]], "query_ids": [5, 6]}).json()
    np.testing.assert_allclose(got["scores"], table.score([[1, 2], [3, 4]], query_ids=[5, 6]), rtol=1e-5)
    bits = client.post("/v1/tables/bits/search", json={"query_ids": [7], "k": 3, "metric": "hamming"}).json()
    np.testing.assert_array_equal(bits["ids"], served.tables["bits"].search_by_id([7], 3, "hamming")[0])


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("post", "/v1/tables/nope/lookup", {"ids": [1]}, 404, "not found"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, 4000]}, 400, "ids[1] = 4000"),
    ("post", "/v1/tables/items/lookup", {"ids": [-1]}, 400, "ids[0] = -1"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, [2]]}, 400, "rectangular"),
    (
        "post",
        "/v1/tables/items/lookup",
        {"ids": [[1, 2], [3]]},
        400,
        "ids must be a rectangular array of numbers (every",
    ),
    ("post", "/v1/tables/items/lookup", {"ids": ["a"]}, 400, "numbers"),
    ("post", "/v1/tables/items/lookup", {"ids": "1,2,3"}, 400, "ids must hold numbers, got strings"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, 2], "mode": "mean"}, 400, "mode pools bags"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, 2], "weights": [1, 1]}, 400, "weights need bags"),
    ("post", "/v1/tables/items/lookup", {"ids": [1.5]}, 400, "integers"),
    ("post", "/v1/tables/items/lookup", {"ids": [True]}, 400, "booleans"),
    # numpy reads [1, true] as [1, 1]: a mistyped id was looked up as row 1
    ("post", "/v1/tables/items/lookup", {"ids": [1, True]}, 400, "ids[1] is true among numbers"),
    ("post", "/v1/tables/items/search", {"queries": [[0.5] * 31 + [False]], "k": 3}, 400, "queries[0][31] is false"),
    (
        "post",
        "/v1/tables/items/search",
        {"query_ids": [1], "exclude_ids": [2, False], "exclude_self": True},
        400,
        "exclude_ids[1] is false",
    ),
    ("post", "/v1/tables/items/lookup", {}, 400, "ids is required"),
    ("post", "/v1/tables/items/lookup", [1, 2], 400, "JSON object"),
    ("post", "/v1/tables/items/lookup", {"ids": [1] * 5001}, 413, "limit"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, 2], "offsets": [1]}, 400, "offsets[0]"),
    ("post", "/v1/tables/items/lookup", {"ids": [1], "offsets": [0], "mode": "max"}, 400, "mode"),
    # bags whose int64 differences or sums wrap; the server crashed on them
    ("post", "/v1/tables/items/lookup", {"ids": [1], "offsets": [0, 2**63 - 1, -2]}, 400, "offsets[2] = -2"),
    ("post", "/v1/tables/items/lookup", {"ids": [1], "lengths": [2**63 - 1, 2**63 - 1, 3]}, 400, "past the int64"),
    ("post", "/v1/tables/items/search", {"queries": [[0.0] * 31], "k": 3}, 400, "dimension 31"),
    # finite values whose scores overflow float32 came back as nulls or as empty results
    ("post", "/v1/tables/items/search", {"queries": [[1e20] * 32], "k": 3, "metric": "l2"}, 400, "below 2**50"),
    ("post", "/v1/tables/items/search", {"queries": [[0.0] * 32, [3e38] * 32], "k": 3}, 400, "queries[1] holds"),
    ("post", "/v1/tables/items/score", {"queries": [[1e38] * 32], "candidate_ids": [[1]]}, 400, "below 2**50"),
    ("post", "/v1/tables/items/lookup", {"ids": [1, 2], "offsets": [0], "weights": [1, 3e38]}, 400, "weights[1] holds"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "k": 0}, 400, "k must be"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "k": "5"}, 400, "k must be"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "k": 2000}, 413, "limit"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "k": 10, "oversample": 500}, 413, "k × oversample"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "metric": "hamming"}, 400, "hamming"),
    ("post", "/v1/tables/items/search", {"query_ids": [1], "metric": "cos"}, 400, "metric"),
    ("post", "/v1/tables/items/search", {"k": 3}, 400, "exactly one"),
    # taken by query_ids only, yet refused by queries too: a value no search takes was answered 200
    ("post", "/v1/tables/items/search", {"queries": [[0.0] * 32], "exclude_self": "yes"}, 400, "exclude_self"),
    ("post", "/v1/tables/items/search", {"queries": [[0.0] * 32], "exclude_self": 7}, 400, "exclude_self"),
    ("post", "/v1/tables/items/score", {"candidate_ids": [1, 2], "query_ids": [1]}, 400, "2-D"),
    ("post", "/v1/tables/items/score", {"candidate_ids": [[1, 9999]], "query_ids": [1]}, 400, "candidate_ids"),
    (
        "post",
        "/v1/tables/items/score",
        {"candidate_ids": [[1, 2], [3, -4]], "query_ids": [1, 2]},
        400,
        "candidate_ids[1][1] = -4",
    ),
    # a misspelt option was answered as if left out (k=10 for "topk")
    ("post", "/v1/tables/items/search", {"query_ids": [1], "topk": 3}, 400, "unknown field(s) 'topk'"),
    ("post", "/v1/tables/items/lookup", {"ids": [1], "offset": [0]}, 400, "unknown field(s) 'offset'"),
    ("post", "/v1/tables/items/score", {"query_ids": [1], "candidate_ids": [[1]], "k": 1}, 400, "unknown field(s) 'k'"),
    ("get", "/v1/tables/nope", None, 404, "not found"),
    ("get", "/v1/nothing-here", None, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    client: httpx.Client, method: str, path: str, body: Any, status: int, message: str
) -> None:
    r = client.request(method.upper(), path, json=body) if body is not None else client.request(method.upper(), path)
    assert r.status_code == status, r.text
    assert "error" in r.json() and message in r.json()["error"]
    assert client.post("/v1/tables/items/lookup", json={"ids": [1]}).status_code == 200


def test_the_octet_media_type_is_read_whatever_its_case(client: httpx.Client, served: Served) -> None:
    body = np.array([3, 7], "<i8").tobytes()
    for content_type in ("Application/Octet-Stream", "APPLICATION/OCTET-STREAM; charset=binary"):
        r = client.post("/v1/tables/items/lookup", content=body, headers={"content-type": content_type})
        assert r.status_code == 200, r.text
        got = np.frombuffer(r.content, "<f4").reshape(2, -1)
        np.testing.assert_array_equal(got, served.tables["items"].lookup(np.array([3, 7])))


def test_raw_bad_bodies(client: httpx.Client) -> None:
    r = client.post("/v1/tables/items/lookup", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post(
        "/v1/tables/items/lookup", content=b"\x01\x02\x03", headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and "multiple of 8" in r.json()["error"]
    r = client.post(
        "/v1/tables/items/lookup", content=b"0" * 2_000_001, headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 413
    r = client.post(
        "/v1/tables/items/search", content=b'{"queries": [[NaN]]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/tables/items/search", "/v1/tables/items/lookup", "/v2/models/items/infer"])
def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(served: Served, path: str) -> None:
    # a body that declares no length was read whole before it was measured: a client could make
    # the server hold gigabytes before the 413. Now the answer comes while the body still arrives.
    limit = 2_000_000
    chunk = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", served.server.http_port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 40 * limit and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(chunk)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while not reply.endswith(b"}") and (more := sock.recv(4096)):
                reply += more
    assert reply.startswith(b"HTTP/1.1 413"), (sent, reply[:200])
    assert b"exceeds the limit of 2000000" in reply
    assert sent < 40 * limit


def test_a_json_body_of_more_numbers_than_the_limit_is_refused_before_it_is_parsed(served: Served) -> None:
    # parsed, each number is a Python object of ~32 bytes: 64 MiB of "0," took over 1 GB
    http = served.server.http
    for path, body in [
        ("/v1/tables/items/lookup", {"ids": [0] * 300_000}),
        ("/v1/tables/items/search", {"queries": [[0.0] * 32] * 10_000}),
        (
            "/v2/models/items/infer",
            {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [300_000], "data": [0] * 300_000}]},
        ),
    ]:
        r = httpx.post(f"{http}{path}", json=body, timeout=30)
        assert r.status_code == 413 and "values exceeds the limit of 200000" in r.json()["error"], r.text[:300]
    # found by a review: lists nested 500 deep have one comma a thousand brackets, and passed the
    # count (a 32 MB body took 1.6 GB to parse)
    nested = b'{"ids": [' + b",".join([b"[" * 500 + b"]" * 500] * 1000) + b"]}"
    r = httpx.post(f"{http}/v1/tables/items/lookup", content=nested, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "values exceeds the limit of 200000" in r.json()["error"], r.text[:300]
    with grpc.insecure_channel(served.server.grpc) as channel:
        infer = ipb.ModelInferRequest(model_name="items")
        infer.inputs.add(name="ids", datatype="INT64", shape=[300_000]).contents.int64_contents.extend([0] * 300_000)
        with pytest.raises(grpc.RpcError) as refused:
            ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "300000 values in the inputs' contents exceed the limit of 200000" in str(refused.value.details())
        # the limit is the request's, not an input's: two inputs under it each, over it together
        bag = ipb.ModelInferRequest(model_name="items.bag")
        bag.inputs.add(name="ids", datatype="INT64", shape=[150_000]).contents.int64_contents.extend([0] * 150_000)
        bag.inputs.add(name="lengths", datatype="INT64", shape=[150_000]).contents.int64_contents.extend([1] * 150_000)
        with pytest.raises(grpc.RpcError) as refused:
            ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(bag)
        assert "300000 values in the inputs' contents exceed the limit of 200000" in str(refused.value.details())


def test_ids_past_int64_and_floats_past_float32_are_named_and_nothing_is_logged(
    client: httpx.Client, served: Served
) -> None:
    # JSON integers past int64 used to wrap to -9223372036854775808, with a numpy warning in the log
    r = client.post("/v1/tables/items/lookup", content=b'{"ids": [1, 99999999999999999999]}')
    assert r.status_code == 400
    assert "ids[1] = 1e+20 is out of the int64 range" in r.json()["error"]
    r = client.post("/v1/tables/items/lookup", content=b'{"ids": [10000000000000000000]}')
    assert r.status_code == 400 and "ids[0] = 10000000000000000000 is out of the int64 range" in r.json()["error"]
    r = client.post("/v1/tables/items/search", json={"queries": [[1e300] * 32], "k": 3})
    assert r.status_code == 400 and "beyond float32's range" in r.json()["error"]
    body = {"inputs": [{"name": "queries", "shape": [1, 32], "datatype": "FP32", "data": [1e300] * 32}]}
    r = client.post("/v2/models/items.search/infer", json=body)
    assert r.status_code == 400 and "beyond the range of FP32" in r.json()["error"]
    assert client.post("/v1/tables/items/lookup", json={"ids": [1]}).status_code == 200
    assert "Warning" not in served.server.log()
