"""Native gRPC API, health and reflection against a live server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from tests.service.conftest import Served, require_binary
from tests.service.live import start_server


@pytest.fixture(scope="module")
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.server.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


def arr(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, {"int64": "<i8", "float32": "<f4"}[t.dtype]).reshape(list(t.shape))


def test_list_describe(stub: pb_grpc.EmbeddingServiceStub, served: Served) -> None:
    names = {t.name for t in stub.ListTables(pb.ListTablesRequest()).tables}
    assert {"items", "bits"} <= names
    info = stub.DescribeTable(pb.DescribeTableRequest(table="items"))
    assert info.rows == 4000 and info.dim == 32 and info.codec == "pq" and info.rerank_codec == "int8"
    assert json.loads(info.params_json)["subspaces"] == 8 and info.nbytes == served.tables["items"].nbytes


def test_lookup_search_score_match_runtime(stub: pb_grpc.EmbeddingServiceStub, served: Served) -> None:
    table = served.tables["items"]
    ids = np.array([4, 8, 15, 16], np.int64)
    got = stub.Lookup(pb.LookupRequest(table="items", ids=array_to_tensor(ids)))
    np.testing.assert_array_equal(arr(got.embeddings), table.lookup(ids))
    pooled = stub.Lookup(
        pb.LookupRequest(table="items", ids=array_to_tensor(ids), offsets=array_to_tensor(np.array([0, 1])), mode="sum")
    )
    np.testing.assert_allclose(arr(pooled.embeddings), table.lookup_pooled(ids, [0, 1]), rtol=1e-6)
    q = table.lookup([1, 2])
    res = stub.Search(pb.SearchRequest(table="items", queries=array_to_tensor(q), k=5, oversample=3))
    want_ids, want_scores = table.search(q, 5, "ip", 3)
    np.testing.assert_array_equal(arr(res.ids), want_ids)
    np.testing.assert_allclose(arr(res.scores), want_scores, rtol=1e-6)
    res = stub.Search(
        pb.SearchRequest(table="items", query_ids=array_to_tensor(np.array([1])), k=5, metric="l2", exclude_self=False)
    )
    assert arr(res.ids)[0, 0] == 1
    sc = stub.Score(
        pb.ScoreRequest(
            table="items", candidate_ids=array_to_tensor(np.array([[1, 2]])), query_ids=array_to_tensor(np.array([3]))
        )
    )
    np.testing.assert_allclose(arr(sc.scores), table.score([[1, 2]], query_ids=[3]), rtol=1e-6)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (pb.LookupRequest(table="nope", ids=array_to_tensor(np.array([1]))), grpc.StatusCode.NOT_FOUND, "not found"),
        (pb.LookupRequest(table="items", ids=array_to_tensor(np.array([4000]))), grpc.StatusCode.OUT_OF_RANGE, "4000"),
        (
            pb.LookupRequest(table="items", ids=pb.Tensor(dtype="int64", shape=[3], data=b"\x00" * 8)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 24",
        ),
        (
            pb.LookupRequest(table="items", ids=pb.Tensor(dtype="int8", shape=[1], data=b"\x00")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dtype",
        ),
        (pb.SearchRequest(table="items", k=3), grpc.StatusCode.INVALID_ARGUMENT, "exactly one"),
        # each field takes its own dtype, as OIP inputs do: float32 ids of whole numbers were read as ids
        (
            pb.LookupRequest(table="items", ids=array_to_tensor(np.array([1.0, 2.0], np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ids.dtype must be 'int64', got 'float32'",
        ),
        (
            pb.SearchRequest(table="items", queries=array_to_tensor(np.ones((1, 32), np.int64)), k=2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "queries.dtype must be 'float32', got 'int64'",
        ),
        (
            pb.LookupRequest(table="items", ids=array_to_tensor(np.array([1, 2])), mode="mean"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mode pools bags",
        ),
        (
            pb.ScoreRequest(
                table="items",
                candidate_ids=array_to_tensor(np.array([[1, 2], [3, -4]])),
                query_ids=array_to_tensor(np.array([1, 2])),
            ),
            grpc.StatusCode.OUT_OF_RANGE,
            "candidate_ids[1][1] = -4",
        ),
        (
            pb.SearchRequest(table="items", query_ids=array_to_tensor(np.array([1])), k=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "k must be",
        ),
        (
            pb.SearchRequest(table="items", queries=array_to_tensor(np.ones((1, 3), np.float32)), k=2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dimension 3",
        ),
        (
            pb.SearchRequest(table="items", query_ids=array_to_tensor(np.array([1])), k=2, metric="hamming"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hamming",
        ),
    ],
)
def test_errors_map_to_status_codes(
    stub: pb_grpc.EmbeddingServiceStub, request_: object, code: grpc.StatusCode, message: str
) -> None:
    methods = {pb.LookupRequest: stub.Lookup, pb.SearchRequest: stub.Search, pb.ScoreRequest: stub.Score}
    method = methods[type(request_)]
    with pytest.raises(grpc.RpcError) as info:
        method(request_)
    assert info.value.code() == code and message in info.value.details()
    assert stub.Lookup(pb.LookupRequest(table="items", ids=array_to_tensor(np.array([1])))).embeddings.shape == [1, 32]


def test_health_tracks_readiness(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "embserve.v1.EmbeddingService", "inference.GRPCInferenceService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )


@pytest.mark.external
def test_grpcurl_lists_services_through_reflection(served: Served) -> None:
    grpcurl = require_binary("grpcurl")
    out = subprocess.run(
        [grpcurl, "-plaintext", served.server.grpc, "list"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert {"embserve.v1.EmbeddingService", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= listed
    call = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"table": "items"}',
            served.server.grpc,
            "embserve.v1.EmbeddingService/DescribeTable",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert call.returncode == 0 and json.loads(call.stdout)["codec"] == "pq"


def test_a_missing_array_is_required_not_a_bad_dtype(stub: pb_grpc.EmbeddingServiceStub) -> None:
    for call, request, field in (
        (stub.Lookup, pb.LookupRequest(table="items"), "ids"),
        (stub.Score, pb.ScoreRequest(table="items", query_ids=array_to_tensor(np.array([1]))), "candidate_ids"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == f"{field} is required"
    empty = stub.Lookup(pb.LookupRequest(table="items", ids=array_to_tensor(np.zeros(0, np.int64))))
    assert list(empty.embeddings.shape) == [0, 32]


def test_an_empty_tensor_of_the_other_dtype_is_an_empty_array(stub: pb_grpc.EmbeddingServiceStub) -> None:
    # numpy's empty array is float64, sent as float32: no value to misread, so not refused
    empty = array_to_tensor(np.array([]))
    assert empty.dtype == "float32"
    got = stub.Search(pb.SearchRequest(table="items", query_ids=array_to_tensor(np.array([1])), k=3, exclude_ids=empty))
    plain = stub.Search(pb.SearchRequest(table="items", query_ids=array_to_tensor(np.array([1])), k=3))
    assert list(got.ids.shape) == [1, 3] and got.ids.data == plain.ids.data


def test_a_connection_past_its_maximum_age_is_told_to_go_and_the_client_reconnects(
    tmp_path: Path, artifact_root: Path
) -> None:
    # found by a review: channels stayed on the pods they first reached, and pods the autoscaler
    # added got no gRPC traffic from the clients already running
    env = {"EMBSERVE_GRPC_MAX_CONNECTION_AGE_SECONDS": "1"}
    server = start_server(tmp_path, ["--table", f"items={artifact_root / 'items' / 'v1'}"], env=env)
    states: list[grpc.ChannelConnectivity] = []
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            channel.subscribe(states.append, try_to_connect=True)
            stub = pb_grpc.EmbeddingServiceStub(channel)
            stub.ListTables(pb.ListTablesRequest(), timeout=5)
            deadline = time.monotonic() + 10

            def gone_after_ready() -> bool:
                ready = grpc.ChannelConnectivity.READY
                return ready in states and grpc.ChannelConnectivity.IDLE in states[states.index(ready) :]

            while not gone_after_ready():  # the callbacks come on grpc's own thread
                assert time.monotonic() < deadline, states
                time.sleep(0.1)
            assert stub.ListTables(pb.ListTablesRequest(), timeout=5).tables  # a new connection
    finally:
        assert server.terminate() == 0, server.log()
