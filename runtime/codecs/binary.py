"""binary: one sign bit a dimension, packed into uint64 words, plus one fp16 scale a row.

Bit j of word w is dimension 64w + j, set when the (optionally rotated) value is > 0; unused
bits of the last word are 0 in rows and queries alike, so they never add to a Hamming distance.
decode = scale * sign, with scale = mean |value| of the row (as L²Q-GCN). `rotate=True` applies a
seeded random orthogonal rotation to rows and queries first, which spreads variance over the bits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from runtime.codecs import adc
from runtime.codecs.adc import LutQuery
from runtime.codecs.base import Codec, Option, Prepared, Progress, TrainedState, check_rotation, scan_chunks
from runtime.codecs.fp16 import refuse_beyond_fp16, refuse_lost_in_fp16, rounding_drift
from runtime.errors import InvalidRequest
from runtime.kernels import scan
from runtime.validation import check_flag

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
    optional_arrays = ("rotation",)
    row_arrays = ("codes", "scales")
    metrics = ("hamming", "ip", "l2")
    rank_metric = "hamming"
    code_space_metrics = ("hamming",)
    options: ClassVar[tuple[Option, ...]] = (
        Option("rotate", bool, False, "random orthogonal rotation first (spreads variance over the bits)"),
    )

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        params["rotate"] = check_flag(params["rotate"], "rotate")
        return params

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        # codes, fp16 scales and their float32 copy; the rotation when asked for
        rotation = dim * dim * 4 if params["rotate"] else 0
        return rows * (-(-dim // 64) * 8 + 2 + 4) + rotation

    @classmethod
    def _train(
        cls, sample: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        return {"rotation": random_rotation(sample.shape[1], rng)} if params["rotate"] else {}

    @classmethod
    def refuse_unstorable(cls, x: np.ndarray) -> None:
        # the scales of x as it is; a rotation moves them little (it keeps each row's norm)
        cls._refuse_scales(np.abs(x).mean(axis=1))

    @classmethod
    def _refuse_scales(cls, scales: np.ndarray) -> None:
        """Each row's scale (n,) float32 is stored fp16."""
        refuse_beyond_fp16(scales[:, None], cls.name)
        refuse_lost_in_fp16(rounding_drift(scales), scales, cls.name, "mean absolute value")

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        rotation = state.arrays.get("rotation")
        if rotation is not None:
            x = x @ rotation
        scales = np.abs(x).mean(axis=1)
        cls._refuse_scales(scales)
        return {"codes": pack_signs(x), "scales": scales.astype(np.float16)}

    def check_arrays(self) -> str | None:
        words = -(-self.dim // 64)
        codes, scales = self.arrays["codes"], self.arrays["scales"]
        if codes.dtype != np.uint64 or codes.shape != (self.rows, words):
            return f"codes must be uint64 {(self.rows, words)}, got {codes.dtype} {codes.shape}"
        if scales.dtype != np.float16 or scales.shape != (self.rows,):
            return f"scales must be float16 {(self.rows,)}, got {scales.dtype} {scales.shape}"
        return check_rotation(self.arrays.get("rotation"), self.dim, "rotate", bool(self.params.get("rotate")))

    def check_values(self) -> str | None:
        used = self.dim % 64
        codes = self.arrays["codes"]
        if used and self.rows:
            # bits past dim in a row's last word: a Hamming distance would count them
            unused = ~np.uint64((1 << used) - 1)
            stray = np.flatnonzero(codes[:, -1] & unused)
            if stray.size:
                return f"row {int(stray[0])}'s code sets bits past dim {self.dim}"
        return super().check_values()

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

    def prepare(self, metric: str, queries: np.ndarray | None = None, ids: np.ndarray | None = None) -> Prepared:
        if metric == "hamming":
            # stored ids bring their own codes: code-to-code Hamming, no decoding
            words = self.query_codes(queries) if queries is not None else self.arrays["codes"][self._ids(ids)]
            return Prepared(metric, words.shape[0], queries, np.ascontiguousarray(words))
        vectors = queries if queries is not None else self.decode(self._ids(ids))
        # asymmetric: <q, scale * sign> = scale * sum of byte LUT entries
        scales = self.derived["scales_f32"]
        luts = self._byte_luts(vectors)
        if metric == "ip":
            query = LutQuery(luts, "key", row_mul=scales)
        else:
            mul, add = 2 * scales, -(scales * scales) * np.float32(self.dim)
            query = LutQuery(luts, "l2", row_mul=mul, row_add=add, query_norms=adc.l2_finish_norms(vectors))
        return Prepared(metric, vectors.shape[0], vectors, query)

    @staticmethod
    def _ids(ids: np.ndarray | None) -> np.ndarray:
        if ids is None:
            raise InvalidRequest("prepare needs queries or ids")
        return ids

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        codes = self.arrays["codes"]
        if prepared.metric == "hamming":
            keys, ids = scan.hamming_topk(codes, prepared.data, k, scan_chunks(self.rows))
            return ids, -keys
        return adc.scan_topk(codes.view(np.uint8), prepared.data, k, scan_chunks(self.rows), False)

    def score(self, prepared: Prepared, candidates: np.ndarray) -> np.ndarray:
        if prepared.metric != "hamming":
            return super().score(prepared, candidates)
        return scan.hamming_distances(self.arrays["codes"], candidates, prepared.data)
