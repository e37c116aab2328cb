"""pq: product quantization with ADC search and codeword inner-product tables (LISA-style).

A row is cut into M subspaces of d/M dims; each is replaced by the index of its nearest codeword
in that subspace's codebook C_m (K, d/M), K = 2**bits. Stored: codes (n, M) uint8 — or (n, M/2)
with two 4-bit codes a byte, low nibble first — codebooks (M, K, d/M) float32, and with `opq` an
orthogonal rotation R (d, d) applied to rows and queries before cutting.

Held in memory (derived at load): T_m = C_m C_m^T (M, K, K) float32. For stored rows a and b,
<x̂_a, x̂_b> = sum_m T_m[a_m, b_m] and |x̂_a - x̂_b|^2 = sum_m T_m[a_m,a_m] + T_m[b_m,b_m] - 2 T_m[a_m,b_m]
exactly (R is orthogonal), so id-to-id scoring and search by a stored id need no float math on rows:
row T_m[a_m, :] is the lookup table.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from runtime import training
from runtime.codecs import adc
from runtime.codecs.adc import LutQuery
from runtime.codecs.base import Codec, Option, Prepared, Progress, TrainedState, check_rotation
from runtime.errors import InvalidRequest
from runtime.kernels import fastscan, pqdecode, scan
from runtime.validation import check_flag

OPQ_FIRST_ITERATIONS = 40
"""Lloyd iterations of the codebooks trained in OPQ's first alternation, from k-means++ seeds.
With the refinement count below and 50 alternations (`opq_iterations`) this is Faiss OPQMatrix's
default schedule (niter_pq_0, niter_pq, niter). On 1M x 128, M = 16, 8 bits (1,024 queries) it
gave recall@10 0.588 against 0.557 for the 8 / 4 / 20 schedule used before, in about 2x the time."""
OPQ_REFINE_ITERATIONS = 4
"""Lloyd iterations of each later alternation, refining the previous alternation's codebooks."""


IP_TABLES_MAX = 256 << 20
"""The most bytes of codeword inner-product tables (subspaces x K x K float32, built at load) a pq
codec holds: 1,024 8-bit subspaces. A 2 MB artifact of one dimension a subspace asked for 539 MB."""


