"""rq: residual (additive) quantization with ADC search and cross-codebook inner-product tables.

A row x is approximated by x̂ = sum_m C_m[a_m] over M codebooks C_m (K, d) in the full dimension,
K = 2**bits. Training is greedy, stage by stage: C_m is k-means (over a growing number of principal
axes, as Faiss's progressive-dimension clustering) on the residuals of the beam entries stages < m
leave, then refined (`refine` rounds, 2 by default, of exact least squares over one codebook at a time,
the others fixed, each round followed by a fresh encoding). When the training sample is drawn from
more rows than it holds, a round is kept only if it lowers the error of rows outside the sample: on a
sample small against M K d codeword floats, least squares fits the sample and loses on the rest.
Encoding is a beam search over stages
(`beam` partial codes a row kept; see `runtime.kernels.additive`).

Stored per row: codes (n, W) uint8 = the M codes, then the squared reconstruction norm |x̂|^2
quantized to 8 bits, uniform over [lo, hi] = `norm_range` (the min and max over the training rows,
as Faiss's ST_norm_qint8). 8-bit codes: W = M + 1. 4-bit codes: two a byte, low nibble first, the
norm level split into a low and a high nibble: W = (M + 2) / 2. The norm bits are codes like the
others, looked up in their own tables, so scans are PQ's ADC (4-bit: PQ's fast scan) over W bytes:
    ip:  key = sum_m <q, C_m[a_m]>                   (the norm tables are zero)
    l2:  key = sum_m 2 <q, C_m[a_m]> - |x̂|^2_quantized,   distance = |q|^2 - key.

Held in memory (derived at load) when M^2 K^2 float32 entries fit `table_limit`: the LISA tables
T[i, j, a, b] = <C_i[a], C_j[b]>. The inner product of stored rows a and b is sum_i sum_j
T[i, j, a_i, b_j] (codebooks are not orthogonal: the cross terms stay), so a stored id's lookup
tables are LUT_j[k] = sum_i T[i, j, a_i, k] with no float math on rows; beyond the limit the id is
decoded and its tables computed as for a query vector.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numba
import numpy as np

from runtime.codecs import adc
from runtime.codecs.adc import LutQuery
from runtime.codecs.base import Codec, Option, Prepared, Progress, TrainedState
from runtime.errors import InvalidRequest
from runtime.kernels import additive, fastscan, scan
from runtime.kernels.kmeans import centroid_sums, codeword_norms, nearest_codeword_into
from runtime.training import MAX_POINTS_PER_CENTROID, random_rows
from runtime.validation import parse_bytes, unusable_value

ENCODE_BLOCK = 4096
"""Rows a beam search advances at once: their (rows, beam, K) products stay a few MiB."""
ASSIGN_BLOCK = 2048
"""Rows a k-means assignment multiplies at once: their (rows, K) products stay in L2 for the argmin
(a block of 16384 rows wrote and re-read 16 MiB from memory, about half the training time)."""
NARROW = 32
"""Below this many dimensions a k-means assignment is PQ's distance + argmin kernel
(`kmeans.nearest_codeword_into`), not a matrix product: the products' (n, K) output would cost more
memory traffic than the arithmetic."""
NORM_LEVELS = 255
VALIDATION_ROWS = 2048
"""Rows outside the training sample (at most; an eighth of the sample if that is more) that judge
each refinement round."""


# ---- training and encoding (numpy GEMMs around the kernels) -------------------------------------
def nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """points (n, d) float32, centroids (K, d) float32 -> assign (n,) int64, squared distance
    (n,) float32 (lowest index among ties), by |p|^2 - 2 <p, c> + |c|^2: `nearest_codeword_into` for
    narrow points, else one matrix product a block of rows."""
    n = points.shape[0]
    assign = np.empty(n, np.int64)
    keys = np.empty(n, np.float32)
    neg2_t = np.ascontiguousarray(-2 * centroids.T, dtype=np.float32)
    cn = codeword_norms(centroids)
    if points.shape[1] < NARROW:
        # the kernel is single-threaded (nogil): one row slice a numba thread
        workers = max(1, min(numba.get_num_threads(), -(-n // ASSIGN_BLOCK)))
        bounds = np.linspace(0, n, workers + 1).astype(np.int64)

        def part(w: int) -> None:
            nearest_codeword_into(points, neg2_t, cn, int(bounds[w]), int(bounds[w + 1]), assign, keys)

        if workers == 1:
            part(0)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(part, range(workers)))
    else:
        for start in range(0, n, ASSIGN_BLOCK):
            block = points[start : start + ASSIGN_BLOCK]
            d = block @ neg2_t
            d += cn
            a = np.argmin(d, axis=1)
            assign[start : start + block.shape[0]] = a
            keys[start : start + block.shape[0]] = d[np.arange(a.size), a]
    return assign, np.maximum(keys + np.einsum("nd,nd->n", points, points), 0)


def kmeans(points: np.ndarray, ncentroids: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """points (n, d) float32, n >= ncentroids -> centroids (ncentroids, d) float32. Seeds are
    distinct random points; an emptied cluster is re-seeded with the worst-served point."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    return lloyd(points, points[np.sort(rng.choice(points.shape[0], ncentroids, replace=False))], iterations)


