"""Kernels of additive (residual) quantization: beam-search encoding, k-means sums, LUTs by id.

A row x is approximated by sum_m C_m[a_m] over M full-dimension codebooks C_m (K, d). Encoding
walks the stages keeping the `beam` best partial codes of each row: at stage m every kept entry b
(residual r_b = x - sum_{j<m} C_j[a_j]) is extended by every codeword k, and the new error is
    |r_b - C_m[k]|^2 = |r_b|^2 - 2 <r_b, C_m[k]> + |C_m[k]|^2,
where the inner products come from one matrix product (the caller's GEMM), so a kernel only picks
the best `width` of the beam × K extensions and writes their residuals and code paths.

Query lookup tables (<q, C_m[k]> for every codeword) are `codeword_dots`, not a BLAS call: a
multi-threaded BLAS leaves its threads spinning after a small product, and the ADC scan that
follows on the numba threads then shares the cores with them (on 2 cores: a 16-query top-10
search over 50k rows took 5-10x its scan time).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.rowscan import REORDERABLE

DOTS_BLOCK = 64
"""Codewords a task multiplies against every query: 64 rows of d = 128 floats stay in L1."""


@njit(parallel=True, nogil=True, cache=True)
def beam_advance(
    residuals: np.ndarray,
    norms: np.ndarray,
    dots: np.ndarray,
    codebook: np.ndarray,
    code_norms: np.ndarray,
    paths: np.ndarray,
    width: int,
):
    """One beam-search stage.

    residuals (n, B, d) float32, norms (n, B) float32 = |residual|^2, dots (n, B, K) float32 =
    <residual, codebook[k]>, codebook (K, d) float32, code_norms (K,) float32 = |codebook[k]|^2,
    paths (n, B, m) uint8 codes chosen so far. error(b, k) = (norms[b] - 2 dots[b, k]) + code_norms[k]
    in float32; the best W = min(width, B K) extensions are kept, smallest error first, ties to the
    lowest b K + k. -> residuals (n, W, d) float32 (= residual[b] - codebook[k]), paths (n, W, m + 1)
    uint8, errors (n, W) float32.
    """
    n, beam, dim = residuals.shape
    ncode = codebook.shape[0]
    depth = paths.shape[2]
    keep = min(width, beam * ncode)
    out_res = np.empty((n, keep, dim), dtype=np.float32)
    out_paths = np.empty((n, keep, depth + 1), dtype=np.uint8)
    out_err = np.empty((n, keep), dtype=np.float32)
    for i in prange(n):
        best_err = np.empty(keep, dtype=np.float32)
        best_idx = np.empty(keep, dtype=np.int64)
        size = 0
        for b in range(beam):
            base = norms[i, b]
            for k in range(ncode):
                e = (base - np.float32(2.0) * dots[i, b, k]) + code_norms[k]
                if size == keep and not e < best_err[size - 1]:
                    continue
                # insertion into the sorted kept list; an equal error stays behind (lower index first)
                pos = size if size < keep else keep - 1
                while pos > 0 and best_err[pos - 1] > e:
                    best_err[pos] = best_err[pos - 1]
                    best_idx[pos] = best_idx[pos - 1]
                    pos -= 1
                best_err[pos] = e
                best_idx[pos] = b * ncode + k
                if size < keep:
                    size += 1
        for w in range(keep):
            b = best_idx[w] // ncode
            k = best_idx[w] - b * ncode
            for j in range(dim):
                out_res[i, w, j] = residuals[i, b, j] - codebook[k, j]
            for j in range(depth):
                out_paths[i, w, j] = paths[i, b, j]
            out_paths[i, w, depth] = k
            out_err[i, w] = best_err[w]
    return out_res, out_paths, out_err


def beam_advance_numpy(
    residuals: np.ndarray,
    norms: np.ndarray,
    dots: np.ndarray,
    codebook: np.ndarray,
    code_norms: np.ndarray,
    paths: np.ndarray,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of `beam_advance` (same float32 expression, stable sort for the ties)."""
    n, beam, dim = residuals.shape
    ncode = codebook.shape[0]
    keep = min(width, beam * ncode)
    err = ((norms[:, :, None] - np.float32(2.0) * dots) + code_norms[None, None, :]).astype(np.float32)
    flat = err.reshape(n, beam * ncode)
    order = np.argsort(flat, axis=1, kind="stable")[:, :keep]
    parent, code = order // max(ncode, 1), order % max(ncode, 1)
    rows = np.arange(n)[:, None]
    out_res = (residuals[rows, parent] - codebook[code]).astype(np.float32)
    out_paths = np.concatenate([paths[rows, parent], code[:, :, None].astype(np.uint8)], axis=2)
    return out_res.reshape(n, keep, dim), out_paths.astype(np.uint8), np.take_along_axis(flat, order, axis=1)


@njit(parallel=True, nogil=True, cache=True)
def cross_luts(codes: np.ndarray, tables: np.ndarray):
    """LUTs of stored rows as queries, from the cross-codebook inner-product tables.

    codes (q, M) uint8 (unpacked), tables (M, M, K, K) float32 with tables[i, j, a, b] =
    <C_i[a], C_j[b]> -> luts (q, M, K) float32, luts[q, j, k] = sum_i tables[i, j, codes[q, i], k]
    (= <x̂_q, C_j[k]>), summed over i in order in float32.
    """
    nq, nm = codes.shape
    ncode = tables.shape[3]
    out = np.zeros((nq, nm, ncode), dtype=np.float32)
    for t in prange(nq * nm):
        q = t // nm
        j = t - q * nm
        for i in range(nm):
            row = tables[i, j, codes[q, i]]
            for k in range(ncode):
                out[q, j, k] += row[k]
    return out


def cross_luts_numpy(codes: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Twin of `cross_luts`: the same float32 sums in the same order."""
    nq, nm = codes.shape
    out = np.zeros((nq, nm, tables.shape[3]), dtype=np.float32)
    for i in range(nm):
        out += tables[i][:, codes[:, i].astype(np.int64)].transpose(1, 0, 2)
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=REORDERABLE)
def codeword_dots(codewords: np.ndarray, queries: np.ndarray):
    """codewords (C, d) float32, queries (q, d) float32 -> (q, C) float32 inner products. A task is
    a block of codewords against every query; each dot product is a float32 sum the compiler may
    reorder (vectorize), so results agree with the twin to float32 rounding."""
    ncw, dim = codewords.shape
    nq = queries.shape[0]
    out = np.empty((nq, ncw), dtype=np.float32)
    nblocks = -(-ncw // DOTS_BLOCK)
    for blk in prange(nblocks):
        first = blk * DOTS_BLOCK
        stop = min(ncw, first + DOTS_BLOCK)
        for q in range(nq):
            query = queries[q]
            for c in range(first, stop):
                word = codewords[c]
                acc = np.float32(0.0)
                for j in range(dim):
                    acc += query[j] * word[j]
                out[q, c] = acc
    return out


def codeword_dots_numpy(codewords: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Twin of `codeword_dots` (float64 products rounded to float32)."""
    return (queries.astype(np.float64) @ codewords.astype(np.float64).T).astype(np.float32)
