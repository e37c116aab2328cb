"""Bounded top-k selection: a heap of the k best (key, id) pairs.

Convention for every scan in embserve: a *key* is "larger is better" (similarities as they are,
distances negated), and among equal keys the smaller id wins. A heap keeps its worst pair at the
root, so a new pair is compared with the root only, and k·log(k) work is paid per accepted pair,
never a sort or argpartition of all n keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", nogil=True, cache=True)
def _better(key_a: float, id_a: int, key_b: float, id_b: int) -> bool:
    return key_a > key_b or (key_a == key_b and id_a < id_b)


@njit(nogil=True, cache=True)
def heap_sift_down(keys: np.ndarray, ids: np.ndarray, size: int, pos: int) -> None:
    """Restore the worst-at-root order below `pos`. keys (k,) float32, ids (k,) int64."""
    key = keys[pos]
    idx = ids[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        # the worse of the two children must move up
        if right < size and _better(keys[child], ids[child], keys[right], ids[right]):
            child = right
        if _better(key, idx, keys[child], ids[child]):
            keys[pos] = keys[child]
            ids[pos] = ids[child]
            pos = child
        else:
            break
    keys[pos] = key
    ids[pos] = idx


@njit(nogil=True, cache=True)
def heap_push(keys: np.ndarray, ids: np.ndarray, size: int, key: float, idx: int) -> int:
    """Offer (key, idx) to a heap holding `size` of at most keys.shape[0] pairs; return new size."""
    capacity = keys.shape[0]
    if size < capacity:
        pos = size
        while pos > 0:
            parent = (pos - 1) // 2
            if _better(keys[parent], ids[parent], key, idx):
                keys[pos] = keys[parent]
                ids[pos] = ids[parent]
                pos = parent
            else:
                break
        keys[pos] = key
        ids[pos] = idx
        return size + 1
    if capacity > 0 and _better(key, idx, keys[0], ids[0]):
        keys[0] = key
        ids[0] = idx
        heap_sift_down(keys, ids, size, np.int64(0))
    return size


@njit(nogil=True, cache=True)
def heap_sort_best_first(keys: np.ndarray, ids: np.ndarray, size: int) -> None:
    """Sort the first `size` pairs of a heap in place, best first."""
    end = size
    while end > 1:
        end -= 1
        k0 = keys[0]
        i0 = ids[0]
        keys[0] = keys[end]
        ids[0] = ids[end]
        keys[end] = k0
        ids[end] = i0
        heap_sift_down(keys, ids, end, np.int64(0))


@njit(parallel=True, nogil=True, cache=True)
def push_block(
    heap_keys: np.ndarray,
    heap_ids: np.ndarray,
    heap_sizes: np.ndarray,
    block_keys: np.ndarray,
    first_id: int,
) -> None:
    """Offer a block of keys to per-query heaps.

    heap_keys (q, k) float32, heap_ids (q, k) int64, heap_sizes (q,) int64 are updated in place;
    block_keys (q, b) float32 holds the keys of ids first_id .. first_id + b - 1.
    """
    nq = block_keys.shape[0]
    nb = block_keys.shape[1]
    for qi in prange(nq):
        size = heap_sizes[qi]
        hk = heap_keys[qi]
        hi = heap_ids[qi]
        for j in range(nb):
            size = heap_push(hk, hi, size, block_keys[qi, j], first_id + j)
        heap_sizes[qi] = size


@njit(parallel=True, nogil=True, cache=True)
def finalize(heap_keys: np.ndarray, heap_ids: np.ndarray, heap_sizes: np.ndarray) -> None:
    """Sort every query's heap best first, in place. Shapes as in `push_block`."""
    for qi in prange(heap_keys.shape[0]):
        heap_sort_best_first(heap_keys[qi], heap_ids[qi], heap_sizes[qi])


@njit(nogil=True, cache=True)
def partial_heaps(nq: int, nchunks: int, k: int):
    """Empty heaps for a scan split into chunks, each chunk keeping its own top-k of every query:
    -> keys (nq, nchunks, k) float32, ids (nq, nchunks, k) int64, sizes (nq, nchunks) int64 zeros,
    the arguments of `merge_partials`."""
    return (
        np.empty((nq, nchunks, k), dtype=np.float32),
        np.empty((nq, nchunks, k), dtype=np.int64),
        np.zeros((nq, nchunks), dtype=np.int64),
    )


@njit(parallel=True, nogil=True, cache=True)
def merge_partials(part_keys: np.ndarray, part_ids: np.ndarray, part_sizes: np.ndarray, k: int):
    """Merge per-chunk heaps into one sorted top-k per query.

    part_keys (q, c, k) float32, part_ids (q, c, k) int64, part_sizes (q, c) int64
    -> keys (q, k') float32, ids (q, k') int64 with k' = min(k, total pairs), best first.
    """
    nq = part_keys.shape[0]
    nchunks = part_keys.shape[1]
    total = 0
    for c in range(nchunks):
        total += part_sizes[0, c] if nq > 0 else 0
    kk = min(k, total)
    out_keys = np.empty((nq, kk), dtype=np.float32)
    out_ids = np.empty((nq, kk), dtype=np.int64)
    for qi in prange(nq):
        hk = np.empty(kk, dtype=np.float32)
        hi = np.empty(kk, dtype=np.int64)
        size = np.int64(0)
        for c in range(nchunks):
            for j in range(part_sizes[qi, c]):
                size = heap_push(hk, hi, size, part_keys[qi, c, j], part_ids[qi, c, j])
        heap_sort_best_first(hk, hi, size)
        out_keys[qi, :] = hk
        out_ids[qi, :] = hi
    return out_keys, out_ids


def topk_numpy(keys: np.ndarray, k: int, first_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Twin of the heap kernels: full sort by (key descending, id ascending).

    keys (q, n) float32 for ids first_id.. -> (q, min(k, n)) float32 keys, int64 ids.
    """
    nq, n = keys.shape
    kk = min(k, n)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    out_ids = np.empty((nq, kk), dtype=np.int64)
    out_keys = np.empty((nq, kk), dtype=np.float32)
    for qi in range(nq):
        order = np.lexsort((ids, -keys[qi].astype(np.float64)))[:kk]
        out_ids[qi] = ids[order]
        out_keys[qi] = keys[qi][order]
    return out_keys, out_ids


class BlockTopK:
    """Streaming top-k over blocks of keys: `push(block_keys, first_id)` then `result()`."""

    def __init__(self, nq: int, k: int) -> None:
        self.keys = np.full((nq, k), -np.inf, dtype=np.float32)
        self.ids = np.full((nq, k), -1, dtype=np.int64)
        self.sizes = np.zeros(nq, dtype=np.int64)
        self.k = k

    def push(self, block_keys: np.ndarray, first_id: int) -> None:
        push_block(self.keys, self.ids, self.sizes, np.ascontiguousarray(block_keys), first_id)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """-> keys (q, k') float32, ids (q, k') int64, best first; k' = min(k, ids seen)."""
        finalize(self.keys, self.ids, self.sizes)
        kk = int(self.sizes.min()) if self.sizes.size else 0
        return self.keys[:, :kk].copy(), self.ids[:, :kk].copy()