class PqCodec(adc.BlockedCodes, Codec):
    name = "pq"
    required_arrays = ("codes", "codebooks")
    optional_arrays = ("rotation",)
    row_arrays = ("codes",)
    options: ClassVar[tuple[Option, ...]] = (
        Option("subspaces", int, 16, "number of subspaces M (must divide d)"),
        Option("bits", int, 8, "bits a code, 8 or 4", choices=(8, 4)),
        Option("opq", bool, False, "learn an OPQ rotation"),
        Option("train_rows", int, 65536, "rows sampled for training"),
        Option("iterations", int, 25, "Lloyd iterations", quick=2),
        Option("opq_iterations", int, 50, "OPQ alternations", quick=1),
    )

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        # 0 iterations is meaningful, as in rq and shared: the k-means++ seeds kept as codebooks,
        # or with opq no alternation (the identity rotation)
        for key, least in (("subspaces", 1), ("train_rows", 1), ("iterations", 0), ("opq_iterations", 0)):
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                kind = "a positive integer" if least else "a non-negative integer"
                raise InvalidRequest(f"pq option {key} must be {kind}, got {value!r}")
            params[key] = int(value)
        m = params["subspaces"]
        if dim % m:
            raise InvalidRequest(f"pq subspaces={m} must divide the dimension {dim}")
        if params["bits"] not in (4, 8):
            raise InvalidRequest(f"pq bits must be 4 or 8, got {params['bits']!r}")
        if params["bits"] == 4 and m % 2:
            raise InvalidRequest(f"pq with bits=4 packs two codes a byte: subspaces must be even, got {m}")
        tables = m * (1 << params["bits"]) ** 2 * 4
        if tables > IP_TABLES_MAX:
            raise InvalidRequest(
                f"pq with {m} subspaces of {params['bits']} bits holds {tables} bytes of codeword inner-product "
                f"tables, over the {IP_TABLES_MAX} a table may: use fewer subspaces"
            )
        params["opq"] = check_flag(params["opq"], "pq option opq")
        return params

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        m, k = params["subspaces"], 1 << params["bits"]
        trained = m * k * (dim // m) * 4 + m * k * k * 4  # codebooks, inner-product tables
        trained += dim * dim * 4 if params["opq"] else 0
        if params["bits"] == 4:
            # two codes a byte; the fast-scan layout pads the rows to whole blocks
            held_rows = -(-rows // fastscan.BLOCK_ROWS) * fastscan.BLOCK_ROWS if fastscan.AVAILABLE else rows
            return trained + held_rows * (m // 2)
        return trained + rows * m

    # ---- training and encoding ------------------------------------------------------------------
    @classmethod
    def _train_codebooks(
        cls,
        sample: np.ndarray,
        params: dict[str, Any],
        rng: np.random.Generator,
        iterations: int,
        init: np.ndarray | None,
        progress: Progress | None,
    ) -> np.ndarray:
        return training.train_codebooks(
            sample, params["subspaces"], 1 << params["bits"], iterations, rng, init, progress
        )

    @staticmethod
    def _assign(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
        """x (n, d) float32 (rotated) -> codes (n, M) uint8, unpacked."""
        return training.encode(x, codebooks)

    @staticmethod
    def _reconstruct(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
        """codes (n, M) unpacked, codebooks (M, K, s) -> (n, M*s) float32, in the rotated space."""
        m = codebooks.shape[0]
        return codebooks[np.arange(m)[None, :], codes.astype(np.int64)].reshape(codes.shape[0], -1)

    @classmethod
    def _train(
        cls, sample: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        sample = training.sample_for_codewords(sample, params["train_rows"], 1 << params["bits"], "pq", rng)
        arrays: dict[str, np.ndarray] = {}
        if params["opq"]:
            # OPQ (non-parametric): alternate codebooks for fixed R, then R by Procrustes for fixed codes
            rotation = np.eye(sample.shape[1], dtype=np.float32)
            books = None
            for step in range(params["opq_iterations"]):
                rotated = sample @ rotation
                iterations = OPQ_REFINE_ITERATIONS if books is not None else OPQ_FIRST_ITERATIONS
                books = cls._train_codebooks(rotated, params, rng, iterations, books, None)
                approx = cls._reconstruct(cls._assign(rotated, books), books)
                rotation = training.procrustes(sample, approx)
                if progress is not None:
                    progress("opq", step + 1, params["opq_iterations"])
            arrays["rotation"] = rotation
            sample = sample @ rotation
        codebooks = cls._train_codebooks(sample, params, rng, params["iterations"], None, progress)
        arrays["codebooks"] = codebooks.astype(np.float32)
        return arrays

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        rotation = state.arrays.get("rotation")
        part = x if rotation is None else x @ rotation
        codes = cls._assign(np.ascontiguousarray(part, dtype=np.float32), state.arrays["codebooks"])
        if state.params["bits"] == 4:
            codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        return {"codes": codes}

    def check_arrays(self) -> str | None:
        m, bits = self.params["subspaces"], self.params["bits"]
        codes, books = self.arrays["codes"], self.arrays["codebooks"]
        width = m if bits == 8 else m // 2
        if codes.dtype != np.uint8 or codes.shape != (self.rows, width):
            return f"codes must be uint8 {(self.rows, width)}, got {codes.dtype} {codes.shape}"
        shape = (m, 1 << bits, self.dim // m)
        if books.dtype != np.float32 or books.shape != shape:
            return f"codebooks must be float32 {shape}, got {books.dtype} {books.shape}"
        return check_rotation(self.arrays.get("rotation"), self.dim, "opq", bool(self.params.get("opq")))

    def _prepare(self) -> None:
        books = self.arrays["codebooks"]
        tables = self.shared.get("ip_tables")
        if tables is None:
            tables = np.einsum("mks,mjs->mkj", books, books).astype(np.float32)
        self.derived["ip_tables"] = tables
        self._diag = np.ascontiguousarray(np.einsum("mkk->mk", tables))
        self._four_bit = self.params["bits"] == 4
        self._m = int(self.params["subspaces"])
        if self._four_bit:
            self._block_codes()

    def state_derived(self) -> dict[str, np.ndarray]:
        return {"ip_tables": self.derived["ip_tables"]}

    # ---- helpers ----------------------------------------------------------------------------------
    def unpacked_codes(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, M) int64 codes."""
        return scan.unpack_codes_numpy(self.packed_codes(ids), self._four_bit)

    def _luts(self, queries: np.ndarray, metric: str) -> np.ndarray:
        """queries (q, d) float32 -> (q, M, K) float32 LUTs; for l2 the negated squared distances."""
        rotation = self.arrays.get("rotation")
        if rotation is not None:
            queries = queries @ rotation
        rows = np.ascontiguousarray(queries, dtype=np.float32)
        dots = pqdecode.subspace_dots(rows, self.arrays["codebooks"])
        if metric == "ip":
            return dots
        parts = rows.reshape(rows.shape[0], self._m, -1)
        qn = np.einsum("qms,qms->qm", parts, parts)[:, :, None]
        return np.ascontiguousarray(-(qn - 2 * dots + self._diag[None]), dtype=np.float32)

    def _id_luts(self, query_ids: np.ndarray, metric: str) -> np.ndarray:
        """(q,) stored ids -> (q, M, K) float32 LUTs read from the codeword inner-product tables."""
        a = self.unpacked_codes(query_ids)
        rows = self.derived["ip_tables"][np.arange(self._m)[None, :], a]
        if metric == "ip":
            return np.ascontiguousarray(rows)
        own = self._diag[np.arange(self._m)[None, :], a][:, :, None]
        return np.ascontiguousarray(-(own + self._diag[None] - 2 * rows), dtype=np.float32)

    # ---- codec protocol ---------------------------------------------------------------------------
    def decode(self, ids: np.ndarray) -> np.ndarray:
        codes, rows_of = self._code_rows(ids)
        out = pqdecode.rows(codes, rows_of, self.arrays["codebooks"], self._four_bit, self.parallel_min_ids)
        return self._unrotate(out)

    def decode_bags(self, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
        if "rotation" in self.arrays:
            # rotating the pooled rows would be cheaper but rounds differently from rotating each
            # row; rotated tables' bags stay what they were
            return super().decode_bags(ids, offsets, mean)
        codes, rows_of = self._code_rows(ids)
        books = self.arrays["codebooks"]
        return pqdecode.bags(codes, rows_of, offsets, books, self._four_bit, mean, self.parallel_min_ids)

    def _code_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The codes to read ids (b,) from and the rows there: the stored codes themselves, or,
        where the fast-scan layout replaced them, the ids' codes gathered from it."""
        if "blocked_codes" not in self.derived:
            return self.arrays["codes"], ids
        return self.packed_codes(ids), np.arange(ids.shape[0], dtype=np.int64)

    def _unrotate(self, out: np.ndarray) -> np.ndarray:
        rotation = self.arrays.get("rotation")
        return out if rotation is None else np.ascontiguousarray(out @ rotation.T, dtype=np.float32)

    def prepare(self, metric: str, queries: np.ndarray | None = None, ids: np.ndarray | None = None) -> Prepared:
        # by a stored id, the query's rows of the inner-product tables are its lookup tables
        luts = self._luts(queries, metric) if queries is not None else self._id_luts(self._ids(ids), metric)
        return Prepared(metric, luts.shape[0], queries, LutQuery(luts, "key" if metric == "ip" else "negated"))

    @staticmethod
    def _ids(ids: np.ndarray | None) -> np.ndarray:
        if ids is None:
            raise InvalidRequest("prepare needs queries or ids")
        return ids

    def score(self, prepared: Prepared, candidates: np.ndarray) -> np.ndarray:
        query: LutQuery = prepared.data
        if "blocked_codes" in self.derived:
            # the candidates' codes gathered into a small row-major array, then scored in place
            rows = self.packed_codes(candidates.reshape(-1))
            local = np.arange(candidates.size, dtype=np.int64).reshape(candidates.shape)
            return adc.score_candidates(rows, local, query, self._four_bit)
        return adc.score_candidates(self.arrays["codes"], candidates, query, self._four_bit)
