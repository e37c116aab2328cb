"""Hostile gRPC input: element counts that overflow int64, bytes that are not protobuf, and large
refused requests, which must not stay in memory after they are answered."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import numpy as np
import pytest

from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from tests.reliability.conftest import MAX_IDS, Reliable, rss_bytes

HUGE = [2**62 + 1, 4]  # 2**64 + 4 elements: np.prod in int64 wraps to 4


@pytest.fixture(scope="module")
def channel(reliable: Reliable) -> grpc.Channel:
    with grpc.insecure_channel(reliable.server.grpc) as ch:
        yield ch


def _fails_with(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request)  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def test_overflowing_shapes_are_invalid_argument(channel: grpc.Channel) -> None:
    stub = pb_grpc.EmbeddingServiceStub(channel)
    oip = ipb_grpc.GRPCInferenceServiceStub(channel)
    huge_ids = pb.Tensor(dtype="int64", shape=HUGE, data=bytes(32))
    huge_queries = pb.Tensor(dtype="float32", shape=HUGE, data=bytes(16))
    infer = ipb.ModelInferRequest(model_name="t")
    infer.inputs.add(name="ids", datatype="INT64", shape=HUGE)
    infer.raw_input_contents.append(bytes(32))
    infer_search = ipb.ModelInferRequest(model_name="t.search")
    infer_search.inputs.add(name="queries", datatype="FP32", shape=HUGE)
    infer_search.raw_input_contents.append(bytes(16))
    infer_contents = ipb.ModelInferRequest(model_name="t")
    tensor = infer_contents.inputs.add(name="ids", datatype="INT64", shape=HUGE)
    tensor.contents.int64_contents.extend([1, 2, 3, 4])
    cases = [
        (stub.Lookup, pb.LookupRequest(table="t", ids=huge_ids)),
        (stub.Search, pb.SearchRequest(table="t", queries=huge_queries, k=3)),
        (stub.Score, pb.ScoreRequest(table="t", candidate_ids=huge_ids, query_ids=huge_ids)),
        (oip.ModelInfer, infer),
        (oip.ModelInfer, infer_search),
        (oip.ModelInfer, infer_contents),
    ]
    for call, request in cases:
        details = _fails_with(call, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert str(2**62 + 1) in details, details


def test_empty_tensors_of_shapes_no_array_can_have_are_invalid_argument(channel: grpc.Channel) -> None:
    # zero elements, so the byte count matches, but numpy cannot make the shape: was INTERNAL
    stub = pb_grpc.EmbeddingServiceStub(channel)
    oip = ipb_grpc.GRPCInferenceServiceStub(channel)
    raw = ipb.ModelInferRequest(model_name="t")
    raw.inputs.add(name="ids", datatype="INT64", shape=[0, 2**62])
    raw.raw_input_contents.append(b"")
    contents = ipb.ModelInferRequest(model_name="t")
    contents.inputs.add(name="ids", datatype="INT64", shape=[0, 2**62])
    cases = [
        (stub.Lookup, pb.LookupRequest(table="t", ids=pb.Tensor(dtype="int64", shape=[0, 2**62]))),
        (stub.Lookup, pb.LookupRequest(table="t", ids=pb.Tensor(dtype="int64", shape=[1] * 65, data=bytes(8)))),
        (oip.ModelInfer, raw),
        (oip.ModelInfer, contents),
    ]
    for call, request in cases:
        details = _fails_with(call, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert "not one an array can have" in details, details


def test_bytes_that_are_not_protobuf_are_invalid_argument(channel: grpc.Channel) -> None:
    for method in ("/embserve.v1.EmbeddingService/Lookup", "/inference.GRPCInferenceService/ModelInfer"):
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        details = _fails_with(call, b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT)
        assert "protobuf" in details, details


@pytest.mark.slow  # 600 MB through loopback
def test_refused_large_requests_do_not_stay_in_memory(reliable: Reliable, channel: grpc.Channel) -> None:
    stub = pb_grpc.EmbeddingServiceStub(channel)
    ids = np.zeros(60_000_000 // 8, dtype="<i8")  # 60 MB, far over the id limit
    request = pb.LookupRequest(table="t", ids=pb.Tensor(dtype="int64", shape=[ids.size], data=ids.tobytes()))
    del ids
    pid = reliable.server.proc.pid
    # one refused first: gRPC's and the allocator's buffers grow once to hold a 60 MB message (and
    # are reused after); what must not happen is each refused request staying behind
    _fails_with(stub.Lookup, request, grpc.StatusCode.INVALID_ARGUMENT)
    time.sleep(0.3)
    start = rss_bytes(pid)
    for _ in range(10):
        details = _fails_with(stub.Lookup, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert f"limit of {MAX_IDS}" in details
    time.sleep(0.3)  # let the server return what it freed; no gc.collect() is asked of it
    grown = rss_bytes(pid) - start
    assert grown < 200 << 20, f"RSS grew by {grown / 2**20:.0f} MiB after 10 refused 60 MB requests"


def test_overflowing_shapes_over_http_inference_are_400(reliable: Reliable) -> None:
    url = f"{reliable.server.http}/v2/models/t/infer"
    listed = {"inputs": [{"name": "ids", "shape": HUGE, "datatype": "INT64", "data": [1, 2, 3, 4]}]}
    r = httpx.post(url, json=listed)
    assert r.status_code == 400 and str(2**62 + 1) in r.json()["error"], r.text
    header = json.dumps(
        {"inputs": [{"name": "ids", "shape": HUGE, "datatype": "INT64", "parameters": {"binary_data_size": 32}}]}
    ).encode()
    r = httpx.post(
        url,
        content=header + bytes(32),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 400 and str(2**62 + 1) in r.json()["error"], r.text
