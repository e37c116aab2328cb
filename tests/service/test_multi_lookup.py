"""Multi-table lookups (`POST /v1/lookup`) against a live server: JSON, the jagged layout and the
binary form, checked against the runtime's own per-table calls, plus every refusal and the
one-set-of-versions guarantee under racing swaps."""

from __future__ import annotations

import json
import threading
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
from tests.service.live import LiveServer, start_server

TOKEN = "multi-token"
KEYS = np.arange(120, dtype=np.int64) * 1_000_003 - 5


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    runtime.compress(low_rank_table(300, 16, seed=1), "int8", version="users-1").save(root / "users" / "v1")
    runtime.compress(low_rank_table(300, 16, seed=2), "int8", version="users-2").save(root / "users" / "v2")
    runtime.compress(low_rank_table(200, 8, seed=3), "fp32", version="items-1").save(root / "items" / "v1")
    runtime.compress(low_rank_table(120, 12, seed=4), "int4", keys=KEYS, version="keyed-1").save(root / "keyed" / "v1")
    return root


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    args = ["--artifact-root", str(root)]
    for name in ("users", "items", "keyed"):
        args += ["--table", f"{name}={root / name / 'v1'}"]
    env = {"EMBSERVE_ADMIN_TOKEN": TOKEN, "EMBSERVE_MAX_IDS": "2000", "EMBSERVE_MAX_TABLES_PER_REQUEST": "5"}
    live = start_server(tmp_path_factory.mktemp("multi-server"), args, env=env)
    yield live
    assert live.terminate() == 0, live.log()


@pytest.fixture(scope="module")
def tables(root: Path) -> dict[str, runtime.Table]:
    return {name: runtime.load_table(root / name / "v1") for name in ("users", "items", "keyed")}


def post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.http}/v1/lookup", json=body, timeout=30)


REQUEST: dict[str, Any] = {
    "tables": [
        {"table": "users", "ids": [1, 2, 3, 299, 7], "lengths": [2, 0, 3]},
        {"table": "items", "ids": [5, 6, 7, 8], "offsets": [0, 1, 1], "weights": [0.5, 2, -1, 0], "mode": "sum"},
        {"table": "keyed", "ids": [int(KEYS[3]), int(KEYS[119])]},
        {"table": "users", "ids": [4, 4, 9], "lengths": [1, 1, 1], "mode": "mean"},
    ]
}


def expected(tables: dict[str, runtime.Table]) -> list[np.ndarray]:
    users, items, keyed = tables["users"], tables["items"], tables["keyed"]
    return [
        users.lookup_pooled([1, 2, 3, 299, 7], [0, 2, 2], "sum"),
        items.lookup_pooled([5, 6, 7, 8], [0, 1, 1], "sum", per_sample_weights=[0.5, 2, -1, 0]),
        keyed.lookup([KEYS[3], KEYS[119]]),
        users.lookup_pooled([4, 4, 9], [0, 1, 2], "mean"),
    ]


def test_json_matches_per_table_runtime_calls(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    r = post(server, REQUEST)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["table"] for x in results] == ["users", "items", "keyed", "users"]
    assert [x["version"] for x in results] == ["users-1", "items-1", "keyed-1", "users-1"]
    for got, want in zip(results, expected(tables), strict=True):
        assert got["shape"] == list(want.shape)
        np.testing.assert_allclose(np.array(got["embeddings"], np.float32), want, rtol=1e-6, atol=1e-6)
    # the weighted bag by hand: 0.5 * row 5 alone, an empty bag, then 2 * row 6 - row 7 + 0 * row 8
    rows = tables["items"].lookup([5, 6, 7, 8])
    np.testing.assert_allclose(results[1]["embeddings"][2], 2 * rows[1] - rows[2], rtol=1e-6, atol=1e-6)


def test_concat_is_side_by_side_in_the_order_asked(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    body = {"tables": [REQUEST["tables"][1], REQUEST["tables"][0]], "concat": True}
    r = post(server, body)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], np.float32)
    assert r.json()["shape"] == [3, 8 + 16] and [t["table"] for t in r.json()["tables"]] == ["items", "users"]
    want = expected(tables)
    np.testing.assert_allclose(got, np.concatenate([want[1], want[0]], axis=1), rtol=1e-6, atol=1e-6)
    r = post(server, {"tables": REQUEST["tables"][:3], "concat": True})
    assert r.status_code == 400 and "same number of rows (B)" in r.json()["error"]
    assert "tables[2] ('keyed'): 2" in r.json()["error"]


