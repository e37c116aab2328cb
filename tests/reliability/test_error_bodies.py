"""Error bodies name artifacts relative to the artifact root and never echo unbounded input."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from runtime.errors import ArtifactCorrupt, InvalidRequest, TableNotFound
from service.errors import MAX_ECHO, MAX_MESSAGE, public_message
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from tests.reliability.conftest import ADMIN_TOKEN, Reliable

ERROR_BODY_LIMIT = 600  # characters of a whole error body or gRPC detail


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
        assert len(info.value.details() or "") < ERROR_BODY_LIMIT and "xxxx" in (info.value.details() or "")
    r = httpx.post(f"{reliable.server.http}/v1/tables/{'y' * 8000}/lookup", json={"ids": [1]})
    assert r.status_code == 404 and len(r.text) < ERROR_BODY_LIMIT, r.text[:300]
    r = httpx.post(
        f"{reliable.server.http}/v1/tables/t/search", json={"queries": [[0.0] * 32], "metric": "m" * 100_000}
    )
    assert r.status_code == 400 and len(r.text) < ERROR_BODY_LIMIT, r.text[:300]


def test_public_message_is_relative_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    exc = ArtifactCorrupt(f"array 'rows': '{root.resolve()}/items/v2/rows.npy' fails its sha256 check")
    assert public_message(exc, root) == "array 'rows': 'items/v2/rows.npy' fails its sha256 check"
    # a relative root (`--artifact-root tables`) is cut where a path starts, never out of the
    # middle of the absolute one, whichever of the two the set of roots gave first
    (tmp_path / "tables").mkdir()
    monkeypatch.chdir(tmp_path)
    exc = ArtifactCorrupt(f"'{(tmp_path / 'tables').resolve()}/users/bad/x.npy' and 'tables/users/y.npy'")
    assert public_message(exc, Path("tables")) == "'users/bad/x.npy' and 'users/y.npy'"
    name = "n" * 10_000
    text = public_message(TableNotFound(name), None)
    assert text.startswith("table '" + "n" * (MAX_ECHO - 1)) and "(10002 chars)" in text and len(text) < 120
    many = public_message(InvalidRequest("shape " + " ".join(["12345"] * 10_000)), None)
    assert len(many) <= MAX_MESSAGE + 20 and many.endswith("(60005 chars)")
