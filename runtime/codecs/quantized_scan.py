"""Search for codecs that store rows one by one (int8 / int4 row-wise, fp16): the fused asymmetric
scan of `runtime.kernels.rowscan`, instead of decoding blocks to float32 for a matrix product."""

from __future__ import annotations

import numpy as np

from runtime.codecs.base import Codec, keys_to_scores, scan_chunks
from runtime.kernels import rowscan


def quantized_search(
    codec: Codec, stored: np.ndarray, bits: int, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """stored: fused rows (n, P + 4) uint8 for bits 8 / 4, fp16 bits (n, d) uint16 for bits 16.
    -> ids (q, k) int64, scores (q, k) float32, best first. For l2, |x|^2 of every decoded row
    is computed on the first l2 search and held (4 bytes a row)."""
    norms = np.empty(0, dtype=np.float32)
    if metric == "l2":
        norms = codec.derived.get("row_norms", norms)
        if norms.shape[0] != codec.rows:
            norms = codec.derived["row_norms"] = rowscan.decoded_norms(stored, bits, codec.dim)
    keys, ids = rowscan.quantized_topk(stored, bits, queries, norms, k, scan_chunks(codec.rows))
    return ids, keys_to_scores(keys, queries, metric)
