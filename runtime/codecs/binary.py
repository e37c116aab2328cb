"""binary: one sign bit a dimension, packed into uint64 words, plus one fp16 scale a row.

Bit j of word w is dimension 64w + j, set when the (optionally rotated) value is > 0; unused
bits of the last word are 0 in rows and queries alike, so they never add to a Hamming distance.
decode = scale * sign, with scale = mean |value| of the row (as L²Q-GCN). `rotate=True` applies a
seeded random orthogonal rotation to rows and queries first, which spreads variance over the bits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from runtime.codecs.base import Codec, Progress, keys_to_scores, scan_chunks
from runtime.codecs.fp16 import refuse_beyond_fp16
from runtime.errors import InvalidRequest
from runtime.kernels import scan

# (256, 8) float32: bit j of byte value v as a sign, +1 when set
_BYTE_SIGNS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") > 0, 1.0, -1.0
).astype(np.float32)


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal (dim, dim) float32 matrix."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """x (n, d) float32 -> (n, ceil(d/64)) uint64, bit set where x > 0."""
    n, dim = x.shape
    words = -(-dim // 64)
    bits = np.zeros((n, words * 64), dtype=bool)
    bits[:, :dim] = x > 0
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64, copy=False).reshape(n, words)


class BinaryCodec(Codec):
    name = "binary"
    required_arrays = ("codes", "scales")
    metrics = ("hamming", "ip", "l2")
    options: ClassVar[dict[str, Any]] = {"rotate": False}

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        if not isinstance(params["rotate"], bool):
            raise InvalidRequest(f"rotate must be true or false, got {params['rotate']!r}")
        return params

    @classmethod
    def _encode(
        cls, x: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        if params["rotate"]:
            arrays["rotation"] = random_rotation(x.shape[1], rng)
            x = x @ arrays["rotation"]
        scales = np.abs(x).mean(axis=1, keepdims=True)
        refuse_beyond_fp16(scales, cls.name)
        arrays["codes"] = pack_signs(x)
        arrays["scales"] = scales[:, 0].astype(np.float16)
        if progress is not None:
            progress("encode", x.shape[0], x.shape[0])
        return arrays

    def check_arrays(self) -> str | None:
        words = -(-self.dim // 64)
        codes, scales = self.arrays["codes"], self.arrays["scales"]
        if codes.dtype != np.uint64 or codes.shape != (self.rows, words):
            return f"codes must be uint64 {(self.rows, words)}, got {codes.dtype} {codes.shape}"
        if scales.dtype != np.float16 or scales.shape != (self.rows,):
            return f"scales must be float16 {(self.rows,)}, got {scales.dtype} {scales.shape}"
        if self.params.get("rotate") and self.arrays.get("rotation", np.empty(0)).shape != (self.dim, self.dim):
            return "rotate=true but the rotation array is missing or misshapen"
        return None

    def _prepare(self) -> None:
        self.derived["scales_f32"] = self.arrays["scales"].astype(np.float32)

    def _rotate(self, queries: np.ndarray) -> np.ndarray:
        rotation = self.arrays.get("rotation")
        return queries if rotation is None else np.ascontiguousarray(queries @ rotation, dtype=np.float32)

    def query_codes(self, queries: np.ndarray) -> np.ndarray:
        """queries (q, dim) float32 -> (q, W) uint64 sign codes."""
        return pack_signs(self._rotate(queries))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(self.arrays["codes"][ids]).view(np.uint8)
        bits = np.unpackbits(raw, axis=1, bitorder="little")[:, : self.dim]
        out = np.where(bits > 0, np.float32(1), np.float32(-1)) * self.derived["scales_f32"][ids, None]
        rotation = self.arrays.get("rotation")
        return (out if rotation is None else out @ rotation.T).astype(np.float32)

    def _byte_luts(self, queries: np.ndarray) -> np.ndarray:
        """(q, 8W, 256) float32: LUT[t, v] = sum over the 8 dims of byte t of q_j * sign_j(v)."""
        rotated = self._rotate(queries)
        padded = np.zeros((queries.shape[0], self.arrays["codes"].shape[1] * 64), dtype=np.float32)
        padded[:, : self.dim] = rotated
        return np.ascontiguousarray(padded.reshape(queries.shape[0], -1, 8) @ _BYTE_SIGNS.T)

    def search(self, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        codes = self.arrays["codes"]
        if metric == "hamming":
            keys, ids = scan.hamming_topk(codes, self.query_codes(queries), k, scan_chunks(self.rows, per_thread=1))
            return ids, -keys
        # asymmetric: <q, scale * sign> = scale * sum of byte LUT entries
        scales = self.derived["scales_f32"]
        if metric == "ip":
            mul, add = scales, np.empty(0, np.float32)
        else:
            mul, add = 2 * scales, -(scales * scales) * np.float32(self.dim)
        keys, ids = scan.adc_topk(
            codes.view(np.uint8), self._byte_luts(queries), mul, add, k, scan_chunks(self.rows), False
        )
        return ids, keys_to_scores(keys, queries, metric)

    def search_by_id(self, query_ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        if metric != "hamming":
            return super().search_by_id(query_ids, k, metric)
        codes = self.arrays["codes"]
        keys, ids = scan.hamming_topk(
            codes, np.ascontiguousarray(codes[query_ids]), k, scan_chunks(self.rows, per_thread=1)
        )
        return ids, -keys

    def score(self, candidates: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
        if metric != "hamming":
            return super().score(candidates, queries, metric)
        return scan.hamming_distances(self.arrays["codes"], candidates, self.query_codes(queries))

    def score_by_id(self, candidates: np.ndarray, query_ids: np.ndarray, metric: str) -> np.ndarray:
        if metric != "hamming":
            return super().score_by_id(candidates, query_ids, metric)
        codes = self.arrays["codes"]
        return scan.hamming_distances(codes, candidates, np.ascontiguousarray(codes[query_ids]))