def lloyd(points: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd iterations from centroids (K, d) float32 on points (n, d) float32; an emptied cluster
    is re-seeded with the worst-served point. Stops once an assignment repeats the last one (the
    centroids would not move)."""
    centroids = np.array(centroids, dtype=np.float32)
    ncentroids = centroids.shape[0]
    previous = np.empty(0, np.int64)
    for _ in range(iterations):
        assign, dist = nearest(points, centroids)
        if np.array_equal(assign, previous):
            break
        previous = assign
        sums, counts = centroid_sums(points, assign, ncentroids)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if empty.size:
            centroids[empty] = points[np.argsort(-dist, kind="stable")[: empty.size]]
    return centroids


def progressive_kmeans(
    points: np.ndarray, ncentroids: int, iterations: int, rng: np.random.Generator, steps: int = 10
) -> np.ndarray:
    """k-means in the points' principal axes over a growing number of them, d^(s/steps) for
    s = 1..steps, each step seeded with the last one's centroids (zero in the new axes): the
    codewords fit the directions of most variance first, which generalizes better from a small
    training sample than full-dimension k-means does (Faiss trains RQ stages the same way).
    points (n, d) float32 -> (ncentroids, d) float32."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    dim = points.shape[1]
    # the principal axes need no float64 sums (a float32 product is a fifth of the time)
    gram = (points.T @ points).astype(np.float64)
    _, vectors = np.linalg.eigh(gram)
    basis = np.ascontiguousarray(vectors[:, ::-1], dtype=np.float32)
    rotated = np.ascontiguousarray(points @ basis)
    centroids = np.zeros((ncentroids, 0), np.float32)
    for step in range(1, steps + 1):
        width = dim if step == steps else max(1, min(dim, int(dim ** (step / steps))))
        if width <= centroids.shape[1]:
            continue
        part = np.ascontiguousarray(rotated[:, :width])
        if centroids.shape[1] == 0:
            seed = part[np.sort(rng.choice(part.shape[0], ncentroids, replace=False))]
        else:
            seed = np.zeros((ncentroids, width), np.float32)
            seed[:, : centroids.shape[1]] = centroids
        centroids = lloyd(part, seed, iterations)
    return np.ascontiguousarray(centroids @ basis.T, dtype=np.float32)


def beam_encode(x: np.ndarray, codebooks: np.ndarray, beam: int) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) float32, codebooks (M, K, d) float32 -> codes (n, M) uint8 (the best path of the
    beam search), residuals (n, d) float32 = x - x̂."""
    n, dim = x.shape
    nbooks = codebooks.shape[0]
    code_norms = np.einsum("mkd,mkd->mk", codebooks, codebooks).astype(np.float32)
    codes = np.empty((n, nbooks), np.uint8)
    residual = np.empty((n, dim), np.float32)
    for start in range(0, n, ENCODE_BLOCK):
        block = np.ascontiguousarray(x[start : start + ENCODE_BLOCK], dtype=np.float32)
        res = block[:, None, :].copy()
        paths = np.empty((block.shape[0], 1, 0), np.uint8)
        for m in range(nbooks):
            rows, width = res.shape[0], res.shape[1]
            flat = res.reshape(rows * width, dim)
            dots = (flat @ codebooks[m].T).reshape(rows, width, -1)
            norms = np.einsum("nd,nd->n", flat, flat).reshape(rows, width)
            res, paths, _ = additive.beam_advance(res, norms, dots, codebooks[m], code_norms[m], paths, beam)
        codes[start : start + block.shape[0]] = paths[:, 0, :]
        residual[start : start + block.shape[0]] = res[:, 0, :]
    return codes, residual


def train_codebooks(
    sample: np.ndarray,
    nbooks: int,
    ncode: int,
    beam: int,
    iterations: int,
    refine: int,
    rng: np.random.Generator,
    progress: Progress | None = None,
    validation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """sample (n, d) float32 -> codebooks (M, K, d) float32 and the sample's codes (n, M) uint8
    under them. Stage m: k-means on the beam entries' residuals, then the beam advances. With
    validation (v, d) float32 rows, refinement stops at the first round that does not lower their
    squared error (that round undone)."""
    n, dim = sample.shape
    codebooks = np.zeros((nbooks, ncode, dim), np.float32)
    steps = nbooks + refine
    res = sample[:, None, :].copy()
    paths = np.empty((n, 1, 0), np.uint8)
    for m in range(nbooks):
        # k-means on the residuals of every beam entry, not only the best: the entries a row keeps
        # are the residuals later stages will face, and at most MAX_POINTS_PER_CENTROID a codeword
        points = random_rows(res.reshape(-1, dim), MAX_POINTS_PER_CENTROID * ncode, rng)
        codebooks[m] = progressive_kmeans(points, ncode, iterations, rng)
        code_norms = np.einsum("kd,kd->k", codebooks[m], codebooks[m]).astype(np.float32)
        parts_res, parts_paths = [], []
        for start in range(0, n, ENCODE_BLOCK):
            block = res[start : start + ENCODE_BLOCK]
            rows, width = block.shape[0], block.shape[1]
            flat = block.reshape(rows * width, dim)
            dots = (flat @ codebooks[m].T).reshape(rows, width, -1)
            norms = np.einsum("nd,nd->n", flat, flat).reshape(rows, width)
            r, p, _ = additive.beam_advance(
                block, norms, dots, codebooks[m], code_norms, paths[start : start + ENCODE_BLOCK], beam
            )
            parts_res.append(r)
            parts_paths.append(p)
        res, paths = np.concatenate(parts_res), np.concatenate(parts_paths)
        if progress is not None:
            progress("train", m + 1, steps)
    codes = np.ascontiguousarray(paths[:, 0, :])
    residual = np.ascontiguousarray(res[:, 0, :])
    del res, paths
    held_error = np.inf if validation is None else squared_error(validation, codebooks, beam)
    for r in range(refine):
        kept = codebooks.copy()
        refine_codebooks(codebooks, codes, residual)
        if validation is not None:
            error = squared_error(validation, codebooks, beam)
            if error >= held_error:
                codebooks[:] = kept  # `codes` are still the sample's codes under these
                break
            held_error = error
        codes, residual = beam_encode(sample, codebooks, beam)
        if progress is not None:
            progress("train", nbooks + r + 1, steps)
    return codebooks, codes


def squared_error(x: np.ndarray, codebooks: np.ndarray, beam: int) -> float:
    """Mean squared reconstruction error of x (n, d) float32 beam-encoded under codebooks."""
    _, residual = beam_encode(x, codebooks, beam)
    return float(np.einsum("nd,nd->", residual, residual, dtype=np.float64) / x.shape[0])


def training_rows(n: int, take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The rows rq trains on out of n (take of them, sorted) and the rows that judge refinement
    (sorted, none when the sample is every row). (take,) and (v,) int64."""
    if take >= n:
        return np.arange(n, dtype=np.int64), np.zeros(0, np.int64)
    held = min(n - take, max(VALIDATION_ROWS, take // 8))
    # one draw of distinct rows, split: memory in the rows drawn, not in the table's n
    drawn = rng.choice(n, take + held, replace=False).astype(np.int64)
    return np.sort(drawn[:take]), np.sort(drawn[take:])


def refine_codebooks(codebooks: np.ndarray, codes: np.ndarray, residual: np.ndarray) -> None:
    """One round of codebook least squares, in place: for each codebook in turn, the others held,
    C_m[k] = mean over rows coded k of (x - sum_{j != m} C_j[a_j]), the exact minimiser of
    |x - x̂|^2 over C_m for fixed codes. residual (n, d) float32 = x - x̂ is kept current."""
    ncode = codebooks.shape[1]
    for m in range(codebooks.shape[0]):
        assign = codes[:, m].astype(np.int64)
        target = residual + codebooks[m][assign]
        sums, counts = centroid_sums(target, assign, ncode)
        used = counts > 0
        codebooks[m][used] = (sums[used] / counts[used, None]).astype(np.float32)
        np.subtract(target, codebooks[m][assign], out=residual)


def quantize_norms(norms: np.ndarray, norm_range: np.ndarray) -> np.ndarray:
    """Squared norms (n,) -> levels (n,) uint8, uniform over norm_range (2,) = [lo, hi]."""
    lo, hi = float(norm_range[0]), float(norm_range[1])
    if hi <= lo:
        return np.zeros(norms.shape[0], np.uint8)
    levels = np.rint((norms.astype(np.float64) - lo) * (NORM_LEVELS / (hi - lo)))
    return np.clip(levels, 0, NORM_LEVELS).astype(np.uint8)


def norm_values(norm_range: np.ndarray) -> np.ndarray:
    """(256,) float32: the squared norm each level stands for."""
    lo, hi = float(norm_range[0]), float(norm_range[1])
    return (lo + np.arange(256, dtype=np.float64) * ((hi - lo) / NORM_LEVELS)).astype(np.float32)


TABLE_LIMIT_MAX = 1 << 30
"""The largest `table_limit`: M = 64 8-bit codebooks' cross tables (1 GiB) fit, larger ones never."""


RQ_MAX_CODEBOOKS = 256
RQ_MAX_BEAM = 256


class RqCodec(adc.BlockedCodes, Codec):
    name = "rq"
    required_arrays = ("codes", "codebooks", "norm_range")
    row_arrays = ("codes",)
    options: ClassVar[tuple[Option, ...]] = (
        Option("codebooks", int, 8, "number of codebooks M (codes a row; each over the full dimension)"),
        Option("bits", int, 8, "bits a code, 8 or 4", choices=(8, 4)),
        Option("beam", int, 4, "partial codes kept a row while encoding (beam search width)", quick=2),
        Option("train_rows", int, 65536, "rows sampled for training"),
        Option("iterations", int, 6, "Lloyd iterations a stage at each of its growing dimensions", quick=2),
        Option("refine", int, 2, "rounds of codebook least squares after the greedy stages", quick=1),
        Option(
            "table_limit",
            str,
            "64MiB",
            "largest cross-codebook inner-product tables held for search by id (bytes, or e.g. 64MiB)",
        ),
    )

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        params = super().check_options(dim, options)
        for key, least in (("codebooks", 1), ("beam", 1), ("train_rows", 1), ("iterations", 0), ("refine", 0)):
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                kind = "a positive integer" if least else "a non-negative integer"
                raise InvalidRequest(f"rq option {key} must be {kind}, got {value!r}")
            params[key] = int(value)
        if params["bits"] not in (4, 8) or isinstance(params["bits"], bool):
            raise InvalidRequest(f"rq option bits must be 4 or 8, got {params['bits']!r}")
        if params["bits"] == 4 and params["codebooks"] % 2:
            raise InvalidRequest(
                f"rq with bits=4 packs two codes a byte beside the two norm nibbles: codebooks must be even, "
                f"got {params['codebooks']}"
            )
        limit = parse_bytes(params["table_limit"])
        if limit is None:
            raise InvalidRequest(
                f"rq option table_limit must be a size in bytes (e.g. 67108864 or 64MiB), got {params['table_limit']!r}"
            )
        if limit > TABLE_LIMIT_MAX:
            # read from an artifact, too: a 1 MB file could otherwise make a server build GBs of tables
            raise InvalidRequest(f"rq option table_limit is at most {TABLE_LIMIT_MAX} bytes (1GiB), got {limit}")
        params["table_limit"] = limit
        return params

    # ---- training and encoding ------------------------------------------------------------------
    @classmethod
    def _train(
        cls, sample: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        for key, most in (("codebooks", RQ_MAX_CODEBOOKS), ("beam", RQ_MAX_BEAM)):
            # past these, training asked for tens of GB and ended in a MemoryError (found by a probe);
            # checked here, not at load: an artifact trained before the limit still loads
            if params[key] > most:
                raise InvalidRequest(f"rq option {key} must be at most {most} to train, got {params[key]}")
        n = sample.shape[0]
        ncode = 1 << params["bits"]
        if n < ncode:
            raise InvalidRequest(
                f"rq with bits={params['bits']} learns {ncode} codewords a codebook by k-means and needs at "
                f"least {ncode} rows to train on, got {n}"
            )
        take = min(n, params["train_rows"])
        if take < ncode:
            raise InvalidRequest(f"rq option train_rows={take} is below the {ncode} codewords a codebook")
        picked, held = training_rows(n, take, rng)
        validation = np.ascontiguousarray(sample[held], dtype=np.float32) if held.size else None
        sample = np.ascontiguousarray(sample[picked] if take < n else sample, dtype=np.float32)
        codebooks, codes = train_codebooks(
            sample,
            params["codebooks"],
            ncode,
            params["beam"],
            params["iterations"],
            params["refine"],
            rng,
            progress,
            validation,
        )
        recon = decode_codes(codes, codebooks)
        norms = np.einsum("nd,nd->n", recon, recon)
        return {"codebooks": codebooks, "norm_range": np.array([norms.min(), norms.max()], np.float32)}

    @classmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        codebooks = state.arrays["codebooks"]
        codes, residual = beam_encode(x, codebooks, state.params["beam"])
        recon = x - residual
        levels = quantize_norms(np.einsum("nd,nd->n", recon, recon), state.arrays["norm_range"])
        if state.params["bits"] == 8:
            return {"codes": np.ascontiguousarray(np.concatenate([codes, levels[:, None]], axis=1))}
        packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        return {"codes": np.ascontiguousarray(np.concatenate([packed, levels[:, None]], axis=1))}

    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        m, k = int(params["codebooks"]), 1 << int(params["bits"])
        width = m + 1 if k == 256 else (m + 2) // 2
        trained = m * k * dim * 4 + 2 * 4  # codebooks, norm range
        trained += 256 * 4 if k == 256 else 2 * 16 * 4  # the norm column's lookup tables
        if m * m * k * k * 4 <= int(params["table_limit"]):
            trained += m * m * k * k * 4  # LISA cross-codebook tables
        if k == 16 and fastscan.AVAILABLE:
            # the fast-scan layout replaces the stored codes and pads the rows to whole blocks
            return trained + -(-rows // fastscan.BLOCK_ROWS) * fastscan.BLOCK_ROWS * width
        return trained + rows * width

    def check_arrays(self) -> str | None:
        m, bits = self.params["codebooks"], self.params["bits"]
        codes, books, norm_range = self.arrays["codes"], self.arrays["codebooks"], self.arrays["norm_range"]
        width = m + 1 if bits == 8 else (m + 2) // 2
        if codes.dtype != np.uint8 or codes.shape != (self.rows, width):
            return f"codes must be uint8 {(self.rows, width)}, got {codes.dtype} {codes.shape}"
        shape = (m, 1 << bits, self.dim)
        if books.dtype != np.float32 or books.shape != shape:
            return f"codebooks must be float32 {shape}, got {books.dtype} {books.shape}"
        if norm_range.dtype != np.float32 or norm_range.shape != (2,):
            return f"norm_range must be float32 (2,), got {norm_range.dtype} {norm_range.shape}"
        return None

    def check_values(self) -> str | None:
        # norm_range holds squared norms: rows of values below 2**50 may have them far above it
        norm_range = self.arrays["norm_range"]
        if not np.isfinite(norm_range).all():
            return f"array 'norm_range' holds {norm_range.tolist()}, not finite"
        where = unusable_value(self.arrays["codebooks"])
        return None if where is None else f"array 'codebooks' holds {where}"

    def _prepare(self) -> None:
        books = self.arrays["codebooks"]
        self._m = int(self.params["codebooks"])
        self._k = 1 << int(self.params["bits"])
        self._four_bit = self.params["bits"] == 4
        # the norm columns' lookup tables for l2 (negated squared norms); zero for ip
        values = norm_values(self.arrays["norm_range"])
        if self._four_bit:
            step = values[1] - values[0] if values.size > 1 else np.float32(0)
            low = -(np.arange(16, dtype=np.float32) * step)
            high = -(values[0] + np.arange(16, dtype=np.float32) * (16 * step))
            self.derived["norm_luts"] = np.stack([low, high]).astype(np.float32)
        else:
            self.derived["norm_luts"] = -values[None, :]
        if self._m * self._m * self._k * self._k * 4 <= self.params["table_limit"]:
            flat = books.reshape(self._m * self._k, self.dim)
            gram = (flat @ flat.T).reshape(self._m, self._k, self._m, self._k)
            self.derived["cross_tables"] = np.ascontiguousarray(gram.transpose(0, 2, 1, 3), dtype=np.float32)
        if self._four_bit:
            self._block_codes()

    # ---- helpers ----------------------------------------------------------------------------------
    def unpacked_codes(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, M) uint8 codeword indices (the norm left out)."""
        packed = self.packed_codes(ids)
        if not self._four_bit:
            return np.ascontiguousarray(packed[:, : self._m])
        return scan.unpack_codes_numpy(packed, True)[:, : self._m].astype(np.uint8)

    @property
    def has_cross_tables(self) -> bool:
        return "cross_tables" in self.derived

    def _tables(self, dots: np.ndarray, metric: str) -> np.ndarray:
        """dots (q, M, K) float32 = <q, C_m[k]> -> (q, W', K) float32 ADC tables with the norm
        columns appended (W' = M + 1, or M + 2 nibbles of 16 entries)."""
        nq = dots.shape[0]
        norm = self.derived["norm_luts"]
        if metric == "ip":
            tail = np.zeros((nq, norm.shape[0], self._k), np.float32)
            return np.ascontiguousarray(np.concatenate([dots, tail], axis=1), dtype=np.float32)
        tail = np.broadcast_to(norm[None], (nq, *norm.shape))
        return np.ascontiguousarray(np.concatenate([2 * dots, tail], axis=1), dtype=np.float32)

    def _dots(self, queries: np.ndarray) -> np.ndarray:
        """queries (q, d) float32 -> (q, M, K) float32 = <q, C_m[k]> (one matrix product)."""
        books = self.arrays["codebooks"]
        flat = books.reshape(self._m * self._k, self.dim)
        dots = additive.codeword_dots(flat, np.ascontiguousarray(queries, dtype=np.float32))
        return dots.reshape(queries.shape[0], self._m, self._k)

    def _lut_query(self, dots: np.ndarray, metric: str, query_norms: np.ndarray) -> LutQuery:
        if metric == "ip":
            return LutQuery(self._tables(dots, metric), "key")
        return LutQuery(self._tables(dots, metric), "l2", query_norms=query_norms.astype(np.float32))

    # ---- codec protocol ---------------------------------------------------------------------------
    def decode(self, ids: np.ndarray) -> np.ndarray:
        return decode_codes(self.unpacked_codes(ids), self.arrays["codebooks"])

    def prepare(self, metric: str, queries: np.ndarray | None = None, ids: np.ndarray | None = None) -> Prepared:
        if queries is not None:
            dots = self._dots(queries)
            return Prepared(metric, dots.shape[0], queries, self._lut_query(dots, metric, adc.l2_finish_norms(queries)))
        if ids is None:
            raise InvalidRequest("prepare needs queries or ids")
        codes = self.unpacked_codes(ids)
        if self.has_cross_tables:
            # LISA: the stored row's lookup tables from the codeword inner products alone
            dots = additive.cross_luts(codes, self.derived["cross_tables"])
            own = dots[np.arange(codes.shape[0])[:, None], np.arange(self._m)[None, :], codes.astype(np.int64)]
            norms = own.sum(axis=1, dtype=np.float32)
        else:
            decoded = decode_codes(codes, self.arrays["codebooks"])
            dots = self._dots(decoded)
            norms = adc.l2_finish_norms(decoded)
        return Prepared(metric, dots.shape[0], None, self._lut_query(dots, metric, norms))

    def score(self, prepared: Prepared, candidates: np.ndarray) -> np.ndarray:
        query: LutQuery = prepared.data
        if "blocked_codes" in self.derived:
            rows = self.packed_codes(candidates.reshape(-1))
            local = np.arange(candidates.size, dtype=np.int64).reshape(candidates.shape)
            return adc.score_candidates(rows, local, query, self._four_bit)
        return adc.score_candidates(self.arrays["codes"], candidates, query, self._four_bit)


def decode_codes(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """codes (b, M) uint8, codebooks (M, K, d) float32 -> (b, d) float32 = sum_m C_m[a_m], summed
    in codebook order."""
    out = np.zeros((codes.shape[0], codebooks.shape[2]), np.float32)
    for m in range(codebooks.shape[0]):
        out += codebooks[m][codes[:, m].astype(np.int64)]
    return out
