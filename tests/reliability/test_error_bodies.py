"""Error bodies name artifacts relative to the artifact root and never echo unbounded input."""

from __future__ import annotations

import grpc
import httpx
import pytest

from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from tests.reliability.conftest import ADMIN_TOKEN, Reliable

MAX_MESSAGE = 600


def test_corrupt_artifact_error_names_the_path_below_the_root(reliable: Reliable) -> None:
    broken = reliable.root / "broken" / "v3"
    broken.mkdir(parents=True)
    for f in (reliable.root / "t" / "v2").iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data if f.name == "manifest.json" else data[:-3])
    r = httpx.put(
        f"{reliable.server.http}/v1/tables/t",
        json={"path": "broken/v3"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert str(reliable.root) not in error and str(reliable.root.resolve()) not in error, error
    assert "broken/v3/" in error and "sha256" in error, error


def test_huge_names_are_not_echoed(reliable: Reliable) -> None:
    name = "x" * 1_000_000
    with grpc.insecure_channel(reliable.server.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.DescribeTable(pb.DescribeTableRequest(table=name))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert len(info.value.details() or "") < MAX_MESSAGE and "xxxx" in (info.value.details() or "")
    r = httpx.post(f"{reliable.server.http}/v1/tables/{'y' * 8000}/lookup", json={"ids": [1]})
    assert r.status_code == 404 and len(r.text) < MAX_MESSAGE, r.text[:300]
    r = httpx.post(
        f"{reliable.server.http}/v1/tables/t/search", json={"queries": [[0.0] * 32], "metric": "m" * 100_000}
    )
    assert r.status_code == 400 and len(r.text) < MAX_MESSAGE, r.text[:300]
