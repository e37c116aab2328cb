"""Run in a subprocess (tritonclient's protobuf module clashes with ours in one process): drives a
group model of a live server with the real tritonclient over HTTP (binary and JSON) and gRPC, and
writes what it got to an .npz file.

usage: python triton_group_check.py HTTP_URL GRPC_URL MODEL IN.npz OUT.npz
IN.npz holds, per feature f: f__values (int64), f__lengths (int32), optionally f__weights (float32).
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException


def main(http_url: str, grpc_url: str, model: str, given: str, out: str) -> None:
    arrays = dict(np.load(given))
    results: dict[str, np.ndarray] = {}
    for label, module, url in (("http", thttp, http_url), ("grpc", tgrpc, grpc_url)):
        client = module.InferenceServerClient(url)
        assert client.is_model_ready(model), f"{label}: {model} not ready"
        meta = client.get_model_metadata(model)
        inputs_meta = meta["inputs"] if isinstance(meta, dict) else meta.inputs
        names = [i["name"] if isinstance(i, dict) else i.name for i in inputs_meta]
        results[f"{label}_input_names"] = np.array(names)
        for binary in (True, False) if label == "http" else (True,):
            inputs = []
            for name, arr in arrays.items():
                inp = module.InferInput(
                    name,
                    list(arr.shape),
                    "INT32" if arr.dtype == np.int32 else ("FP32" if arr.dtype == np.float32 else "INT64"),
                )
                if label == "http":
                    inp.set_data_from_numpy(arr, binary_data=binary)
                else:
                    inp.set_data_from_numpy(arr)
                inputs.append(inp)
            if label == "http":
                outputs = [thttp.InferRequestedOutput("embeddings", binary_data=binary)]
            else:
                outputs = [tgrpc.InferRequestedOutput("embeddings")]
            res = client.infer(model, inputs, outputs=outputs)
            results[f"{label}_{'binary' if binary else 'json'}"] = res.as_numpy("embeddings")
            results[f"{label}_version"] = np.array(
                res.get_response()["model_version"] if label == "http" else res.get_response().model_version
            )
        # a negative bag size is refused naming the feature
        first = next(n for n in arrays if n.endswith("__lengths"))
        bad_inputs = []
        for name, arr in arrays.items():
            if name == first:
                arr = arr.copy()
                arr[0] = -1
            dtype = "INT32" if arr.dtype == np.int32 else ("FP32" if arr.dtype == np.float32 else "INT64")
            inp = module.InferInput(name, list(arr.shape), dtype)
            inp.set_data_from_numpy(arr)
            bad_inputs.append(inp)
        try:
            client.infer(model, bad_inputs)
            raise SystemExit(f"{label}: a negative length was accepted")
        except InferenceServerException as exc:
            feature = first.removesuffix("__lengths")
            if f"feature {feature!r}" not in str(exc) or "negative" not in str(exc):
                raise SystemExit(f"{label}: error does not name the feature: {exc}") from exc
    np.savez(out, **results)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(*sys.argv[1:6])