def test_jagged_layout(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    # F=2 features, B=2 samples, feature-major lengths as a KeyedJaggedTensor holds them
    body = {
        "features": ["users", "items"],
        "lengths": [2, 1, 0, 3],
        "values": [10, 11, 12, 1, 2, 3],
        "weights": [1, 2, 3, 0.5, 0.25, 4],
        "concat": True,
    }
    r = post(server, body)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], np.float32)
    users = tables["users"].lookup_pooled([10, 11, 12], [0, 2], per_sample_weights=[1, 2, 3])
    items = tables["items"].lookup_pooled([1, 2, 3], [0, 0], per_sample_weights=[0.5, 0.25, 4])
    np.testing.assert_allclose(got, np.concatenate([users, items], axis=1), rtol=1e-6, atol=1e-6)


def test_binary_form(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    header = {
        "tables": [
            {"table": "users", "ids": 5, "lengths": 3},
            {"table": "items", "ids": 4, "offsets": 3, "weights": True},
            {"table": "keyed", "ids": 2},
        ]
    }
    body = b"".join(
        [
            np.array([1, 2, 3, 299, 7], "<i8").tobytes(),
            np.array([2, 0, 3], "<i8").tobytes(),
            np.array([5, 6, 7, 8], "<i8").tobytes(),
            np.array([0, 1, 1], "<i8").tobytes(),
            np.array([0.5, 2, -1, 0], "<f4").tobytes(),
            np.array([KEYS[3], KEYS[119]], "<i8").tobytes(),
        ]
    )
    headers = {"Content-Type": "application/octet-stream", "X-Embserve-Tables": json.dumps(header)}
    r = httpx.post(f"{server.http}/v1/lookup", content=body, headers=headers)
    assert r.status_code == 200, r.text
    described = json.loads(r.headers["X-Embserve-Results"])["results"]
    flat = np.frombuffer(r.content, "<f4")
    at = 0
    for info, want in zip(described, expected(tables)[:3], strict=True):
        assert info["shape"] == list(want.shape)
        size = want.size
        np.testing.assert_allclose(flat[at : at + size].reshape(want.shape), want, rtol=1e-6, atol=1e-6)
        at += size
    assert at == flat.size
    short = httpx.post(f"{server.http}/v1/lookup", content=body[:-8], headers=headers)
    assert short.status_code == 400 and "tables[2] ('keyed') ids" in short.json()["error"]
    extra = httpx.post(f"{server.http}/v1/lookup", content=body + b"\0" * 8, headers=headers)
    assert extra.status_code == 400 and "describes" in extra.json()["error"]
    missing = httpx.post(f"{server.http}/v1/lookup", content=body, headers={"Content-Type": "application/octet-stream"})
    assert missing.status_code == 400 and "X-Embserve-Tables" in missing.json()["error"]
    for misspelt, message in [
        ({**header, "concatenate": True}, "X-Embserve-Tables: unknown field(s) concatenate"),
        ({"tables": [{**header["tables"][0], "weight": True}]}, "tables[0] ('users'): unknown field(s) weight"),
    ]:
        r = httpx.post(
            f"{server.http}/v1/lookup", content=body, headers={**headers, "X-Embserve-Tables": json.dumps(misspelt)}
        )
        assert r.status_code == 400 and message in r.json()["error"], r.text


BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"tables": [{"table": "users", "ids": [1]}, {"table": "nope", "ids": [1]}]}, 404, "tables[1] ('nope')"),
    ({"tables": [{"table": "users", "ids": [1, 2], "lengths": [1, 2]}]}, 400, "lengths sum to 3 but 2 ids"),
    ({"tables": [{"table": "users", "ids": [1, 2], "lengths": [3, -1]}]}, 400, "lengths[1] = -1 is negative"),
    ({"tables": [{"table": "items", "ids": [1, 2], "lengths": [2], "weights": [1]}]}, 400, "one weight per id (2)"),
    (
        {"tables": [{"table": "items", "ids": [1], "lengths": [1], "weights": ["x"]}]},
        400,
        "weights must hold numbers, got strings",
    ),
    ({"tables": [{"table": "items", "ids": [1, 2], "weights": [1, 1]}]}, 400, "weights need bags"),
    (
        {"tables": [{"table": "items", "ids": [1], "lengths": [1], "weights": [1], "mode": "mean"}]},
        400,
        'only supported with mode "sum"',
    ),
    ({"tables": [{"table": "items", "ids": [1], "lengths": [1], "offsets": [0]}]}, 400, "not both"),
    (
        {"tables": [{"table": "users", "ids": [1]}, {"table": "items", "ids": [200]}]},
        400,
        "tables[1] ('items'): ids[0] = 200",
    ),
    ({"tables": [{"table": "keyed", "ids": [12345]}]}, 404, "tables[0] ('keyed') ids[0] = 12345"),
    ({"tables": [{"table": "users", "ids": [1], "mode": "max"}]}, 400, "mode must be one of"),
    ({"tables": [{"table": "users", "ids": [1], "idz": [1]}]}, 400, "unknown field(s) idz"),
    ({"tables": []}, 400, "at least one table"),
    ({"tables": [{"table": "users", "ids": [1]}] * 6}, 413, "6 tables exceed the limit of 5"),
    ({"tables": [{"table": "users", "ids": [1] * 1500}, {"table": "items", "ids": [1] * 600}]}, 413, "2000"),
    # empty bags cost no ids, yet each is a row of the answer: counted as a single lookup counts them
    (
        {
            "tables": [
                {"table": "users", "ids": [], "lengths": [0] * 1500},
                {"table": "items", "ids": [1], "lengths": [1] + [0] * 600},
            ]
        },
        413,
        "more than 2000 rows (bags) in total",
    ),
    ({"features": ["users", "items"], "lengths": [1, 1, 1], "values": [1, 2, 3]}, 400, "not a multiple of the 2"),
    ({"features": ["users", "items"], "lengths": [1, 1, -1, 2], "values": [1, 2]}, 400, "feature 'items', sample 0"),
    ({"features": ["users"], "lengths": [2], "values": [1]}, 400, "lengths sum to 2 but values has 1"),
    # lengths whose int64 sum wraps round to the count of ids; the server crashed on them
    ({"features": ["users"], "lengths": [2**63 - 1, 2**63 - 1, 3], "values": [1]}, 400, "past the int64 range"),
    ({"tables": [{"table": "users", "ids": [1], "lengths": [2**63 - 1, 2**63 - 1, 3]}]}, 400, "past the int64 range"),
    ({"tables": [{"table": "users", "ids": [1], "offsets": [0, 2**63 - 1, -2]}]}, 400, "offsets[2] = -2"),
    ({"features": ["users"], "lengths": [1], "values": [[1]]}, 400, "values must be a flat array"),
    ({"tables": [{"table": "users", "ids": [[1, 2], [3]]}]}, 400, "tables[0] ('users'): ids must be a flat array"),
    ({"tables": [{"table": "users", "ids": [1], "lengths": [1.0]}]}, 400, "lengths must be a flat array of integers"),
    ({"tables": [{"table": "items", "ids": [1], "lengths": [1], "weights": [None]}]}, 400, "weights must hold numbers"),
    ({"tables": [{"table": "users", "ids": [1]}], "concat": "yes"}, 400, "concat must be true or false"),
    # misspelt fields were dropped, and the answer was the one without them
    ({"tables": [{"table": "users", "ids": [1]}], "concatenate": True}, 400, "request: unknown field(s) concatenate"),
    (
        {"features": ["items"], "lengths": [2], "values": [1, 2], "weigths": [0, 0]},
        400,
        "the jagged layout: unknown field(s) weigths",
    ),
    ({"tables": [{"table": "keyed", "ids": [int(KEYS[1])], "keys": [int(KEYS[2])]}]}, 400, "give ids or keys"),
    # numpy reads [1, true] as [1, 1]
    ({"tables": [{"table": "users", "ids": [1, True]}]}, 400, "tables[0].ids[1] is true among numbers"),
    ({"features": ["users"], "lengths": [2], "values": [False, 2]}, 400, "values[0] is false among numbers"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_requests_are_refused_whole(server: LiveServer, body: dict[str, Any], status: int, message: str) -> None:
    r = post(server, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert "results" not in r.json()


def test_a_racing_swap_never_mixes_versions(server: LiveServer, root: Path, tables: dict[str, runtime.Table]) -> None:
    """The same table asked twice in one request must come from one version, whatever the swaps."""
    v2 = runtime.load_table(root / "users" / "v2")
    want = {"users-1": tables["users"].lookup([3, 4]), "users-2": v2.lookup([3, 4])}
    stop = threading.Event()

    def swapper() -> None:
        url = f"{server.http}/v1/tables/users"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for round_ in range(12):
            httpx.put(url, json={"path": f"users/v{2 - round_ % 2}"}, headers=auth, timeout=30).raise_for_status()
        stop.set()

    thread = threading.Thread(target=swapper)
    thread.start()
    seen: set[str] = set()
    body = {"tables": [{"table": "users", "ids": [3]}, {"table": "items", "ids": [1]}, {"table": "users", "ids": [4]}]}
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() or not seen:
            results = client.post(f"{server.http}/v1/lookup", json=body).json()["results"]
            first, last = results[0]["version"], results[2]["version"]
            assert first == last, results
            np.testing.assert_allclose(results[0]["embeddings"][0], want[first][0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(results[2]["embeddings"][0], want[first][1], rtol=1e-6, atol=1e-6)
            seen.add(first)
    thread.join()
    assert seen <= {"users-1", "users-2"}


def _tensor(values: Any, dtype: str) -> pb.Tensor:
    return array_to_tensor(np.asarray(values, dtype=dtype))


def _entry(table: str, ids: Any, **fields: Any) -> pb.MultiLookupEntry:
    extra = {k: _tensor(v, "float32" if k == "weights" else "int64") for k, v in fields.items() if k != "mode"}
    return pb.MultiLookupEntry(table=table, ids=_tensor(ids, "int64"), mode=fields.get("mode", ""), **extra)


GRPC_ENTRIES = [
    _entry("users", [1, 2, 3, 299, 7], lengths=[2, 0, 3]),
    _entry("items", [5, 6, 7, 8], offsets=[0, 1, 1], weights=[0.5, 2, -1, 0]),
    _entry("keyed", [KEYS[3], KEYS[119]]),
    _entry("users", [4, 4, 9], lengths=[1, 1, 1], mode="mean"),
]


def _arr(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, "<f4").reshape(list(t.shape))


def test_grpc_multi_lookup(server: LiveServer, tables: dict[str, runtime.Table]) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        reply = stub.MultiLookup(pb.MultiLookupRequest(tables=GRPC_ENTRIES))
        assert [r.version for r in reply.results] == ["users-1", "items-1", "keyed-1", "users-1"]
        for got, want in zip(reply.results, expected(tables), strict=True):
            np.testing.assert_allclose(_arr(got.embeddings), want, rtol=1e-6, atol=1e-6)
        joined = stub.MultiLookup(pb.MultiLookupRequest(tables=[GRPC_ENTRIES[1], GRPC_ENTRIES[0]], concat=True))
        each = expected(tables)
        np.testing.assert_allclose(
            _arr(joined.concatenated), np.concatenate([each[1], each[0]], axis=1), rtol=1e-6, atol=1e-6
        )
        bad = [
            ([GRPC_ENTRIES[0], _entry("nope", [1])], grpc.StatusCode.NOT_FOUND, "tables[1] ('nope')"),
            ([_entry("users", [1, 2], lengths=[3, -1])], grpc.StatusCode.INVALID_ARGUMENT, "lengths[1] = -1"),
            # as a single-table Lookup answers it (it was INVALID_ARGUMENT here)
            ([_entry("items", [1, 200])], grpc.StatusCode.OUT_OF_RANGE, "tables[0] ('items'): ids[1] = 200"),
            (
                [_entry("items", [1, 2], lengths=[2], weights=[1])],
                grpc.StatusCode.INVALID_ARGUMENT,
                "one weight per id (2)",
            ),
            ([pb.MultiLookupEntry(table="users")], grpc.StatusCode.INVALID_ARGUMENT, "tables[0] ('users'): ids are"),
            (
                [pb.MultiLookupEntry(table="users", ids=pb.Tensor(dtype="int64", shape=[3], data=b"x"))],
                grpc.StatusCode.INVALID_ARGUMENT,
                "tables[0].ids: 1 bytes",
            ),
            (
                [pb.MultiLookupEntry(table="items", ids=_tensor([1, 2], "int64"), weights=_tensor([1, 1], "int64"))],
                grpc.StatusCode.INVALID_ARGUMENT,
                "tables[0].weights.dtype must be 'float32', got 'int64'",
            ),
        ]
        for entries, code, message in bad:
            with pytest.raises(grpc.RpcError) as info:
                stub.MultiLookup(pb.MultiLookupRequest(tables=entries))
            assert info.value.code() == code and message in (info.value.details() or ""), info.value.details()
