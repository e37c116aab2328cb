"""The kernels' layouts for the register width the suite's CPU does not have, checked on whatever
CPU runs it: AVX-512's sixteen lanes (256-column bag passes, sixteen points a k-means block, two
subspace pairs a fast-scan shuffle) on an AVX2 machine, AVX2's eight on an AVX-512 one. A
subprocess forces the other lane count, compiles the kernels into a cache of its own, and runs the
row-wise, k-means and fast-scan kernel tests against their numpy twins there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runtime.kernels.simd import LANES_VARIABLE, REGISTER_LANES, register_lanes
from tests.side_builds import Finished

OTHER_LANES = """
import sys
import pytest
from runtime.kernels import fastscan, kmeans, rowwise, simd
lanes = int(sys.argv[1])
assert simd.REGISTER_LANES == lanes and kmeans.LANES == lanes, simd.REGISTER_LANES
assert (rowwise.BAG_BLOCK8, rowwise.BAG_BLOCK4, rowwise.ROW_BLOCK4) == (16 * lanes, 16 * lanes, 8 * lanes)
assert fastscan.WIDE == (lanes == 16)

class PassedFiles:
    def __init__(self):
        self.files = set()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and report.passed:
            self.files.add(report.nodeid.split("::")[0])

passed = PassedFiles()
# -k filters every file named: each keeps its own tests by its module's or tests' names
code = pytest.main(["-q", "-p", "no:cacheprovider", "-k", "rowwise or nearest_code or fastscan",
                    "tests/runtime/test_kernels.py", "tests/runtime/test_kmeans.py",
                    "tests/runtime/test_fastscan.py"], plugins=[passed])
print("passed in:", " ".join(sorted(passed.files)))
sys.exit(code)
"""


def test_register_lanes_follow_the_cpu_features_unless_forced() -> None:
    assert register_lanes(None, "+avx2,+fma,+avx512f,+avx512bw") == 16
    assert register_lanes(None, "+avx2,+fma,-avx512f") == 8
    assert register_lanes("", "") == 8
    assert register_lanes("16", "+avx2") == 16
    assert register_lanes("8", "+avx512f") == 8
    with pytest.raises(ValueError, match=f"{LANES_VARIABLE} must be 8 or 16, got '32'"):
        register_lanes("32", "+avx512f")


OTHER = 8 if REGISTER_LANES == 16 else 16


def other_lanes_build(directory: Path) -> tuple[list[str], dict[str, str]]:
    # a cache of its own: numba's cache key is the CPU, not the lane count, so a shared cache would
    # hand back this machine's kernels and this would test nothing
    env = {**os.environ, LANES_VARIABLE: str(OTHER), "NUMBA_CACHE_DIR": str(directory / "numba")}
    return [sys.executable, "-c", OTHER_LANES, str(OTHER)], env


@pytest.mark.slow
@pytest.mark.side_build(command=other_lanes_build)
def test_kernels_with_the_other_register_width_match_their_numpy_twins(side_build: Finished) -> None:
    run = side_build
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    files = "tests/runtime/test_fastscan.py tests/runtime/test_kernels.py tests/runtime/test_kmeans.py"
    assert f"passed in: {files}" in run.stdout, run.stdout[-4000:]
