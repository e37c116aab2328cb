"""Searches that leave ids out, over HTTP, gRPC and the Open Inference Protocol against a live
server (answers equal to the runtime's), their errors and limits, and with search batching on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import runtime
from service.core import EmbeddingService
from service.requests import SearchRequest
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from service.settings import Settings
from tests.conftest import low_rank_table
from tests.service.conftest import Served


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.server.http, timeout=30) as c:
        yield c


def tensor_of(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, {"int64": "<i8", "float32": "<f4"}[t.dtype]).reshape(list(t.shape))


def test_http_json_answers_as_the_runtime(client: httpx.Client, served: Served) -> None:
    table = served.tables["items"]
    q = table.lookup([10, 20]) + 0.01
    top = table.search(q, 5, "ip", 4)[0]
    body: dict[str, Any] = {
        "queries": q.tolist(),
        "k": 5,
        "oversample": 4,
        "exclude_ids": [int(top[0, 0]), int(top[0, 1]), int(top[1, 0])],
        "exclude_lengths": [2, 1],
    }
    got = client.post("/v1/tables/items/search", json=body).json()
    want = table.search(q, 5, "ip", 4, body["exclude_ids"], body["exclude_lengths"])
    np.testing.assert_array_equal(got["ids"], want[0])
    np.testing.assert_allclose(got["scores"], want[1], rtol=1e-5)
    assert not np.isin(got["ids"][0], top[0, :2]).any() and top[1, 0] not in got["ids"][1]
    by_id = client.post("/v1/tables/items/search", json={"query_ids": [3], "k": 4, "exclude_ids": [3, 7, 9]}).json()
    np.testing.assert_array_equal(by_id["ids"], table.search_by_id([3], 4, exclude_ids=[3, 7, 9])[0])
    bits = client.post(
        "/v1/tables/bits/search", json={"query_ids": [7], "k": 3, "metric": "hamming", "exclude_ids": [1, 2]}
    ).json()
    np.testing.assert_array_equal(
        bits["ids"], served.tables["bits"].search_by_id([7], 3, "hamming", exclude_ids=[1, 2])[0]
    )


def test_grpc_answers_as_the_runtime(served: Served) -> None:
    table = served.tables["items"]
    q = table.lookup([1, 2])
    left_out, lengths = np.array([5, 6, 7], np.int64), np.array([1, 2], np.int64)
    with grpc.insecure_channel(served.server.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        res = stub.Search(
            pb.SearchRequest(
                table="items",
                queries=array_to_tensor(q),
                k=6,
                exclude_ids=array_to_tensor(left_out),
                exclude_lengths=array_to_tensor(lengths),
            )
        )
        want = table.search(q, 6, exclude_ids=left_out, exclude_lengths=lengths)
        np.testing.assert_array_equal(tensor_of(res.ids), want[0])
        np.testing.assert_allclose(tensor_of(res.scores), want[1], rtol=1e-6)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(
                pb.SearchRequest(
                    table="items", queries=array_to_tensor(q), k=6, exclude_lengths=array_to_tensor(lengths)
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exclude_lengths needs exclude_ids" in str(info.value.details())
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(
                pb.SearchRequest(
                    table="items",
                    query_ids=array_to_tensor(np.array([1])),
                    exclude_ids=array_to_tensor(np.array([4000])),
                )
            )
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE and "exclude_ids[0] = 4000" in str(
            info.value.details()
        )


def test_oip_search_model_takes_exclusion_inputs(client: httpx.Client, served: Served) -> None:
    inputs = client.get("/v2/models/items.search").json()["inputs"]
    assert [i["name"] for i in inputs] == ["queries", "query_ids", "exclude_ids", "exclude_lengths"]
    body: dict[str, Any] = {
        "inputs": [
            {"name": "query_ids", "shape": [2], "datatype": "INT64", "data": [11, 12]},
            {"name": "exclude_ids", "shape": [3], "datatype": "INT64", "data": [11, 40, 41]},
            {"name": "exclude_lengths", "shape": [2], "datatype": "INT32", "data": [1, 2]},
        ],
        "parameters": {"k": 4},
    }
    r = client.post("/v2/models/items.search/infer", json=body)
    assert r.status_code == 200, r.text
    ids = next(o for o in r.json()["outputs"] if o["name"] == "ids")
    want = served.tables["items"].search_by_id([11, 12], 4, exclude_ids=[11, 40, 41], exclude_lengths=[1, 2])[0]
    np.testing.assert_array_equal(np.array(ids["data"]).reshape(ids["shape"]), want)
    body["inputs"][1]["datatype"] = "FP32"
    r = client.post("/v2/models/items.search/infer", json=body)
    assert r.status_code == 400 and "'exclude_ids' must be ids of an integer datatype" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query_ids": [1], "exclude_ids": [4000]}, 400, "exclude_ids[0] = 4000 is out of range"),
        ({"query_ids": [1, 2], "exclude_ids": [1], "exclude_lengths": [1]}, 400, "has 1 entries for 2 queries"),
        ({"query_ids": [1], "exclude_ids": [1, 2], "exclude_lengths": [1]}, 400, "exclude_lengths sum to 1 but 2"),
        ({"query_ids": [1], "exclude_ids": [1], "exclude_lengths": [-1]}, 400, "exclude_lengths[0] = -1"),
        ({"query_ids": [1], "exclude_ids": "3"}, 400, "exclude_ids"),
        ({"query_ids": [1], "exclude_ids": [[1], [2, 3]]}, 400, "exclude_ids must be a rectangular array"),
        ({"query_ids": [1], "exclude_ids": [True]}, 400, "exclude_ids must hold numbers"),
        ({"query_ids": [1], "exclude_ids": [2**64]}, 400, "exclude_ids"),
        # the served table's max_k is 1000, max_ids 5000: (k + the most a query leaves out) × oversample
        ({"query_ids": [1], "k": 10, "exclude_ids": list(range(995))}, 413, "the most exclude_ids of one query"),
        ({"query_ids": [1], "k": 10, "oversample": 2, "exclude_ids": list(range(500))}, 413, "× oversample"),
        ({"query_ids": [1], "exclude_ids": [0] * 5001}, 413, "5001 exclude_ids exceed the limit of 5000"),
        # a bad k is named as such, not as a count of candidates (found by a probe)
        ({"query_ids": [1], "k": -5, "exclude_ids": list(range(1200))}, 400, "k must be a positive integer"),
    ],
)
def test_bad_exclusions_get_4xx_naming_them(
    client: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    r = client.post("/v1/tables/items/search", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text[:300]
    assert client.post("/v1/tables/items/search", json={"query_ids": [1], "k": 2}).status_code == 200


async def test_with_batching_on_a_search_that_leaves_ids_out_is_answered_alone() -> None:
    service = EmbeddingService(Settings(demo=False, search_batch_max_queries=8))
    table = runtime.compress(low_rank_table(1500, 16, seed=41), "int8")
    service.store.put("items", table)
    service.started = True
    try:
        q = np.random.default_rng(5).standard_normal((6, 16)).astype(np.float32)
        top = table.search(q, 3)[0]
        requests = [
            SearchRequest("items", queries=q[i : i + 1], k=3, exclude_ids=top[i, :1] if i % 2 else None)
            for i in range(6)
        ]
        answers = await asyncio.gather(*(service.search("test", r) for r in requests))
        for i, (ids, scores) in enumerate(answers):
            want = table.search(q[i : i + 1], 3, exclude_ids=top[i, :1] if i % 2 else None)
            np.testing.assert_array_equal(ids, want[0])
            np.testing.assert_allclose(scores, want[1], rtol=1e-6)
            assert (top[i, 0] in ids[0]) == (i % 2 == 0)
        batched = service.metrics.registry.get_sample_value("embserve_search_batch_requests_sum", {"table": "items"})
        assert batched == 3  # the three requests without exclusions
    finally:
        service.close()
