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
from runtime.artifact import release_pages
from runtime.codecs.base import Codec, Progress, scan_chunks
from runtime.errors import InvalidRequest
from runtime.kernels import fastscan, scan


class PqCodec(Codec):
    name = "pq"
    required_arrays = ("codes", "codebooks")
    options: ClassVar[dict[str, Any]] = {
        "subspaces": 16,
        "bits": 8,
        "opq": False,
        "train_rows": 65536,
        "iterations": 25,
        "opq_iterations": 20,
    }

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        for key in ("subspaces", "train_rows", "iterations", "opq_iterations"):
            value = params[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < (0 if "iter" in key else 1)
            ):
                raise InvalidRequest(f"pq option {key} must be a positive integer, got {value!r}")
            params[key] = int(value)
        m = params["subspaces"]
        if dim % m:
            raise InvalidRequest(f"pq subspaces={m} must divide the dimension {dim}")
        if params["bits"] not in (4, 8):
            raise InvalidRequest(f"pq bits must be 4 or 8, got {params['bits']!r}")
        if params["bits"] == 4 and m % 2:
            raise InvalidRequest(f"pq with bits=4 packs two codes a byte: subspaces must be even, got {m}")
        if not isinstance(params["opq"], bool):
            raise InvalidRequest(f"pq option opq must be true or false, got {params['opq']!r}")
        return params

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
    def _encode(
        cls, x: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        n = x.shape[0]
        take = min(n, params["train_rows"])
        sample = x[np.sort(rng.choice(n, take, replace=False))] if take < n else x
        arrays: dict[str, np.ndarray] = {}
        rotation = None
        if params["opq"]:
            # OPQ (non-parametric): alternate codebooks for fixed R, then R by Procrustes for fixed codes
            rotation = np.eye(x.shape[1], dtype=np.float32)
            books = None
            for step in range(params["opq_iterations"]):
                rotated = sample @ rotation
                books = cls._train_codebooks(rotated, params, rng, 4 if books is not None else 8, books, None)
                approx = cls._reconstruct(cls._assign(rotated, books), books)
                rotation = training.procrustes(sample, approx)
                if progress is not None:
                    progress("opq", step + 1, params["opq_iterations"])
            arrays["rotation"] = rotation
            sample = sample @ rotation
        codebooks = cls._train_codebooks(sample, params, rng, params["iterations"], None, progress)
        codes = training.encode(x, codebooks, rotation, progress)
        if params["bits"] == 4:
            codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        arrays["codes"] = codes
        arrays["codebooks"] = codebooks.astype(np.float32)
        return arrays

    def check_arrays(self) -> str | None:
        m, bits = self.params["subspaces"], self.params["bits"]
        codes, books = self.arrays["codes"], self.arrays["codebooks"]
        width = m if bits == 8 else m // 2
        if codes.dtype != np.uint8 or codes.shape != (self.rows, width):
            return f"codes must be uint8 {(self.rows, width)}, got {codes.dtype} {codes.shape}"
        shape = (m, 1 << bits, self.dim // m)
        if books.dtype != np.float32 or books.shape != shape:
            return f"codebooks must be float32 {shape}, got {books.dtype} {books.shape}"
        if self.params.get("opq") and self.arrays.get("rotation", np.empty(0)).shape != (self.dim, self.dim):
            return "opq=true but the rotation array is missing or misshapen"
        return None

    def _prepare(self) -> None:
        books = self.arrays["codebooks"]
        tables = np.einsum("mks,mjs->mkj", books, books).astype(np.float32)
        self.derived["ip_tables"] = tables
        self._diag = np.ascontiguousarray(np.einsum("mkk->mk", tables))
        self._four_bit = self.params["bits"] == 4
        self._m = int(self.params["subspaces"])
        if self._four_bit and fastscan.AVAILABLE:
            # 4-bit scans read the blocked layout only; the row-major array stays the persisted form
            self.derived["blocked_codes"] = fastscan.blocked_layout(self.arrays["codes"])
            release_pages(self.arrays["codes"])

    def held_arrays(self) -> dict[str, np.ndarray]:
        held = super().held_arrays()
        if "blocked_codes" in held:
            del held["codes"]
        return held

    # ---- helpers ----------------------------------------------------------------------------------
    def packed_codes(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, M) or, for 4-bit, (b, M/2) uint8 codes as stored."""
        blocked = self.derived.get("blocked_codes")
        return self.arrays["codes"][ids] if blocked is None else fastscan.row_codes(blocked, ids)

    def unpacked_codes(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, M) int64 codes."""
        return scan.unpack_codes_numpy(self.packed_codes(ids), self._four_bit)

    def _luts(self, queries: np.ndarray, metric: str) -> np.ndarray:
        """queries (q, d) float32 -> (q, M, K) float32 LUTs; for l2 the negated squared distances."""
        rotation = self.arrays.get("rotation")
        if rotation is not None:
            queries = queries @ rotation
        books = self.arrays["codebooks"]
        parts = queries.reshape(queries.shape[0], self._m, -1).astype(np.float32)
        dots = np.einsum("qms,mks->qmk", parts, books)
        if metric == "ip":
            return np.ascontiguousarray(dots, dtype=np.float32)
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

    def _scan(self, luts: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        blocked = self.derived.get("blocked_codes")
        if blocked is not None:
            tables, bias, scale, slack = fastscan.quantize_luts(luts)
            # one chunk a thread: every chunk fills its own heap, and at this scan speed the
            # heap pushes are a large share of the time
            keys, ids = fastscan.fastscan_topk(
                blocked,
                tables,
                luts,
                bias,
                scale,
                slack,
                self.rows,
                k,
                scan_chunks(self.rows, per_thread=1),
            )
        else:
            empty = np.empty(0, np.float32)
            keys, ids = scan.adc_topk(
                self.arrays["codes"], luts, empty, empty, k, scan_chunks(self.rows), self._four_bit
            )
        return ids, (keys if metric == "ip" else -keys)

    # ---- codec protocol ---------------------------------------------------------------------------
    def decode(self, ids: np.ndarray) -> np.ndarray:
        out = self._reconstruct(self.unpacked_codes(ids), self.arrays["codebooks"])
        rotation = self.arrays.get("rotation")
        return np.ascontiguousarray(out if rotation is None else out @ rotation.T, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return self._scan(self._luts(queries, metric), k, metric)

    def search_by_id(self, query_ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return self._scan(self._id_luts(query_ids, metric), k, metric)

    def _candidate_sums(self, candidates: np.ndarray, luts: np.ndarray) -> np.ndarray:
        """candidates (q, c) int64, luts (q, M, K) float32 -> (q, c) float32 sums of LUT entries."""
        if "blocked_codes" in self.derived:
            # the candidates' codes gathered into a small row-major array, then scored in place
            rows = self.packed_codes(candidates.reshape(-1))
            local = np.arange(candidates.size, dtype=np.int64).reshape(candidates.shape)
            return scan.adc_candidates(rows, local, luts, self._four_bit)
        return scan.adc_candidates(self.arrays["codes"], candidates, luts, self._four_bit)

    def score(self, candidates: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
        sums = self._candidate_sums(candidates, self._luts(queries, metric))
        return sums if metric == "ip" else -sums

    def score_by_id(self, candidates: np.ndarray, query_ids: np.ndarray, metric: str) -> np.ndarray:
        # the query's rows of the inner-product tables are its lookup tables (M·K floats, in L1),
        # then ADC: never a random read into the (M, K, K) tables per candidate
        sums = self._candidate_sums(candidates, self._id_luts(query_ids, metric))
        return sums if metric == "ip" else -sums
