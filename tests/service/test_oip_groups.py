"""Open Inference Protocol group models: one model per configured group of tables, inputs named
after the features, output the pooled concatenation (B, Σ dim). In process against the runtime and
torch's EmbeddingBag; live over REST and gRPC; and with the real tritonclient."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import runtime
from runtime.errors import InvalidRequest, TableNotFound
from service import oip
from service.core import EmbeddingService
from service.requests import InferRequest
from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from service.settings import Settings, parse_groups
from tests.conftest import low_rank_table
from tests.service.live import LiveServer, start_server

CHECK = Path(__file__).with_name("triton_group_check.py")
X = {"users": low_rank_table(100, 8, seed=41), "items": low_rank_table(60, 4, seed=42)}
GROUP = "ranker=user:users+item:items+item_hist:items"
# B = 3 samples; feature-wise bags, including an empty one
VALUES = {"user": [1, 2, 3, 4], "item": [5, 6, 7], "item_hist": [9, 9, 10, 11, 12]}
LENGTHS = {"user": [1, 3, 0], "item": [1, 1, 1], "item_hist": [2, 0, 3]}
WEIGHTS = [0.5, 2.0, -1.0, 1.0, 0.25]


def expected(tables: dict[str, runtime.Table], weights: list[float] | None = None) -> np.ndarray:
    """(3, 8 + 4 + 4) float32 from the runtime's own per-table pooled lookups."""
    parts = []
    for feature, table in (("user", "users"), ("item", "items"), ("item_hist", "items")):
        lengths = np.array(LENGTHS[feature])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        w = np.asarray(weights, np.float32) if weights is not None and feature == "item_hist" else None
        parts.append(tables[table].lookup_pooled(np.array(VALUES[feature]), offsets, "sum", w))
    return np.concatenate(parts, axis=1)


def oip_inputs(weights: bool = False, lengths_dtype: Any = np.int64) -> dict[str, np.ndarray]:
    inputs = {}
    for feature in VALUES:
        inputs[f"{feature}__values"] = np.array(VALUES[feature], np.int64)
        inputs[f"{feature}__lengths"] = np.array(LENGTHS[feature], lengths_dtype)
    if weights:
        inputs["item_hist__weights"] = np.array(WEIGHTS, np.float32)
    return inputs


def test_group_specs_parse_and_refuse() -> None:
    assert parse_groups([GROUP]) == {"ranker": (("user", "users"), ("item", "items"), ("item_hist", "items"))}
    assert Settings(groups="a=x+y, b=z").group_specs() == {"a": (("x", "x"), ("y", "y")), "b": (("z", "z"),)}
    for bad, message in (("ranker", "must be NAME="), ("r=a+a", "listed twice"), ("r=a__b", "without '__'")):
        with pytest.raises(ValueError, match=message):
            parse_groups([bad])


async def infer(
    service: EmbeddingService, model: oip.Model, inputs: dict[str, np.ndarray], params: dict[str, Any]
) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """One inference through the core, as both transports run it: (version, outputs)."""
    result = await service.infer("test", InferRequest(model.name, inputs, params))
    return result.version, result.outputs


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = EmbeddingService(Settings(demo=False, groups=[GROUP, "broken=user:users+gone"]))
    svc.store.put("users", runtime.compress(X["users"], "fp32", version="u1"))
    svc.store.put("items", runtime.compress(X["items"], "int8", version="i1"))
    svc.started = True
    yield svc
    svc.close()


async def test_group_model_in_process_matches_runtime_and_torch(service: EmbeddingService) -> None:
    tables = {name: service.store.get(name).table for name in ("users", "items")}
    model = service.resolve_model("ranker")
    assert [f.dim for f in model.features] == [8, 4, 4]
    version, outputs = await infer(service, model, oip_inputs(lengths_dtype=np.int32), {})
    assert [name for name, _ in outputs] == ["embeddings"]
    np.testing.assert_array_equal(outputs[0][1], expected(tables))
    assert outputs[0][1].shape == (3, 16) and outputs[0][1].dtype == np.float32
    assert version == model.version == oip.group_version([("users", "u1"), ("items", "i1"), ("items", "i1")])
    _, weighted = await infer(service, model, oip_inputs(weights=True), {})
    np.testing.assert_allclose(weighted[0][1], expected(tables, WEIGHTS), rtol=1e-6)
    torch = pytest.importorskip("torch")
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(X["users"]), mode="mean")
    _, mean = await infer(service, model, oip_inputs(), {"mode": "mean"})
    want = bag(torch.tensor(VALUES["user"]), torch.tensor([0, 1, 4])).numpy()
    np.testing.assert_allclose(mean[0][1][:, :8], want, rtol=1e-6, atol=1e-6)


async def test_group_version_follows_a_swap(service: EmbeddingService) -> None:
    before = service.resolve_model("ranker").version
    service.store.put("items", runtime.compress(X["items"], "int8", version="i2"))
    after = service.resolve_model("ranker")
    assert after.version != before
    with pytest.raises(TableNotFound):
        service.resolve_model("ranker", before)
    version, _ = await infer(service, after, oip_inputs(), {})
    assert version == after.version


