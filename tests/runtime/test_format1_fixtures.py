"""Format-1 artifacts written by the code before tables v2 still load and answer identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtime
from tests.fixtures.make_format1 import FIXTURES, HERE, answers

INPUTS = ("ids", "bag_ids", "bag_offsets", "queries", "query_ids", "candidates")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_format1_fixture_answers_identically(name: str) -> None:
    root = HERE / name
    assert json.loads((root / "artifact" / "manifest.json").read_text())["format_version"] == 1
    table = runtime.load_table(root / "artifact")
    codec = FIXTURES[name][0]
    assert (table.rows, table.dim, table.codec) == (240, 32, codec)
    with np.load(root / "expected.npz") as stored:
        expected = {key: stored[key] for key in stored.files}
    got = answers(table, {key: expected[key] for key in INPUTS})
    assert set(got) == set(expected) - set(INPUTS)
    # an OPQ table's rows are rotated back by a BLAS product, whose summation order is the CPU's
    # (OpenBLAS picks its kernel by instruction set): exact only on the CPU family that wrote them
    rotated = bool(FIXTURES[name][1].get("opq"))
    for key, value in got.items():
        if key.endswith("_ids") or (key.startswith(("lookup", "bags")) and not rotated):
            np.testing.assert_array_equal(value, expected[key], err_msg=f"{name}: {key}")
        else:
            # scan kernels may sum in another order on another CPU: scores agree to float32 rounding
            np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-5, err_msg=f"{name}: {key}")


def test_a_format1_manifest_without_its_rerank_codec_is_refused(tmp_path: Path) -> None:
    # found by a probe: rerank null with the rerank arrays listed loaded, serving the cheap codes
    copy = tmp_path / "artifact"
    shutil.copytree(HERE / "pq8_int8" / "artifact", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["rerank"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactCorrupt, match="lists rerank arrays but no rerank codec"):
        runtime.load_table(copy)
