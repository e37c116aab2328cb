"""Input checks as kernels: one pass over a batch of ids costs less than numpy's min and max."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

CHECK_CHUNK = 512
"""Ids `first_out_of_range` checks at once, without a branch an id."""


@njit(nogil=True, cache=True)
def first_out_of_range(ids: np.ndarray, rows: int) -> int:
    """ids (n,) int64 -> the position of the first id outside [0, rows), or -1 when all are in.

    Each chunk's largest id taken as unsigned (a negative id is a huge unsigned one) is compared
    with the limit, a loop the compiler vectorizes; only a chunk that holds a bad id is searched
    again for its position. 16,384 contiguous ids: 1.9 us, ~10 us with a compare and a branch an
    id. Ids of any layout (the one-call lookup's kernel is compiled for them) vectorize with
    gathers and check no faster than that."""
    n = ids.shape[0]
    limit = np.uint64(max(rows, 0))
    for start in range(0, n, CHECK_CHUNK):
        stop = min(n, start + CHECK_CHUNK)
        largest = np.uint64(0)
        # an unsigned index: numba wraps signed ones around (i < 0 -> i + n), which the compiler
        # could only vectorize with gathers
        for i in range(np.uint64(start), np.uint64(stop)):
            largest = max(largest, np.uint64(ids[i]))
        if largest >= limit:
            for i in range(start, stop):
                if np.uint64(ids[i]) >= limit:
                    return i
    return -1


def first_out_of_range_numpy(ids: np.ndarray, rows: int) -> int:
    """Twin of `first_out_of_range`."""
    bad = np.flatnonzero((ids < 0) | (ids >= rows))
    return int(bad[0]) if bad.size else -1


FLOAT32_EXPONENT = np.uint32(0x7F800000)
"""The exponent bits of a float32: all set in an Inf or a NaN, and only there."""


VALUE_LIMIT_EXPONENT = 50
"""Query, row and weight values must be below 2**50 in magnitude: then a dot product or squared
distance of two such vectors stays finite in float32 for any dimension up to 2**26 (d · 2**100 is
far below float32's 2**128), where a larger value made scores inf or NaN, answered as nulls or as
empty results."""
VALUE_LIMIT = 2.0**VALUE_LIMIT_EXPONENT
_LIMIT_BITS = np.uint32((VALUE_LIMIT_EXPONENT + 127) << 23)  # the float32 exponent field of 2**50


@njit(nogil=True, cache=True)
def first_unusable_row(rows: np.ndarray) -> int:
    """rows (q, d) float32 C-contiguous -> the first row holding a NaN, an Inf or a value of
    magnitude VALUE_LIMIT or more, or -1 when there is none. A row's largest exponent field, taken
    over its bits as integers, is a reduction the compiler vectorizes (float compares with NaNs are
    not); one call replaces numpy's isfinite and two reductions, ~35 µs of a search's fixed cost
    when its code is out of cache."""
    bits = rows.view(np.uint32)
    for r in range(bits.shape[0]):
        largest = np.uint32(0)
        for j in range(bits.shape[1]):
            largest = max(largest, bits[r, j] & FLOAT32_EXPONENT)
        if largest >= _LIMIT_BITS:
            return r
    return -1


def first_unusable_row_numpy(rows: np.ndarray) -> int:
    """Twin of `first_unusable_row`."""
    bad = np.flatnonzero(~(np.abs(rows) < VALUE_LIMIT).all(axis=1))  # NaN compares False
    return int(bad[0]) if bad.size else -1


@njit(nogil=True, cache=True)
def first_bad_offset(offsets: np.ndarray, n_ids: int) -> int:
    """offsets (B,) int64 -> -1 when they are EmbeddingBag offsets of n_ids ids (offsets[0] == 0,
    non-decreasing, offsets[-1] <= n_ids), else the first position that breaks that: 0 for a
    first offset that is not 0, i for offsets[i] < offsets[i - 1], B - 1 for a last one past n_ids."""
    nbags = offsets.shape[0]
    if nbags == 0:
        return -1
    if offsets[0] != 0:
        return 0
    for i in range(1, nbags):
        if offsets[i] < offsets[i - 1]:
            return i
    if offsets[nbags - 1] > n_ids:
        return nbags - 1
    return -1


def first_bad_offset_numpy(offsets: np.ndarray, n_ids: int) -> int:
    """Twin of `first_bad_offset`."""
    if offsets.size == 0:
        return -1
    if offsets[0] != 0:
        return 0
    down = np.flatnonzero(offsets[1:] < offsets[:-1])  # not np.diff, which wraps past int64
    if down.size:
        return int(down[0]) + 1
    return offsets.size - 1 if offsets[-1] > n_ids else -1


@njit(nogil=True, cache=True)
def offsets_of_lengths(lengths: np.ndarray) -> tuple[np.ndarray, int, int]:
    """lengths (B,) int64 bag sizes -> offsets (B,) int64 (exclusive prefix sums), the position of
    the first negative length (-1 when none is) and the sum of the lengths. A running sum that
    would pass an end of int64 stays at that end from there on: a wrapped sum could equal the number
    of ids given and let offsets far outside them through."""
    nbags = lengths.shape[0]
    offsets = np.empty(nbags, dtype=np.int64)
    negative = -1
    total = 0
    saturated = False
    for i in range(nbags):
        offsets[i] = total
        length = lengths[i]
        if length < 0 and negative < 0:
            negative = i
        if saturated:
            continue
        if length > 0 and total > INT64_MAX - length:
            total = INT64_MAX
            saturated = True
        elif length < 0 and total < INT64_MIN - length:
            total = INT64_MIN
            saturated = True
        else:
            total += length
    return offsets, negative, total


def offsets_of_lengths_numpy(lengths: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Twin of `offsets_of_lengths`."""
    # exact running sums as Python integers, then held at the end of int64 they first pass
    running = np.cumsum(lengths.astype(object)) if lengths.size else np.zeros(0, object)
    past = np.flatnonzero((running > INT64_MAX) | (running < INT64_MIN))
    if past.size:
        running[past[0] :] = INT64_MAX if running[past[0]] > INT64_MAX else INT64_MIN
    offsets = np.zeros(lengths.shape[0], np.int64)
    offsets[1:] = running[:-1].astype(np.int64)
    negative = np.flatnonzero(lengths < 0)
    return offsets, int(negative[0]) if negative.size else -1, int(running[-1]) if running.size else 0
