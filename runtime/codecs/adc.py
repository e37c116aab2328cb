"""Shared asymmetric-distance (ADC) machinery: lookup tables over byte codes, scanned and scored.

Any codec whose rows are sums of per-code table entries uses it: PQ (one LUT a subspace), binary
(one LUT a byte of sign bits), and additive codes. A prepared query is a `LutQuery`; the codec
builds its tables, this module scans them and turns the kernels' keys into scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.artifact import release_pages
from runtime.codecs.base import Prepared, scan_chunks
from runtime.kernels import fastscan, fastscan8, scan

EMPTY = np.empty(0, np.float32)


@dataclass(frozen=True)
class LutQuery:
    """Lookup tables of q prepared queries against codes of M bytes (or M/2 with 4-bit codes).

    luts (q, M, K) float32: row key = sum_m luts[q, m, code_m], then, when `row_mul` is not empty,
    key = row_mul[row] * key + (row_add[row] if row_add is not empty else 0).
    finish says how a key becomes a score: "key" (ip), "negated" (the tables hold negated squared
    distances) or "l2" (key = 2<q, x> - |x|^2, score = |q|^2 - key with `query_norms` (q,) = |q|^2).
    """

    luts: np.ndarray
    finish: str
    row_mul: np.ndarray = field(default_factory=lambda: EMPTY)
    row_add: np.ndarray = field(default_factory=lambda: EMPTY)
    query_norms: np.ndarray = field(default_factory=lambda: EMPTY)

    def scores(self, keys: np.ndarray) -> np.ndarray:
        """keys (q, c) float32 -> scores (q, c) float32 in the metric's own sense."""
        if self.finish == "key":
            return keys
        if self.finish == "negated":
            return -keys
        return np.maximum(self.query_norms[:, None] - keys, 0).astype(np.float32)


def l2_finish_norms(queries: np.ndarray) -> np.ndarray:
    """(q, d) float32 -> (q,) float32 squared norms, for the "l2" finish."""
    return np.einsum("qd,qd->q", queries, queries).astype(np.float32)


def scan_topk(
    codes: np.ndarray, query: LutQuery, k: int, nchunks: int, four_bit: bool
) -> tuple[np.ndarray, np.ndarray]:
    """codes (n, M) uint8 -> ids (q, k) int64, scores (q, k) float32, best first."""
    keys, ids = scan.adc_topk(codes, query.luts, query.row_mul, query.row_add, k, nchunks, four_bit)
    return ids, query.scores(keys)


def score_candidates(codes: np.ndarray, candidates: np.ndarray, query: LutQuery, four_bit: bool) -> np.ndarray:
    """codes (n, M) uint8, candidates (q, c) int64 -> (q, c) float32 scores."""
    keys = scan.adc_candidates(codes, candidates, query.luts, four_bit)
    if query.row_mul.size:
        keys = keys * query.row_mul[candidates]
        if query.row_add.size:
            keys = keys + query.row_add[candidates]
    return query.scores(keys.astype(np.float32, copy=False))


class BlockedCodes:
    """Code storage shared by the additive-code codecs (PQ, RQ): rows of uint8 codes in
    `arrays["codes"]`, which 4-bit codecs re-lay at load in fast-scan blocks where the CPU has the
    kernel. Then the blocked layout is what requests read, and what `nbytes` counts. 8-bit codes
    keep their layout: their fast scan (`fastscan8`) transposes blocks in registers as it reads."""

    arrays: dict[str, np.ndarray]
    derived: dict[str, np.ndarray]
    rows: int
    _four_bit: bool

    def _block_codes(self) -> None:
        """Build the fast-scan layout (4-bit codecs, at load); the row-major array stays the
        persisted form and its mapped pages are released."""
        if fastscan.AVAILABLE:
            self.derived["blocked_codes"] = fastscan.blocked_layout(self.arrays["codes"])
            release_pages(self.arrays["codes"])

    def held_arrays(self) -> dict[str, np.ndarray]:
        held: dict[str, np.ndarray] = super().held_arrays()  # type: ignore[misc]
        if "blocked_codes" in held:
            del held["codes"]
        return held

    def packed_codes(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, W) uint8 codes as stored, from whichever layout is held."""
        blocked = self.derived.get("blocked_codes")
        return self.arrays["codes"][ids] if blocked is None else fastscan.row_codes(blocked, ids)

    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ADC top k over every row for a prepared `LutQuery`: the 4-bit fast scan over the blocked
        layout where it is held, the 8-bit one over the stored codes where the CPU and the code
        width allow it, else the scalar scan over the stored codes."""
        query: LutQuery = prepared.data
        blocked = self.derived.get("blocked_codes")
        codes = self.arrays["codes"]
        plain = not query.row_mul.size and not query.row_add.size  # PQ and RQ keys are the sums
        eight_bit = plain and not self._four_bit and fastscan8.supported(codes.shape[1]) and codes.flags.c_contiguous
        if blocked is None and not eight_bit:
            return scan_topk(codes, query, k, scan_chunks(self.rows), self._four_bit)
        if blocked is None:
            keys, ids = fastscan8.fastscan8_topk(codes, query.luts, k, scan_chunks(self.rows))
        else:
            keys, ids = fastscan.fastscan_topk(blocked, query.luts, self.rows, k, scan_chunks(self.rows))
        return ids, query.scores(keys)
