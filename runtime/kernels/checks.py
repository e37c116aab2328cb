"""Input checks as kernels: one pass over a batch of ids costs less than numpy's min and max."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def first_out_of_range(ids: np.ndarray, rows: int) -> int:
    """ids (n,) int64 -> the position of the first id outside [0, rows), or -1 when all are in."""
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= rows:
            return i
    return -1


def first_out_of_range_numpy(ids: np.ndarray, rows: int) -> int:
    """Twin of `first_out_of_range`."""
    bad = np.flatnonzero((ids < 0) | (ids >= rows))
    return int(bad[0]) if bad.size else -1
