"""numba kernels: pure functions over numpy arrays, `nogil`, cached; each has a numpy twin."""

from runtime.kernels.targets import select_from_environment

# before any kernel module is compiled or opens its cache
select_from_environment()
