"""Run in a subprocess (tritonclient's protobuf module clashes with ours in one process):
calls a live server with the real tritonclient and writes what it got to an .npz file.

usage: python triton_client_check.py HTTP_URL GRPC_URL OUT.npz
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException


def main(http_url: str, grpc_url: str, out: str) -> None:
    results: dict[str, np.ndarray] = {}
    ids = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    queries = np.ones((2, 32), dtype=np.float32)
    for label, module, url in (("http", thttp, http_url), ("grpc", tgrpc, grpc_url)):
        client = module.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("items")
        meta = client.get_model_metadata("items")
        name = meta["name"] if isinstance(meta, dict) else meta.name
        assert name == "items"
        config = client.get_model_config("items")
        max_batch = config["max_batch_size"] if isinstance(config, dict) else config.config.max_batch_size
        assert max_batch == 0
        for binary in (True, False) if label == "http" else (True,):
            inp = module.InferInput("ids", list(ids.shape), "INT64")
            if label == "http":
                inp.set_data_from_numpy(ids, binary_data=binary)
                outputs = [thttp.InferRequestedOutput("embeddings", binary_data=binary)]
            else:
                inp.set_data_from_numpy(ids)
                outputs = [tgrpc.InferRequestedOutput("embeddings")]
            res = client.infer("items", [inp], outputs=outputs)
            results[f"{label}_lookup_{'binary' if binary else 'json'}"] = res.as_numpy("embeddings")
        q = module.InferInput("queries", list(queries.shape), "FP32")
        q.set_data_from_numpy(queries)
        res = client.infer("items.search", [q], parameters={"k": 6, "oversample": 4})
        results[f"{label}_search_ids"] = res.as_numpy("ids")
        results[f"{label}_search_scores"] = res.as_numpy("scores")
        bad = module.InferInput("ids", [1], "INT64")
        bad.set_data_from_numpy(np.array([999999], dtype=np.int64))
        try:
            client.infer("items", [bad])
            raise SystemExit(f"{label}: out-of-range id was accepted")
        except InferenceServerException as exc:
            if "999999" not in str(exc):
                raise SystemExit(f"{label}: error does not name the id: {exc}") from exc
        try:
            client.get_model_metadata("no-such-model")
            raise SystemExit(f"{label}: unknown model was accepted")
        except InferenceServerException:
            pass
    np.savez(out, **results)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(*sys.argv[1:4])
