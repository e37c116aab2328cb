"""Product-quantization reconstruction straight from the codes: rows and pooled bags; and the
queries' lookup tables, the dots of their subvectors with every codeword.

A PQ row is the concatenation of one codeword per subspace, so a bag's sum is, subspace by
subspace, a sum of codewords: the kernels read each id's code bytes and add the codewords into the
output row, never materialising the (m, d) decoded rows that pooling would then read back.
Accumulation is float32 in id order, exactly as decoding and then pooling does, so the numpy twins
agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.intrinsics import PREFETCH_DISTANCE, prefetch_row
from runtime.kernels.rowwise import DEFAULT_PARALLEL_MIN_IDS, bag_tasks
from runtime.kernels.scan import unpack_codes_numpy


@njit(inline="always", nogil=True, cache=True)
def _code(codes: np.ndarray, row: np.int64, m: int, four_bit: bool) -> np.int64:
    """Subspace m's code of a stored row: a byte, or a nibble (low nibble first) at 4 bits."""
    if four_bit:
        return np.int64((codes[row, m >> 1] >> ((m & 1) << 2)) & 15)
    return np.int64(codes[row, m])


@njit(inline="always", nogil=True, cache=True)
def _bags_of_width(
    codes: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    lo: int,
    hi: int,
    codebooks: np.ndarray,
    four_bit: bool,
    mean: bool,
    out: np.ndarray,
    sub: int,
) -> None:
    """`_bags_into` for codewords of `sub` floats."""
    total = ids.shape[0]
    for b in range(lo, hi):
        start = offsets[b]
        stop = offsets[b + 1] if b + 1 < offsets.shape[0] else total
        row_out = out[b]
        row_out[:] = 0
        for t in range(start, stop):
            if t + PREFETCH_DISTANCE < total:
                prefetch_row(codes, ids[t + PREFETCH_DISTANCE], 0)
            r = ids[t]
            for m in range(codebooks.shape[0]):
                word = codebooks[m, _code(codes, r, m, four_bit)]
                base = m * sub
                for s in range(sub):
                    row_out[base + s] += word[s]
        if mean and stop > start:
            inv = np.float32(1.0) / np.float32(stop - start)
            for j in range(row_out.shape[0]):
                row_out[j] *= inv


@njit(nogil=True, cache=True)
def _bags_into(
    codes: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    lo: int,
    hi: int,
    codebooks: np.ndarray,
    four_bit: bool,
    mean: bool,
    out: np.ndarray,
) -> None:
    """Bags lo..hi-1 into out[lo:hi] (each zeroed first). The usual codeword widths get a loop
    nest of their own with the width a literal: with a trip count known when compiling a codeword
    is added as one vector operation (at s = 4 a bag of 20 ids pooled 1.9x faster on an AMD EPYC
    than with a loop of unknown length; dispatching per id instead lost most of that)."""
    sub = codebooks.shape[2]
    if sub == 4:
        _bags_of_width(codes, ids, offsets, lo, hi, codebooks, four_bit, mean, out, 4)
    elif sub == 8:
        _bags_of_width(codes, ids, offsets, lo, hi, codebooks, four_bit, mean, out, 8)
    elif sub == 2:
        _bags_of_width(codes, ids, offsets, lo, hi, codebooks, four_bit, mean, out, 2)
    elif sub == 16:
        _bags_of_width(codes, ids, offsets, lo, hi, codebooks, four_bit, mean, out, 16)
    else:
        _bags_of_width(codes, ids, offsets, lo, hi, codebooks, four_bit, mean, out, sub)


@njit(nogil=True, cache=True)
def bags_serial(
    codes: np.ndarray, ids: np.ndarray, offsets: np.ndarray, codebooks: np.ndarray, four_bit: bool, mean: bool
) -> np.ndarray:
    """`bags` on the calling thread."""
    out = np.empty((offsets.shape[0], codebooks.shape[0] * codebooks.shape[2]), dtype=np.float32)
    _bags_into(codes, ids, offsets, np.int64(0), offsets.shape[0], codebooks, four_bit, mean, out)
    return out


@njit(parallel=True, nogil=True, cache=True)
def bags_chunked(
    codes: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    codebooks: np.ndarray,
    four_bit: bool,
    mean: bool,
    nchunks: int,
) -> np.ndarray:
    """`bags` with one contiguous run of bags a task (`nchunks`, one a thread)."""
    nbags = offsets.shape[0]
    out = np.empty((nbags, codebooks.shape[0] * codebooks.shape[2]), dtype=np.float32)
    for c in prange(nchunks):
        _bags_into(
            codes, ids, offsets, c * nbags // nchunks, (c + 1) * nbags // nchunks, codebooks, four_bit, mean, out
        )
    return out


