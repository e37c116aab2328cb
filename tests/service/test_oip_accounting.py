"""Open Inference Protocol requests run inside the core's request accounting: counted and timed
like a native request (including the ones that fail to resolve), under the same limits with the
same refusal, over REST and gRPC."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from tests.service.conftest import Served


def sample(served: Served, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when it is not there yet)."""
    text = httpx.get(f"{served.server.http}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def requests_total(served: Served, transport: str, operation: str, table: str, status: str) -> float:
    labels = {"transport": transport, "operation": operation, "table": table, "status": status}
    return sample(served, "embserve_requests_total", **labels)


def oip_http(served: Served, model: str, ids: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [ids.size], "data": ids.tolist()}]}
    return httpx.post(f"{served.server.http}/v2/models/{model}/infer", json=body, timeout=30)


def oip_grpc(served: Served, model: str, ids: np.ndarray) -> ipb.ModelInferResponse:
    request = ipb.ModelInferRequest(model_name=model)
    request.inputs.add(name="ids", datatype="INT64", shape=[ids.size])
    request.raw_input_contents.append(ids.astype("<i8").tobytes())
    with grpc.insecure_channel(served.server.grpc) as channel:
        return ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)


IDS = np.array([1, 2, 3], np.int64)
LABELS = ("transport", "operation", "table", "status")


def test_an_oip_infer_is_counted_like_a_native_lookup(served: Served) -> None:
    ok = ("http", "infer", "items", "ok")
    before = {
        "infer": requests_total(served, *ok),
        "timed": sample(served, "embserve_request_duration_seconds_count", **dict(zip(LABELS, ok, strict=True))),
        "ids": sample(served, "embserve_ids_per_request_count", table="items"),
        "lookup": requests_total(served, "http", "lookup", "items", "ok"),
        "grpc": requests_total(served, "grpc", "infer", "items", "ok"),
        "unknown": requests_total(served, "grpc", "infer", "unknown", "404"),
    }
    r = oip_http(served, "items", IDS)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, -1), served.tables["items"].lookup(IDS)
    )
    assert requests_total(served, *ok) == before["infer"] + 1
    timed = sample(served, "embserve_request_duration_seconds_count", **dict(zip(LABELS, ok, strict=True)))
    assert timed == before["timed"] + 1
    assert sample(served, "embserve_ids_per_request_count", table="items") == before["ids"] + 1
    assert requests_total(served, "http", "lookup", "items", "ok") == before["lookup"]  # one request, counted once
    assert oip_grpc(served, "items", IDS).model_version == served.tables["items"].version
    assert requests_total(served, "grpc", "infer", "items", "ok") == before["grpc"] + 1
    # a model that does not resolve is a request too (it used to fail before the accounting began)
    with pytest.raises(grpc.RpcError) as err:
        oip_grpc(served, "no-such-model-77", IDS)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert requests_total(served, "grpc", "infer", "unknown", "404") == before["unknown"] + 1
    assert "no-such-model-77" not in httpx.get(f"{served.server.http}/metrics", timeout=30).text


def test_an_oip_infer_over_a_limit_is_refused_like_a_native_one(served: Served) -> None:
    too_many = np.arange(5001, dtype=np.int64) % 4000  # the served limit is 5000 ids a request
    native = httpx.post(f"{served.server.http}/v1/tables/items/lookup", json={"ids": too_many.tolist()}, timeout=30)
    assert native.status_code == 413, native.text
    message = native.json()["error"]
    assert "5001 ids exceed the limit of 5000" in message
    refused_before = requests_total(served, "http", "infer", "items", "413")
    over_http = oip_http(served, "items", too_many)
    assert (over_http.status_code, over_http.json()["error"]) == (413, message)
    assert requests_total(served, "http", "infer", "items", "413") == refused_before + 1
    with pytest.raises(grpc.RpcError) as err:
        oip_grpc(served, "items", too_many)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == message


def test_grpc_infer_refuses_data_in_both_contents_and_raw_and_is_counted(served: Served) -> None:
    request = ipb.ModelInferRequest(model_name="items")
    tensor = request.inputs.add(name="ids", datatype="INT64", shape=[2])
    tensor.contents.int64_contents.extend([1, 2])
    request.raw_input_contents.append(np.array([3, 4], "<i8").tobytes())
    before = requests_total(served, "grpc", "infer", "items", "400")
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "both contents and raw_input_contents" in str(refused.value.details())
    assert requests_total(served, "grpc", "infer", "items", "400") == before + 1
