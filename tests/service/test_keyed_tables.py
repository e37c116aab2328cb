"""Keyed, tiered, mutable tables served: keys over REST (JSON, octet-stream), gRPC and the Open
Inference Protocol; describe; admin upsert/delete over both transports; their metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import runtime
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor
from tests.conftest import low_rank_table
from tests.service.conftest import ADMIN_TOKEN
from tests.service.live import LiveServer, start_server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
N, D = 600, 16
KEYS = np.arange(N, dtype=np.int64) * 1_000_003 - 2**40  # negative and positive, far apart


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, runtime.Table]]:
    root = tmp_path_factory.mktemp("keyed")
    x = low_rank_table(N, D, seed=31)
    tiers: list[dict[str, Any]] = [
        {"rows": {"start": 0, "stop": 100}, "codec": "int8"},
        {"rows": {"start": 100, "stop": N}, "codec": "pq", "subspaces": 4, "iterations": 4, "dim": 8},
    ]
    runtime.compress(x, tiers=tiers, keys=KEYS, delta_capacity=1000, version="k1").save(root / "feat")
    runtime.compress(x, tiers=tiers, keys=KEYS, missing="zeros").save(root / "lenient")
    live = start_server(
        root,
        ["--table", f"feat={root / 'feat'}", "--table", f"lenient={root / 'lenient'}"],
        env={"EMBSERVE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    yield live, runtime.load_table(root / "feat")
    assert live.terminate() == 0, live.log()


def arr(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, {"int64": "<i8", "float32": "<f4"}[t.dtype]).reshape(list(t.shape))


def test_keys_over_rest_json_octet_and_oip(server: tuple[LiveServer, runtime.Table]) -> None:
    live, table = server
    keys = KEYS[[0, 599, 150, 7]]
    want = table.lookup(keys)
    r = httpx.post(f"{live.http}/v1/tables/feat/lookup", json={"ids": keys.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["embeddings"]), want, rtol=1e-6)
    r = httpx.post(
        f"{live.http}/v1/tables/feat/lookup",
        content=keys.astype("<i8").tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    np.testing.assert_array_equal(np.frombuffer(r.content, "<f4").reshape(4, D), want)
    body = {"inputs": [{"name": "ids", "shape": [4], "datatype": "INT64", "data": keys.tolist()}]}
    out = httpx.post(f"{live.http}/v2/models/feat/infer", json=body).json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), want, rtol=1e-6)
    r = httpx.post(f"{live.http}/v1/tables/feat/search", json={"queries": want[:2].tolist(), "k": 3, "metric": "l2"})
    ids, _ = table.search(want[:2], 3, "l2")
    assert r.json()["ids"] == ids.tolist() and r.json()["ids"][0][0] == keys[0]
    r = httpx.post(f"{live.http}/v1/tables/feat/search", json={"query_ids": keys[:1].tolist(), "k": 3})
    assert r.status_code == 200 and keys[0] not in r.json()["ids"][0]
    with grpc.insecure_channel(live.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        got = stub.Lookup(pb.LookupRequest(table="feat", ids=array_to_tensor(keys)))
        np.testing.assert_array_equal(arr(got.embeddings), want)
        found = stub.Search(pb.SearchRequest(table="feat", queries=array_to_tensor(want[:2]), k=3, metric="l2"))
        assert arr(found.ids).tolist() == ids.tolist()
    r = httpx.post(
        f"{live.http}/v1/tables/feat/score", json={"candidate_ids": [keys.tolist()], "query_ids": [int(keys[0])]}
    )
    np.testing.assert_allclose(r.json()["scores"], table.score([keys], query_ids=keys[:1]), rtol=1e-5)


def test_missing_key_is_404_naming_it_or_zeros_counted(server: tuple[LiveServer, runtime.Table]) -> None:
    live, _ = server
    r = httpx.post(f"{live.http}/v1/tables/feat/lookup", json={"ids": [int(KEYS[1]), 5]})
    assert r.status_code == 404 and "keys[1] = 5 is not in the table" in r.json()["error"]
    r = httpx.post(f"{live.http}/v1/tables/lenient/lookup", json={"ids": [int(KEYS[1]), 5, 6]})
    assert r.status_code == 200 and not np.array(r.json()["embeddings"])[1:].any()
    text = httpx.get(f"{live.http}/metrics").text
    assert re.search(r'embserve_missing_keys_total\{table="lenient"\} 2\.0', text), text[-2000:]
    with grpc.insecure_channel(live.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Lookup(pb.LookupRequest(table="feat", ids=array_to_tensor(np.array([5], np.int64))))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "5 is not in the table" in str(err.value.details())


def test_describe_shows_tiers_keys_delta_and_sequence(server: tuple[LiveServer, runtime.Table]) -> None:
    live, _ = server
    info = httpx.get(f"{live.http}/v1/tables/feat").json()
    assert info["keyed"] is True and [t["rows"] for t in info["tiers"]] == [100, 500]
    assert info["tiers"][1]["dim"] == 8 and info["delta_capacity"] == 1000
    with grpc.insecure_channel(live.grpc) as channel:
        described = pb_grpc.EmbeddingServiceStub(channel).DescribeTable(pb.DescribeTableRequest(table="feat"))
    assert described.keyed and [t.codec for t in described.tiers] == ["int8", "pq"]
    assert json.loads(described.tiers[1].params_json)["subspaces"] == 4


def test_admin_updates_over_rest_and_grpc(server: tuple[LiveServer, runtime.Table], tmp_path: Path) -> None:
    live, table = server
    url = f"{live.http}/v1/tables/feat"
    new = np.full((2, D), 0.5, np.float32)
    assert httpx.post(f"{url}/upsert", json={"keys": [1, 2], "rows": new.tolist()}).status_code == 401
    r = httpx.post(f"{url}/upsert", json={"keys": [int(KEYS[3]), 42], "rows": new.tolist()}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == 2 and r.json()["delta_rows"] == 2
    got = np.array(httpx.post(f"{url}/lookup", json={"ids": [int(KEYS[3]), 42]}).json()["embeddings"])
    np.testing.assert_allclose(got[0], new[0], atol=0.02)  # an int8 tier's row
    # a new key goes to the cheapest tier (PQ on 8 dims), encoded with its trained state
    cheap = table.tiers[table.new_key_tier]
    np.testing.assert_allclose(
        got[1], cheap.with_rows(*cheap.encode(new[1:])).decode(np.zeros(1, np.int64))[0], rtol=1e-5
    )
    # octet-stream: keys int64 then rows float32, shape in a header, sequence set by the caller
    body = np.array([43], "<i8").tobytes() + np.full((1, D), -1.0, "<f4").tobytes()
    headers = {**AUTH, "content-type": "application/octet-stream", "X-Embserve-Shape": f"1,{D}"}
    r = httpx.post(f"{url}/upsert", content=body, headers={**headers, "X-Embserve-Sequence": "900"})
    assert r.status_code == 200 and r.json()["sequence"] == 900, r.text
    r = httpx.post(f"{url}/upsert", content=body[:-4], headers=headers)
    assert r.status_code == 400 and "needs" in r.json()["error"]
    bad = httpx.post(f"{url}/upsert", json={"keys": [44], "rows": [[1e39] * D]}, headers=AUTH)
    assert bad.status_code == 400
    # finite but past 2**50: a PQ tier encoded it as an unrelated codeword (its distances were inf)
    bad = httpx.post(
        f"{url}/upsert", json={"keys": [int(KEYS[300]), 44], "rows": [[0.0] * D, [1e19] * D]}, headers=AUTH
    )
    assert bad.status_code == 400 and "rows[1] holds a value of magnitude 1e+19" in bad.json()["error"], bad.text
    r = httpx.post(f"{url}/delete", json={"keys": [42, 31337]}, headers=AUTH)
    assert r.status_code == 404 and "31337" in r.json()["error"]
    with grpc.insecure_channel(live.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        meta = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        reply = stub.DeleteKeys(pb.DeleteKeysRequest(table="feat", keys=array_to_tensor(np.array([42]))), metadata=meta)
        assert reply.sequence == 901 and reply.applied == 1
        with pytest.raises(grpc.RpcError) as err:
            stub.Upsert(
                pb.UpsertRequest(table="feat", keys=array_to_tensor(np.array([1])), rows=array_to_tensor(new[:1]))
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Upsert(
            pb.UpsertRequest(
                table="feat", keys=array_to_tensor(np.array([7])), rows=array_to_tensor(new[:1]), sequence=950
            ),
            metadata=meta,
        )
        assert reply.sequence == 950 and reply.delta_rows == 3
        row43 = np.array(httpx.post(f"{url}/lookup", json={"ids": [43]}).json()["embeddings"], np.float32)
        found = stub.Search(pb.SearchRequest(table="feat", queries=array_to_tensor(row43), k=1, metric="l2"))
        assert arr(found.ids)[0, 0] == 43
    assert httpx.post(f"{url}/lookup", json={"ids": [42]}).status_code == 404
    text = httpx.get(f"{live.http}/metrics").text
    assert 'embserve_table_delta_rows{table="feat"} 3.0' in text
    assert 'embserve_table_delta_capacity_slots{table="feat"} 1000.0' in text
    info = httpx.get(url).json()
    assert info["sequence"] == 950 and info["delta_rows"] == 3 and info["nbytes"] > table.nbytes


def test_sequences_past_int64_and_odd_header_digits_are_refused_and_change_nothing(
    server: tuple[LiveServer, runtime.Table],
) -> None:
    # found by an adversarial probe: each was applied and then answered 500 (or broke describe)
    live, _ = server
    url = f"{live.http}/v1/tables/lenient"
    row = np.full((1, D), 0.25, np.float32)
    body = np.array([77], "<i8").tobytes() + row.astype("<f4").tobytes()
    octet = {**AUTH, "content-type": "application/octet-stream", "X-Embserve-Shape": f"1,{D}"}

    def raw_headers(name: str, value: bytes) -> list[tuple[bytes, bytes]]:
        # bytes as sent: httpx would refuse a str header that is not ASCII
        return [(k.encode(), v.encode()) for k, v in octet.items() if k != name] + [(name.encode(), value)]

    def stored() -> list[float]:
        return httpx.post(f"{url}/lookup", json={"ids": [77]}).json()["embeddings"][0]

    before = stored()
    refusals = [
        httpx.post(f"{url}/upsert", json={"keys": [77], "rows": row.tolist(), "sequence": 2**63}, headers=AUTH),
        httpx.post(f"{url}/upsert", content=body, headers={**octet, "X-Embserve-Sequence": "9" * 23}),
        httpx.post(f"{url}/upsert", content=body, headers=raw_headers("X-Embserve-Sequence", b"\xb9")),
        httpx.post(f"{url}/upsert", content=body, headers=raw_headers("X-Embserve-Shape", b"\xb2,%d" % D)),
        httpx.post(f"{url}/upsert", content=b"", headers={**octet, "X-Embserve-Shape": "0," + "9" * 20}),
        httpx.post(f"{url}/delete", content=b"", headers=raw_headers("X-Embserve-Shape", b"\xb9")),
    ]
    assert [r.status_code for r in refusals] == [400] * len(refusals), [r.text for r in refusals]
    assert "sequence must be an integer from 0 to 9223372036854775807" in refusals[0].json()["error"]
    assert stored() == before
    with grpc.insecure_channel(live.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        meta = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        keys, rows = array_to_tensor(np.array([77])), array_to_tensor(row)
        last = 2**63 - 1
        assert stub.Upsert(pb.UpsertRequest(table="lenient", keys=keys, rows=rows, sequence=last), metadata=meta)
        changed = stored()
        with pytest.raises(grpc.RpcError) as err:
            stub.Upsert(pb.UpsertRequest(table="lenient", keys=keys, rows=array_to_tensor(row * 2)), metadata=meta)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at its largest" in str(err.value.details())
        assert stored() == changed
        assert stub.DescribeTable(pb.DescribeTableRequest(table="lenient")).sequence == last
        assert "lenient" in [t.name for t in stub.ListTables(pb.ListTablesRequest()).tables]
    assert httpx.get(url).json()["sequence"] == last
