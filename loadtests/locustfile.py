"""Locust users for embserve: native JSON, native octet-stream and Open Inference Protocol
(binary tensors) over HTTP; native and Open Inference Protocol over gRPC.

Ids follow a Zipf-like popularity — the real MovieLens-1M item frequencies' rank curve when
../shared/data/ml1m-als64 is present, Zipf(1.1) otherwise — over a seeded permutation of the
table's rows. Search queries are the table's own rows, fetched once at start.

Settings (environment): EMBSERVE_LOAD_TABLE (demo), EMBSERVE_LOAD_GRPC (host:port of gRPC),
EMBSERVE_LOAD_BATCH (256 ids a lookup), EMBSERVE_LOAD_K (10).
Select users by class name on the locust command line (loadtests/run.py does).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, User, between, events, task  # noqa: E402

from service.rpc.generated import embserve_pb2 as pb  # noqa: E402
from service.rpc.generated import embserve_pb2_grpc as pb_grpc  # noqa: E402
from service.rpc.generated import oip_v2_pb2 as ipb  # noqa: E402
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc  # noqa: E402

TABLE = os.environ.get("EMBSERVE_LOAD_TABLE", "demo")
BATCH = int(os.environ.get("EMBSERVE_LOAD_BATCH", "256"))
K = int(os.environ.get("EMBSERVE_LOAD_K", "10"))
SHARED_FREQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml1m-als64" / "item_freq.npy"


class IdStream:
    """Popularity-skewed ids over `rows` rows."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(1, rows + 1, dtype=np.float64)
        if SHARED_FREQ.is_file():
            freq = np.sort(np.load(SHARED_FREQ).astype(np.float64))[::-1] + 1.0
            # the real rank/frequency curve, stretched over this table's rows
            weights = np.interp(ranks / rows, np.arange(1, freq.size + 1) / freq.size, freq)
        else:
            weights = ranks**-1.1
        self.p = weights / weights.sum()
        self.perm = np.random.default_rng(7).permutation(rows)
        self.rows = rows

    def draw(self, n: int) -> np.ndarray:
        return self.perm[self.rng.choice(self.rows, n, p=self.p)].astype(np.int64)


class _Table:
    rows = 0
    dim = 0


def _describe(http_get: Any) -> None:
    if _Table.rows:
        return
    info = http_get()
    _Table.rows, _Table.dim = int(info["rows"]), int(info["dim"])


class HttpJsonUser(FastHttpUser):
    """Native REST with JSON bodies: lookup, search by id, search by vector, score."""

    wait_time = between(0, 0.002)

    def on_start(self) -> None:
        _describe(lambda: self.client.get(f"/v1/tables/{TABLE}").json())
        self.ids = IdStream(_Table.rows, seed=id(self) % 2**32)
        rows = self.client.post(f"/v1/tables/{TABLE}/lookup", json={"ids": self.ids.draw(64).tolist()}).json()
        self.queries = np.array(rows["embeddings"], dtype=np.float32)

    @task(6)
    def lookup(self) -> None:
        self.client.post(f"/v1/tables/{TABLE}/lookup", json={"ids": self.ids.draw(BATCH).tolist()}, name="json lookup")

    @task(2)
    def search_by_id(self) -> None:
        body = {"query_ids": self.ids.draw(1).tolist(), "k": K, "oversample": 4}
        self.client.post(f"/v1/tables/{TABLE}/search", json=body, name="json search_by_id")

    @task(1)
    def search(self) -> None:
        q = self.queries[np.random.randint(len(self.queries))]
        self.client.post(f"/v1/tables/{TABLE}/search", json={"queries": [q.tolist()], "k": K}, name="json search")

    @task(1)
    def score(self) -> None:
        body = {"candidate_ids": [self.ids.draw(100).tolist()], "query_ids": self.ids.draw(1).tolist()}
        self.client.post(f"/v1/tables/{TABLE}/score", json=body, name="json score")


