"""One typed core API: every transport builds the same typed request from the fields its caller
gave, so an omitted field means the same default everywhere and a bad one is the same error class.
REST, gRPC and the Open Inference Protocol against one live server."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service.requests import DEFAULT_K, SearchRequest, score_request, search_request
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from tests.service.conftest import Served

QUERY_IDS = np.array([5, 17, 300], np.int64)


def test_defaults_are_written_once() -> None:
    assert search_request("t", {}) == SearchRequest("t")
    given = search_request("t", {"k": None, "metric": None, "query_ids": [1], "unknown": 3})
    assert (given.k, given.metric, given.oversample, given.exclude_self) == (DEFAULT_K, "ip", 1, True)
    assert given.query_ids == [1]
    assert score_request("t", {"candidate_ids": [[1]], "k": 5}).metric == "ip"


def rest_search(served: Served, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{served.server.http}/v1/tables/items/search", json=body, timeout=30)


def grpc_search(served: Served, **fields: object) -> pb.SearchResponse:
    with grpc.insecure_channel(served.server.grpc) as channel:
        request = pb.SearchRequest(table="items", query_ids=array_to_tensor(QUERY_IDS), **fields)  # type: ignore[arg-type]
        return pb_grpc.EmbeddingServiceStub(channel).Search(request)


def as_array(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, {"int64": "<i8", "float32": "<f4"}[t.dtype]).reshape(list(t.shape))


@pytest.mark.parametrize("fields", [{}, {"k": 3, "metric": "l2"}, {"k": 4, "oversample": 3, "exclude_self": False}])
def test_rest_and_grpc_search_agree(served: Served, fields: dict[str, Any]) -> None:
    r = rest_search(served, {"query_ids": QUERY_IDS.tolist(), **fields})
    assert r.status_code == 200, r.text
    over_grpc = grpc_search(served, **fields)
    ids = np.array(r.json()["ids"])
    np.testing.assert_array_equal(as_array(over_grpc.ids), ids)
    np.testing.assert_allclose(as_array(over_grpc.scores), np.array(r.json()["scores"]), rtol=1e-6)
    assert ids.shape == (3, fields.get("k", DEFAULT_K))
    want_ids, _ = served.tables["items"].search_by_id(
        QUERY_IDS, fields.get("k", DEFAULT_K), fields.get("metric", "ip"), fields.get("oversample", 1),
        fields.get("exclude_self", True),
    )  # fmt: skip
    np.testing.assert_array_equal(ids, want_ids)


@pytest.mark.parametrize(("fields", "message"), [({"k": 0}, "k"), ({"metric": "cosine"}, "metric")])
def test_rest_and_grpc_refuse_alike(served: Served, fields: dict[str, Any], message: str) -> None:
    r = rest_search(served, {"query_ids": QUERY_IDS.tolist(), **fields})
    assert r.status_code == 400, r.text
    with pytest.raises(grpc.RpcError) as err:
        grpc_search(served, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == r.json()["error"] and message in r.json()["error"]


def test_oip_search_takes_the_same_defaults(served: Served) -> None:
    body = {"inputs": [{"name": "query_ids", "datatype": "INT64", "shape": [3], "data": QUERY_IDS.tolist()}]}
    r = httpx.post(f"{served.server.http}/v2/models/items.search/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    ids = next(o for o in r.json()["outputs"] if o["name"] == "ids")
    assert ids["shape"] == [3, DEFAULT_K]
    want = np.array(rest_search(served, {"query_ids": QUERY_IDS.tolist()}).json()["ids"])
    np.testing.assert_array_equal(np.array(ids["data"]).reshape(3, DEFAULT_K), want)