async def test_group_errors_name_the_feature(service: EmbeddingService) -> None:
    model = service.resolve_model("ranker")
    cases: list[tuple[dict[str, np.ndarray], str]] = [
        ({**oip_inputs(), "item__lengths": np.array([1, -1, 3])}, "feature 'item': lengths[1] = -1 is negative"),
        ({**oip_inputs(), "item__lengths": np.array([1, 1, 2])}, "feature 'item': lengths sum to 4 but 3 ids"),
        ({**oip_inputs(), "user__values": np.array([1, 2, 3, 100])}, "feature 'user': ids[3] = 100 is out of range"),
        ({**oip_inputs(), "item__weights": np.ones(2, np.float32)}, "feature 'item': weights"),
        ({**oip_inputs(), "user__lengths": np.array([4, 0])}, "feature 'user': 2"),
        ({k: v for k, v in oip_inputs().items() if k != "item__values"}, "needs input 'item__values'"),
        ({**oip_inputs(), "colour__values": np.array([1])}, "has no input 'colour__values'"),
        (
            {**oip_inputs(), "user__values": np.array([1.0, 2.0, 3.0, 4.0])},
            "'user__values' must be ids of an integer datatype",
        ),
        ({**oip_inputs(), "item__weights": np.ones(3, np.int64)}, "'item__weights' must be FP32"),
    ]
    for inputs, message in cases:
        with pytest.raises(InvalidRequest, match=message.replace("[", r"\[")):
            await infer(service, model, inputs, {})
    with pytest.raises(TableNotFound, match="gone"):
        service.resolve_model("broken")


# ---- live: REST and gRPC -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("groups")
    runtime.compress(X["users"], "fp32", version="u1").save(root / "users")
    runtime.compress(X["items"], "int8", version="i1").save(root / "items")
    return root


@pytest.fixture(scope="module")
def tables(root: Path) -> dict[str, runtime.Table]:
    return {name: runtime.load_table(root / name) for name in ("users", "items")}


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    args = ["--table", f"users={root / 'users'}", "--table", f"items={root / 'items'}", "--groups", GROUP]
    live = start_server(tmp_path_factory.mktemp("groups-server"), args)
    yield live
    assert live.terminate() == 0, live.log()


def test_rest_group_model(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    meta = httpx.get(f"{server.http}/v2/models/ranker").json()
    assert [i["name"] for i in meta["inputs"]][:3] == ["user__values", "user__lengths", "user__weights"]
    assert meta["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 16]}]
    assert httpx.get(f"{server.http}/v2/models/ranker/ready").json()["ready"] is True
    config = httpx.get(f"{server.http}/v2/models/ranker/config").json()
    assert config["parameters"]["tables"]["string_value"] == "users,items,items"
    given = oip_inputs(weights=True)
    body = {
        "inputs": [
            {"name": n, "datatype": oip.DATATYPE_OF[a.dtype], "shape": list(a.shape), "data": a.tolist()}
            for n, a in given.items()
        ]
    }
    r = httpx.post(f"{server.http}/v2/models/ranker/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == meta["versions"][0]
    got = np.array(out["outputs"][0]["data"], np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected(tables, WEIGHTS), rtol=1e-6)
    body["inputs"][1]["data"] = [1, 3, -1]
    bad = httpx.post(f"{server.http}/v2/models/ranker/infer", json=body)
    assert bad.status_code == 400 and "feature 'user': lengths[2] = -1 is negative" in bad.json()["error"], bad.text


def test_grpc_group_model(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    given = oip_inputs()
    request = ipb.ModelInferRequest(model_name="ranker")
    for name, arr in given.items():
        request.inputs.add(name=name, datatype="INT64", shape=list(arr.shape))
        request.raw_input_contents.append(arr.astype("<i8").tobytes())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = ipb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(ipb.ModelMetadataRequest(name="ranker"))
        assert [o.name for o in meta.outputs] == ["embeddings"] and list(meta.outputs[0].shape) == [-1, 16]
        response = stub.ModelInfer(request)
        assert response.model_version == meta.versions[0]
        got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
        np.testing.assert_array_equal(got, expected(tables))
        request.raw_input_contents[0] = np.array([1, 2, 3, 100], "<i8").tobytes()
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE  # as a one-table model and Lookup answer it
        assert "feature 'user': ids[3] = 100 is out of range" in (err.value.details() or "")


@pytest.mark.external
def test_tritonclient_drives_the_group_model(
    server: LiveServer, tables: dict[str, runtime.Table], tmp_path: Path
) -> None:
    given = tmp_path / "in.npz"
    np.savez(given, **oip_inputs(weights=True, lengths_dtype=np.int32))  # type: ignore[arg-type]
    out = tmp_path / "out.npz"
    run = subprocess.run(
        [sys.executable, str(CHECK), server.http.removeprefix("http://"), server.grpc, "ranker", str(given), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = np.load(out)
    want = expected(tables, WEIGHTS)
    for key in ("http_binary", "http_json", "grpc_binary"):
        np.testing.assert_allclose(got[key], want, rtol=1e-6, err_msg=key)
    assert (
        str(got["http_version"])
        == str(got["grpc_version"])
        == json.loads(httpx.get(f"{server.http}/v2/models/ranker").text)["versions"][0]
    )
    assert list(got["grpc_input_names"])[-3:] == ["item_hist__values", "item_hist__lengths", "item_hist__weights"]
