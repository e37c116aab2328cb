"""numba kernels: pure functions over numpy arrays, `nogil`, cached; each has a numpy twin."""