class HttpOctetUser(FastHttpUser):
    """Native REST lookups with little-endian int64 in, float32 out."""

    wait_time = between(0, 0.002)

    def on_start(self) -> None:
        _describe(lambda: self.client.get(f"/v1/tables/{TABLE}").json())
        self.ids = IdStream(_Table.rows, seed=id(self) % 2**32)

    @task
    def lookup(self) -> None:
        body = self.ids.draw(BATCH).astype("<i8").tobytes()
        with self.client.post(
            f"/v1/tables/{TABLE}/lookup",
            data=body,
            headers={"content-type": "application/octet-stream"},
            name="octet lookup",
            catch_response=True,
        ) as response:
            if len(response.content or b"") != BATCH * _Table.dim * 4:
                response.failure(f"expected {BATCH * _Table.dim * 4} bytes, got {len(response.content or b'')}")


class HttpOipUser(FastHttpUser):
    """Open Inference Protocol over HTTP with Triton's binary tensor extension."""

    wait_time = between(0, 0.002)

    def on_start(self) -> None:
        _describe(lambda: self.client.get(f"/v1/tables/{TABLE}").json())
        self.ids = IdStream(_Table.rows, seed=id(self) % 2**32)

    @task
    def infer(self) -> None:
        raw = self.ids.draw(BATCH).astype("<i8").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {"name": "ids", "shape": [BATCH], "datatype": "INT64", "parameters": {"binary_data_size": len(raw)}}
                ],
                "outputs": [{"name": "embeddings", "parameters": {"binary_data": True}}],
            }
        ).encode()
        headers = {"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"}
        self.client.post(f"/v2/models/{TABLE}/infer", data=header + raw, headers=headers, name="oip infer (binary)")


class GrpcUser(User):
    """Base of the gRPC users: a gevent-friendly channel; every call is reported to Locust."""

    abstract = True
    wait_time = between(0, 0.002)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        target = os.environ.get("EMBSERVE_LOAD_GRPC") or (self.host or "").replace("http://", "").replace(
            ":8000", ":8001"
        )
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.native = pb_grpc.EmbeddingServiceStub(self.channel)
        self.oip = ipb_grpc.GRPCInferenceServiceStub(self.channel)

    def call(self, name: str, method: Any, request: Any) -> Any:
        start = time.perf_counter()
        error: Exception | None = None
        response = None
        try:
            response = method(request, timeout=30)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            exception=error,
            context={},
        )
        return response

    def on_start(self) -> None:
        info = self.call("describe", self.native.DescribeTable, pb.DescribeTableRequest(table=TABLE))
        if info is not None:
            _Table.rows, _Table.dim = info.rows, info.dim
        self.ids = IdStream(max(_Table.rows, 1), seed=id(self) % 2**32)

    def on_stop(self) -> None:
        self.channel.close()


def _tensor(arr: np.ndarray) -> pb.Tensor:
    name = "int64" if arr.dtype.kind in "iu" else "float32"
    return pb.Tensor(
        dtype=name,
        shape=list(arr.shape),
        data=np.ascontiguousarray(arr, dtype="<i8" if name == "int64" else "<f4").tobytes(),
    )


class GrpcNativeUser(GrpcUser):
    @task(6)
    def lookup(self) -> None:
        self.call("grpc lookup", self.native.Lookup, pb.LookupRequest(table=TABLE, ids=_tensor(self.ids.draw(BATCH))))

    @task(2)
    def search_by_id(self) -> None:
        request = pb.SearchRequest(table=TABLE, query_ids=_tensor(self.ids.draw(1)), k=K, oversample=4)
        self.call("grpc search_by_id", self.native.Search, request)


class GrpcOipUser(GrpcUser):
    @task
    def infer(self) -> None:
        request = ipb.ModelInferRequest(model_name=TABLE)
        request.inputs.add(name="ids", datatype="INT64", shape=[BATCH])
        request.raw_input_contents.append(self.ids.draw(BATCH).astype("<i8").tobytes())
        self.call("grpc oip infer", self.oip.ModelInfer, request)


@events.quitting.add_listener
def _fail_on_errors(environment: Any, **_: Any) -> None:
    if environment.stats.total.fail_ratio > 0:
        environment.process_exit_code = 1
