"""Open Inference Protocol: the real tritonclient (HTTP JSON, HTTP binary, gRPC) against a live
server, compared with the runtime; and raw protocol edge cases over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from tests.service.conftest import Served

CHECK = Path(__file__).with_name("triton_client_check.py")


def test_tritonclient_results_match_runtime(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "triton.npz"
    grpc_url = served.server.grpc
    http_url = served.server.http.removeprefix("http://")
    run = subprocess.run(
        [sys.executable, str(CHECK), http_url, grpc_url, str(out)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = np.load(out)
    table = served.tables["items"]
    want = table.lookup([3, 1, 4, 1, 5])
    for key in ("http_lookup_binary", "http_lookup_json", "grpc_lookup_binary"):
        np.testing.assert_allclose(got[key], want, rtol=1e-6, err_msg=key)
    want_ids, want_scores = table.search(np.ones((2, 32), np.float32), 6, "ip", 4)
    for label in ("http", "grpc"):
        np.testing.assert_array_equal(got[f"{label}_search_ids"], want_ids)
        np.testing.assert_allclose(got[f"{label}_search_scores"], want_scores, rtol=1e-6)


def test_binary_extension_by_hand(served: Served) -> None:
    header = {
        "inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "embeddings", "parameters": {"binary_data": True}}],
        "parameters": {"unknown_parameter": 1},
    }
    head = json.dumps(header).encode()
    body = head + np.array([7, 9], "<i8").tobytes()
    r = httpx.post(
        f"{served.server.http}/v2/models/items/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    split = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:split])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 32 * 4
    rows = np.frombuffer(r.content[split:], "<f4").reshape(2, 32)
    np.testing.assert_array_equal(rows, served.tables["items"].lookup([7, 9]))

    # found by a review: an empty outputs list is every output, and binary_data_output holds for
    # it; bytes past the inputs' binary data, and data beside binary_data_size, were ignored
    def infer(header: dict[str, Any], binary: bytes) -> httpx.Response:
        head = json.dumps(header).encode()
        return httpx.post(
            f"{served.server.http}/v2/models/items/infer",
            content=head + binary,
            headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
        )

    ids = {"name": "ids", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}
    two = np.array([7, 9], "<i8").tobytes()
    r = infer({"inputs": [ids], "outputs": [], "parameters": {"binary_data_output": True}}, two)
    split = int(r.headers["inference-header-content-length"])
    assert json.loads(r.content[:split])["outputs"][0]["parameters"]["binary_data_size"] == 2 * 32 * 4
    np.testing.assert_array_equal(np.frombuffer(r.content[split:], "<f4").reshape(2, 32), rows)
    r = infer({"inputs": [ids]}, two + b"\0" * 8)
    assert r.status_code == 400 and "8 bytes of binary data follow the inputs' binary_data_size" in r.json()["error"]
    r = infer({"inputs": [{**ids, "data": [1, 2]}]}, two)
    assert r.status_code == 400 and "input 'ids' has both data and binary_data_size" in r.json()["error"], r.text


def test_protocol_errors(served: Served) -> None:
    url = f"{served.server.http}/v2/models/items/infer"
    cases = [
        ({"inputs": []}, 400, "inputs"),
        # the input read last won, unseen (found by a probe)
        (
            {"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [d]} for d in (1, 2)]},
            400,
            "input 'ids' is given more than once",
        ),
        ({"inputs": [{"name": "ids", "shape": [3], "datatype": "INT64", "data": [1, 2]}]}, 400, "needs 3"),
        ({"inputs": [{"name": "ids", "shape": [1], "datatype": "STRING", "data": ["a"]}]}, 400, "datatype"),
        (
            {"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]},
            400,
            "binary",
        ),
        ({"inputs": [{"name": "wrong", "shape": [1], "datatype": "INT64", "data": [1]}]}, 400, "has no input 'wrong'"),
        ({"inputs": [{"name": "ids", "shape": [0], "datatype": "INT64", "data": []}]}, 200, None),
        # values are held to the datatype as the native API holds its fields: never truncated
        ({"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [1.5, 2]}]}, 400, "must be integers"),
        ({"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [True, False]}]}, 400, "booleans"),
        (
            {"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, True]}]},
            400,
            "inputs[0].data[1] is true among numbers",
        ),
        ({"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": ["1", "2"]}]}, 400, "strings"),
        (
            {"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [2**63, 1]}]},
            400,
            "9223372036854775808 is beyond the range of INT64",
        ),
        ({"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [[1], [2, 3]]}]}, 400, "nested lists"),
        # an integer beside an integral float keeps every digit (float64 would make it 2**62)
        (
            {"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [2**62 + 1, 0.0]}]},
            400,
            f"[0] = {2**62 + 1} is out of range",
        ),
        (
            {"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}], "outputs": [{"name": "x"}]},
            400,
            "no output",
        ),
        (
            {"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": True}}]},
            400,
            "binary_data_size True",
        ),
        # ids in a float datatype were rounded: FP16 2049 looked up row 2048
        (
            {"inputs": [{"name": "ids", "shape": [1], "datatype": "FP16", "data": [2049]}]},
            400,
            "UINT64, ...), got FP16",
        ),
        # found by an adversarial probe: each was a 500
        ({"inputs": [{"name": "ids", "shape": [0, 2**62], "datatype": "INT64", "data": []}]}, 400, "not one an array"),
        ({"inputs": [{"name": "ids", "shape": [1] * 65, "datatype": "INT64", "data": [1]}]}, 400, "not one an array"),
        (
            {
                "inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}],
                "outputs": [{"name": "embeddings", "parameters": [1]}],
            },
            400,
            "output 'embeddings': parameters must be an object",
        ),
        (
            {
                "inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}],
                "outputs": [{"name": "embeddings", "parameters": {"binary_data": "false"}}],
            },
            400,
            "'binary_data' must be true or false, got 'false'",
        ),
        (
            {
                "inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}],
                "parameters": {"binary_data_output": "no"},
            },
            400,
            "'binary_data_output' must be true or false",
        ),
    ]
    for body, status, message in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status and (message is None or message in r.json()["error"]), (body, r.text)
    # an input no one reads changed nothing of the answer, unseen (found by a review): the
    # native API's names for them, and inputs of another kind of model
    ids = {"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}
    for model, inputs, unknown in (
        ("items.search", [{**ids, "name": "query_ids"}, {**ids, "name": "exclude_id"}], "exclude_id"),
        ("items.bag", [ids, {**ids, "name": "offsets", "data": [0, 1]}, {**ids, "name": "weights"}], "weights"),
        ("items", [ids, {**ids, "name": "offsets", "data": [0, 1]}], "offsets"),
    ):
        r = httpx.post(url.replace("/items/", f"/{model}/"), json={"inputs": inputs})
        assert r.status_code == 400 and f"model {model!r} has no input {unknown!r}" in r.json()["error"], r.text
    search = {"inputs": [{"name": "query_ids", "shape": [1], "datatype": "FP32", "data": [3]}]}
    r = httpx.post(url.replace("/items/", "/items.search/"), json=search)
    assert (
        r.status_code == 400
        and "'query_ids' must be ids of an integer datatype (INT64, INT32, UINT64, ...), got FP32" in r.json()["error"]
    ), r.text
    search = {"inputs": [{"name": "queries", "shape": [1, 32], "datatype": "INT64", "data": [1] * 32}]}
    r = httpx.post(url.replace("/items/", "/items.search/"), json=search)
    assert r.status_code == 400 and "'queries' must be FP32, got INT64" in r.json()["error"], r.text
    r = httpx.post(url, content=b"{}", headers=[(b"Inference-Header-Content-Length", b"\xb2")])
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], r.text
    assert httpx.get(f"{served.server.http}/v2/models/nope").status_code == 404
    r = httpx.get(f"{served.server.http}/v2/models/items/versions/other")
    assert r.status_code == 404 and r.json()["error"].startswith("model 'items' has no version 'other' (it serves")
    r = httpx.get(f"{served.server.http}/v2")
    assert r.json()["name"] == "embserve" and "binary_tensor_data" in r.json()["extensions"]
    assert httpx.get(f"{served.server.http}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{served.server.http}/v2/models/items.search/config").json()["input"][0]["name"] == "queries"
    assert [i["name"] for i in httpx.get(f"{served.server.http}/v2/models/items/config").json()["input"]] == ["ids"]


def test_bag_model_pools(served: Served) -> None:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "ids", "shape": [4], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {"name": "offsets", "shape": [2], "datatype": "INT64", "data": [0, 1]},
        ],
        "parameters": {"mode": "mean"},
    }
    r = httpx.post(f"{served.server.http}/v2/models/items.bag/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, served.tables["items"].lookup_pooled([1, 2, 3, 4], [0, 1], "mean"), rtol=1e-5)
    missing = httpx.post(f"{served.server.http}/v2/models/items.bag/infer", json={"inputs": body["inputs"][:1]})
    assert missing.status_code == 400 and "offsets" in missing.json()["error"]
    # a UINT64 bag size past int64 is named as sent, not as the negative number a cast makes it
    wide = {"name": "lengths", "shape": [1], "datatype": "UINT64", "data": [2**64 - 2]}
    r = httpx.post(f"{served.server.http}/v2/models/items.bag/infer", json={"inputs": [body["inputs"][0], wide]})
    assert r.status_code == 400 and "lengths[0] = 18446744073709551614 is out of the int64 range" in r.json()["error"]


def test_an_input_given_twice_over_grpc_is_refused(served: Served) -> None:
    request = ipb.ModelInferRequest(model_name="items")
    for ids in ([1], [2]):
        request.inputs.add(name="ids", datatype="INT64", shape=[1])
        request.raw_input_contents.append(np.array(ids, "<i8").tobytes())
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as info:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'ids' is given more than once" in str(info.value.details())
    request = ipb.ModelInferRequest(model_name="items.search")
    for name in ("query_ids", "exclude_id"):
        request.inputs.add(name=name, datatype="INT64", shape=[1])
        request.raw_input_contents.append(np.array([1], "<i8").tobytes())
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as info:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'items.search' has no input 'exclude_id'" in str(info.value.details())
    # FP16 has no contents field in the protocol: the message says where it goes
    request = ipb.ModelInferRequest(model_name="items")
    request.inputs.add(name="ids", datatype="FP16", shape=[1])
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as info:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "datatype 'FP16' has no contents field in the gRPC protocol; send it in raw_input_contents" in str(
        info.value.details()
    )


def test_an_output_asked_for_twice_is_refused_before_any_work(served: Served) -> None:
    # found by a review: each naming was one more copy of the answer, past the answer limit (a
    # 60 kB request over HTTP got a 349 MB answer)
    body = {
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [2], "data": [1, 2]}],
        "outputs": [{"name": "embeddings"}] * 3,
    }
    r = httpx.post(f"{served.server.http}/v2/models/items/infer", json=body)
    assert r.status_code == 400 and "output 'embeddings' is requested more than once" in r.json()["error"]
    request = ipb.ModelInferRequest(model_name="items")
    request.inputs.add(name="ids", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([1], "<i8").tobytes())
    for _ in range(2):
        request.outputs.add(name="embeddings")
    with grpc.insecure_channel(served.server.grpc) as channel, pytest.raises(grpc.RpcError) as info:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'embeddings' is requested more than once" in str(info.value.details())
