"""The thread count read inside kernels (`intrinsics.thread_count`), and importing `runtime` leaving
numba's threading layer unstarted (a process that forks after the import must still be able to run
parallel kernels in its children)."""

from __future__ import annotations

import subprocess
import sys
import threading

import numba
from numba import njit

from runtime.codecs.base import scan_chunks
from runtime.kernels.intrinsics import start_threading_layer, thread_count
from runtime.kernels.scan import CHUNK_ROWS

start_threading_layer()


@njit(nogil=True)
def _count() -> int:
    return thread_count()  # type: ignore[call-arg]


def test_thread_count_follows_set_num_threads() -> None:
    before = numba.get_num_threads()
    try:
        for k in range(1, numba.config.NUMBA_NUM_THREADS + 1):  # type: ignore[attr-defined]
            numba.set_num_threads(k)
            assert _count() == k == numba.get_num_threads()
    finally:
        numba.set_num_threads(before)


def test_scan_chunks_are_one_a_thread_and_at_least_a_chunk_of_rows_each() -> None:
    before = numba.get_num_threads()
    try:
        for k in range(1, numba.config.NUMBA_NUM_THREADS + 1):  # type: ignore[attr-defined]
            numba.set_num_threads(k)
            for rows in (0, 1, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 1, 3 * CHUNK_ROWS, 10**9):
                assert scan_chunks(rows) == max(1, min(k, -(-rows // CHUNK_ROWS)))
    finally:
        numba.set_num_threads(before)


def test_thread_count_is_per_thread() -> None:
    # numba's count is thread-local: a new thread starts at the configured maximum
    seen: list[int] = []
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        worker = threading.Thread(target=lambda: seen.append(_count()))
        worker.start()
        worker.join()
        assert _count() == 1
    finally:
        numba.set_num_threads(before)
    assert seen == [numba.config.NUMBA_NUM_THREADS]  # type: ignore[attr-defined]


def test_importing_runtime_leaves_the_threading_layer_unstarted() -> None:
    code = (
        "import runtime, runtime.codecs, runtime.kernels.rowwise, runtime.kernels.dense, runtime.kernels.scan\n"
        "from numba.np.ufunc import parallel\n"
        "assert not parallel._is_initialized, 'the threading layer started at import'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
