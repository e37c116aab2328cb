"""numba kernels: pure functions over numpy arrays, `nogil`, cached; each has a numpy twin.

One kernel calling another passes positions and counts as `np.int64(...)`, never as a literal
(`0`) or a `prange` index: numba compiles the callee anew for each literal value it sees and for
the unsigned index a parallel loop's body gets, and each extra compile of a large kernel costs
seconds of a server's first start."""

from runtime.kernels.targets import select_from_environment

# before any kernel module is compiled or opens its cache
select_from_environment()
