"""One typed core API: every transport builds the same typed request from the fields its caller
gave, so an omitted field means the same default everywhere and a bad one is the same error class.
REST, gRPC and the Open Inference Protocol against one live server."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from runtime.errors import InvalidRequest
from service.multi import pool_mode
from service.requests import (
    DEFAULT_K,
    DEFAULT_MODE,
    DeleteKeysRequest,
    LoadRequest,
    LookupRequest,
    SearchRequest,
    UpsertRequest,
    delete_keys_request,
    load_request,
    lookup_request,
    score_request,
    search_request,
    upsert_request,
)
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from tests.service.conftest import ADMIN_TOKEN, Served

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


def test_lookup_defaults_and_aliases_are_written_once() -> None:
    assert lookup_request("t", {}) == LookupRequest("t")
    # mode unset (None) pools by the default, and is refused without bags like a mode given
    assert pool_mode(LookupRequest("t")) == DEFAULT_MODE == "sum" and not LookupRequest("t").pooled
    given = lookup_request("t", {"keys": [7], "per_sample_weights": [0.5], "lengths": [1], "mode": None})
    assert (given.ids, given.weights, given.lengths, pool_mode(given), given.pooled) == ([7], [0.5], [1], "sum", True)
    # a field given by its name and its alias is ambiguous: refused, named by the entry's label
    with pytest.raises(InvalidRequest, match="f: give ids or keys"):
        lookup_request("t", {"ids": [1], "keys": [2]}, label="f")
    with pytest.raises(InvalidRequest, match="give weights or per_sample_weights"):
        lookup_request("t", {"weights": [3.0], "per_sample_weights": [4.0]})
    labelled = lookup_request("t", {"keys": [2], "ids": None}, label="f")
    assert (labelled.ids, labelled.label) == ([2], "f")


BAG_IDS = np.array([3, 9, 9, 41, 7, 0], np.int64)
BAG_LENGTHS = np.array([2, 0, 4], np.int64)
BAG_WEIGHTS = np.array([0.5, -1.0, 2.0, 0.25, 1.5, 3.0], np.float32)


def test_weighted_bags_by_lengths_agree_over_every_transport(served: Served) -> None:
    """lengths + per_sample_weights over REST JSON, gRPC and the OIP bag model, mode left out
    everywhere: the weighted sum (the one default), equal to the runtime's own pooled lookup."""
    offsets = np.array([0, 2, 2], np.int64)
    want = served.tables["items"].lookup_pooled(BAG_IDS, offsets, "sum", BAG_WEIGHTS)
    unweighted = served.tables["items"].lookup_pooled(BAG_IDS, offsets, "sum")
    assert not np.allclose(want, unweighted)  # the weights must matter for this test to mean anything
    body = {"ids": BAG_IDS.tolist(), "lengths": BAG_LENGTHS.tolist(), "per_sample_weights": BAG_WEIGHTS.tolist()}
    r = httpx.post(f"{served.server.http}/v1/tables/items/lookup", json=body, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["embeddings"]), want, rtol=1e-5, atol=1e-5)
    with grpc.insecure_channel(served.server.grpc) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).Lookup(
            pb.LookupRequest(
                table="items",
                ids=array_to_tensor(BAG_IDS),
                lengths=array_to_tensor(BAG_LENGTHS),
                per_sample_weights=array_to_tensor(BAG_WEIGHTS),
            )
        )
    np.testing.assert_allclose(as_array(reply.embeddings), want, rtol=1e-5, atol=1e-5)
    inputs = [
        {"name": "ids", "datatype": "INT64", "shape": [6], "data": BAG_IDS.tolist()},
        {"name": "lengths", "datatype": "INT64", "shape": [3], "data": BAG_LENGTHS.tolist()},
        {"name": "per_sample_weights", "datatype": "FP32", "shape": [6], "data": BAG_WEIGHTS.tolist()},
    ]
    r = httpx.post(f"{served.server.http}/v2/models/items.bag/infer", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"per_sample_weights": BAG_WEIGHTS}, "weights need bags"),
        ({"lengths": BAG_LENGTHS, "offsets": np.array([0, 2, 2])}, "not both"),
        ({"lengths": np.array([2, 0, 3])}, "lengths sum to 5 but 6 ids"),
        ({"lengths": BAG_LENGTHS, "per_sample_weights": BAG_WEIGHTS, "mode": "mean"}, 'only supported with mode "sum"'),
    ],
)
def test_rest_and_grpc_refuse_bad_bags_alike(served: Served, fields: dict[str, Any], message: str) -> None:
    body = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    r = httpx.post(f"{served.server.http}/v1/tables/items/lookup", json={"ids": BAG_IDS.tolist(), **body}, timeout=30)
    assert r.status_code == 400, r.text
    tensors = {k: array_to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.EmbeddingServiceStub(channel).Lookup(
            pb.LookupRequest(table="items", ids=array_to_tensor(BAG_IDS), **tensors)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == r.json()["error"] and message in r.json()["error"], r.json()


def test_admin_requests_take_their_defaults_once() -> None:
    assert upsert_request("t", {"keys": [1], "rows": [[0.5]], "sequence": None}) == UpsertRequest("t", [1], [[0.5]])
    assert delete_keys_request("t", {"keys": [1], "unknown": 2}) == DeleteKeysRequest("t", [1])
    assert load_request("t", {}) == LoadRequest("t") and LoadRequest("t").path is None


ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    ("operation", "fields", "message"),
    [
        ("upsert", {}, "keys is required"),
        ("upsert", {"keys": np.array([1], np.int64)}, "rows is required"),
        ("delete", {}, "keys is required"),
        ("delete", {"keys": np.array([1], np.int64), "sequence": -3}, "sequence must be an integer from 0 to"),
    ],
)
def test_rest_and_grpc_admin_updates_refuse_alike(
    served: Served, operation: str, fields: dict[str, Any], message: str
) -> None:
    """A field left out of an update is the same error on both transports (over gRPC an unset
    Tensor used to be parsed into a complaint about its empty dtype)."""
    body = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    r = httpx.post(f"{served.server.http}/v1/tables/items/{operation}", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 400, r.text
    given = {k: array_to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    with grpc.insecure_channel(served.server.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        # sequence is int64 in the proto: -3 reaches the core, which refuses it as for REST
        call = (
            (lambda: stub.Upsert(pb.UpsertRequest(table="items", **given), metadata=tuple(ADMIN.items())))
            if operation == "upsert"
            else (lambda: stub.DeleteKeys(pb.DeleteKeysRequest(table="items", **given), metadata=tuple(ADMIN.items())))
        )
        with pytest.raises(grpc.RpcError) as err:
            call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == r.json()["error"] and message in r.json()["error"], r.json()


def test_an_admin_load_without_a_path_is_refused(served: Served) -> None:
    r = httpx.put(f"{served.server.http}/v1/tables/items", json={}, headers=ADMIN, timeout=30)
    assert r.status_code == 400 and "path must be a non-empty string" in r.json()["error"], r.text
