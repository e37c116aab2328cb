"""Error rendering is written once (service/errors.py): every transport sends the statuses and the
public text `render_error` gives, so one failure reads the same over REST, its octet-stream fast
path, gRPC and the Open Inference Protocol on both."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from runtime.errors import ArtifactCorrupt, ArtifactError, InvalidRequest, Overloaded, TableNotFound
from service.errors import (
    ERROR_STATUS,
    INTERNAL_ERROR,
    NotAppliedEverywhere,
    PublicError,
    not_applied_everywhere,
    render_error,
)
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.generated import oip_v2_pb2 as ipb
from service.rpc.generated import oip_v2_pb2_grpc as ipb_grpc
from service.rpc.servicers import array_to_tensor
from tests.service.conftest import Served


def test_typed_errors_render_to_both_statuses_and_the_public_text(tmp_path: Path) -> None:
    assert render_error(TableNotFound("x"), None) == PublicError(404, grpc.StatusCode.NOT_FOUND, "table 'x' not found")
    assert render_error(Overloaded("busy"), None) == PublicError(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    # a subclass not in the table takes its parent's statuses; paths below the root come out relative
    assert ArtifactCorrupt not in ERROR_STATUS
    corrupt = render_error(ArtifactCorrupt(f"{tmp_path}/items/v2/rows.npy fails its sha256 check"), tmp_path)
    assert corrupt == PublicError(*ERROR_STATUS[ArtifactError], "items/v2/rows.npy fails its sha256 check")
    assert render_error(not_applied_everywhere(["worker 1: timed out"]), None) == PublicError(
        502, grpc.StatusCode.UNAVAILABLE, "applied by this worker but not by every worker: worker 1: timed out"
    )
    assert isinstance(not_applied_everywhere([]), NotAppliedEverywhere)
    # an untyped exception is a bug: nothing of its text reaches the client
    leaked = render_error(ValueError(f"{tmp_path}/secret"), tmp_path)
    assert leaked is INTERNAL_ERROR and leaked.http_status == 500 and "secret" not in leaked.message
    assert orjson.loads(render_error(InvalidRequest("ids are required"), None).json_body()) == {
        "error": "ids are required"
    }


def _http_error(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.status_code, response.json()["error"]


def _grpc_error(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code(), err.value.details()


@pytest.mark.parametrize(
    ("table", "ids", "expected"),
    [
        ("nope", np.array([1, 2], np.int64), render_error(TableNotFound("nope"), None)),
        ("items", np.array([1, 99999], np.int64), None),  # the runtime's IdOutOfRange, whatever its text
    ],
)
def test_one_failure_reads_the_same_on_every_transport(
    served: Served, table: str, ids: np.ndarray, expected: PublicError | None
) -> None:
    http = served.server.http
    over_json = _http_error(httpx.post(f"{http}/v1/tables/{table}/lookup", json={"ids": ids.tolist()}, timeout=30))
    over_octet = _http_error(
        httpx.post(
            f"{http}/v1/tables/{table}/lookup",
            content=ids.astype("<i8").tobytes(),
            headers={"content-type": "application/octet-stream"},
            timeout=30,
        )
    )
    oip_body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [ids.size], "data": ids.tolist()}]}
    over_oip_http = _http_error(httpx.post(f"{http}/v2/models/{table}/infer", json=oip_body, timeout=30))
    with grpc.insecure_channel(served.server.grpc) as channel:
        native = pb_grpc.EmbeddingServiceStub(channel)
        over_grpc = _grpc_error(lambda: native.Lookup(pb.LookupRequest(table=table, ids=array_to_tensor(ids))))
        inference = ipb_grpc.GRPCInferenceServiceStub(channel)
        infer = ipb.ModelInferRequest(model_name=table)
        infer.inputs.add(name="ids", datatype="INT64", shape=[ids.size])
        infer.raw_input_contents.append(ids.astype("<i8").tobytes())
        over_oip_grpc = _grpc_error(lambda: inference.ModelInfer(infer))
    status, message = over_json
    assert over_octet == over_oip_http == (status, message)
    assert over_grpc == over_oip_grpc
    code = over_grpc[0]
    assert over_grpc[1] == message
    if expected is not None:
        assert (status, code, message) == (expected.http_status, expected.grpc_code, expected.message)
    else:
        assert (status, code) == (400, grpc.StatusCode.OUT_OF_RANGE) and "99999" in message
