"""Search for codecs that store rows one by one (int8 / int4 / int2 row-wise, fp16, fp32): the
fused asymmetric scan of `runtime.kernels.rowscan`, instead of decoding blocks to float32 for a
matrix product."""

from __future__ import annotations

import numpy as np

from runtime.codecs.base import Codec, keys_to_scores, scan_chunks
from runtime.kernels import rowscan


def quantized_search(
    codec: Codec, stored: np.ndarray, bits: int, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """stored: fused rows (n, P + 4) uint8 for bits 8 / 4 / 2, fp16 bits (n, d) uint16 for bits 16,
    float32 bits (n, d) uint32 for bits 32.
    -> ids (q, k) int64, scores (q, k) float32, best first."""
    keys, ids = rowscan.quantized_topk(stored, bits, queries, metric == "l2", k, scan_chunks(codec.rows))
    return ids, keys_to_scores(keys, queries, metric)