def bags(
    codes: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    codebooks: np.ndarray,
    four_bit: bool,
    mean: bool,
    min_ids: int = DEFAULT_PARALLEL_MIN_IDS,
) -> np.ndarray:
    """EmbeddingBag pooling of PQ rows: codes (n, M) uint8 (4-bit: (n, M/2), two codes a byte, low
    nibble first), ids (t,) int64 rows of codes, offsets (B,) int64 bag starts (the last bag runs to
    t), codebooks (M, K, s) float32 -> (B, M*s) float32 in the codebooks' (rotated) space. An empty
    bag is zeros; mean divides by the bag's size. Parallel over runs of bags for large batches."""
    tasks = bag_tasks(ids.shape[0], offsets.shape[0], min_ids)
    if tasks == 1:
        return bags_serial(codes, ids, offsets, codebooks, four_bit, mean)
    return bags_chunked(codes, ids, offsets, codebooks, four_bit, mean, tasks)


def rows(
    codes: np.ndarray, ids: np.ndarray, codebooks: np.ndarray, four_bit: bool, min_ids: int = DEFAULT_PARALLEL_MIN_IDS
) -> np.ndarray:
    """Reconstructed rows: ids (b,) int64 -> (b, M*s) float32, as bags of one id each."""
    return bags(codes, ids, np.arange(ids.shape[0], dtype=np.int64), codebooks, four_bit, False, min_ids)


def rows_numpy(codes: np.ndarray, ids: np.ndarray, codebooks: np.ndarray, four_bit: bool) -> np.ndarray:
    """The plain twin of `rows`: codewords picked by advanced indexing and concatenated."""
    unpacked = unpack_codes_numpy(codes[ids], four_bit)
    n_sub = codebooks.shape[0]
    picked = codebooks[np.arange(n_sub)[None, :], unpacked]
    return np.ascontiguousarray(picked.reshape(ids.shape[0], n_sub * codebooks.shape[2]), dtype=np.float32)


def bags_numpy(
    codes: np.ndarray, ids: np.ndarray, offsets: np.ndarray, codebooks: np.ndarray, four_bit: bool, mean: bool
) -> np.ndarray:
    """The plain twin of `bags`: reconstruct every id's row, then sum each bag in id order."""
    decoded = rows_numpy(codes, ids, codebooks, four_bit)
    out = np.zeros((offsets.shape[0], decoded.shape[1]), dtype=np.float32)
    bounds = [*offsets.tolist(), ids.shape[0]]
    for b in range(offsets.shape[0]):
        for t in range(bounds[b], bounds[b + 1]):
            out[b] += decoded[t]
        if mean and bounds[b + 1] > bounds[b]:
            out[b] *= np.float32(1.0) / np.float32(bounds[b + 1] - bounds[b])
    return out


@njit(nogil=True, cache=True)
def subspace_dots(queries: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """queries (q, M * s) float32, codebooks (M, K, s) float32 -> (q, M, K) float32 dots of
    query subvector m with each codeword of subspace m, summed over the s coordinates in order.

    A search's lookup tables. numpy's einsum took 8.5 µs for one query at M = 32, K = 16 (48 µs
    with its code out of cache, as a search finds it after a scan) and 2.6 ms for 64 queries at
    M = 16, K = 256; this loop 3.5 µs (21 µs) and 0.87 ms, on the Zen 4 EPYC."""
    nq = queries.shape[0]
    nsub, ksub, width = codebooks.shape
    out = np.empty((nq, nsub, ksub), dtype=np.float32)
    for qi in range(nq):
        for m in range(nsub):
            for c in range(ksub):
                total = np.float32(0.0)
                for t in range(width):
                    total += queries[qi, m * width + t] * codebooks[m, c, t]
                out[qi, m, c] = total
    return out


def subspace_dots_numpy(queries: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Twin of `subspace_dots`: the same float32 sums over the s coordinates, in the same order."""
    nsub, ksub, width = codebooks.shape
    parts = queries.reshape(queries.shape[0], nsub, 1, width)
    out = np.zeros((queries.shape[0], nsub, ksub), dtype=np.float32)
    for t in range(width):
        out += parts[:, :, :, t] * codebooks[None, :, :, t]
    return out
