"""Artifacts whose checksums hold but whose contents do not fit together: each is refused at load
with ArtifactCorrupt naming the problem (422 over HTTP), where an adversarial probe had them load
and answer searches with no results, 500s, silently wrong rows, or gigabytes of tables."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from runtime import ArtifactCorrupt, ArtifactIncompatible, ArtifactNotFound, InvalidRequest
from runtime.table import _drop_self

X = np.random.default_rng(0).standard_normal((512, 16)).astype(np.float32)


def put_array(path: Path, name: str, array: np.ndarray, fortran: bool = False) -> None:
    """Writes `array` as the artifact's array `name` and records it, with its sha256, in the manifest."""
    file = name.replace("/", "--") + ".npy"
    np.save(path / file, np.asfortranarray(array) if fortran else np.ascontiguousarray(array))
    manifest = json.loads((path / "manifest.json").read_text())
    digest = hashlib.sha256((path / file).read_bytes()).hexdigest()
    manifest["arrays"][name] = {"file": file, "dtype": array.dtype.str, "shape": list(array.shape), "sha256": digest}
    (path / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def stored(path: Path, name: str) -> np.ndarray:
    return np.array(np.load(path / (name.replace("/", "--") + ".npy")))


def nan_codebooks(path: Path) -> None:
    books = stored(path, "tier0/codebooks")
    books[1, 7, 2] = np.nan
    put_array(path, "tier0/codebooks", books)


def huge_codebooks(path: Path) -> None:
    put_array(path, "tier0/codebooks", stored(path, "tier0/codebooks") * np.float32(1e30))


def inf_fp16_values(path: Path) -> None:
    values = stored(path, "tier0/values")
    values[5, 3] = np.inf
    put_array(path, "tier0/values", values)


def nan_row_scale(path: Path) -> None:
    rows = stored(path, "tier0/rows")
    rows[9, -4:-2] = np.array([np.nan], np.float16).view(np.uint8)
    put_array(path, "tier0/rows", rows)


def nan_norm_range(path: Path) -> None:
    put_array(path, "tier0/norm_range", np.array([np.nan, 1.0], np.float32))


def stray_rotation(path: Path) -> None:
    put_array(path, "tier0/rotation", np.eye(16, dtype=np.float32))


def text_rotation(path: Path) -> None:
    put_array(path, "tier0/rotation", np.full((16, 16), "a"))


def fortran_codes(path: Path) -> None:
    put_array(path, "tier0/codes", stored(path, "tier0/codes"), fortran=True)


def padding_bits(path: Path) -> None:
    codes = stored(path, "tier0/codes")
    codes[3, 0] |= np.uint64(1) << np.uint64(40)
    put_array(path, "tier0/codes", codes)


def unknown_array(path: Path) -> None:
    put_array(path, "tier0/extra", np.zeros(3, np.float32))


def text_provenance(path: Path) -> None:
    edit_manifest(path, lambda m: m.update(provenance="abc"))


def huge_table_limit(path: Path) -> None:
    def change(manifest: dict[str, Any]) -> None:
        manifest["tiers"][0]["params"]["table_limit"] = 2**40

    edit_manifest(path, change)


CASES = [
    ("pq", {"subspaces": 4}, nan_codebooks, "array 'codebooks' holds nan at [1, 7, 2]"),
    ("pq", {"subspaces": 4}, huge_codebooks, "array 'codebooks' holds"),
    ("fp16", {}, inf_fp16_values, "array 'values' holds inf at [5, 3]"),
    ("int8", {}, nan_row_scale, "scale or bias (row, [scale, bias]) is nan at [9, 0]"),
    ("int4", {}, nan_row_scale, "scale or bias"),
    ("rq", {"codebooks": 2}, nan_norm_range, "array 'norm_range' holds [nan, 1.0], not finite"),
    ("pq", {"subspaces": 4}, stray_rotation, "rotation array is stored but opq=false"),
    ("binary", {}, stray_rotation, "rotation array is stored but rotate=false"),
    ("pq", {"subspaces": 4, "opq": True}, text_rotation, "opq=true needs a float32 (16, 16) rotation array, got <U1"),
    ("binary", {"rotate": True}, text_rotation, "rotate=true needs a float32 (16, 16) rotation array"),
    ("pq", {"subspaces": 4}, fortran_codes, "stored in Fortran order"),
    ("binary", {}, padding_bits, "row 3's code sets bits past dim 16"),
    ("fp32", {}, unknown_array, "reads no array 'extra'"),
    ("fp32", {}, text_provenance, "'provenance' must be an object, got str"),
    ("rq", {"codebooks": 2}, huge_table_limit, "table_limit is at most 1073741824 bytes"),
]


@pytest.mark.parametrize(
    ("codec", "options", "craft", "message"), CASES, ids=[f"{c[0]}-{c[2].__name__}" for c in CASES]
)
def test_a_crafted_artifact_is_refused_at_load_naming_the_problem(
    tmp_path: Path, codec: str, options: dict[str, Any], craft: Callable[[Path], None], message: str
) -> None:
    quick: dict[str, Any] = {"iterations": 2} if codec in ("pq", "rq") else {}
    runtime.compress(X, codec, **quick, **options).save(tmp_path / "t")
    runtime.load_table(tmp_path / "t")  # as written, it loads
    craft(tmp_path / "t")
    with pytest.raises(ArtifactCorrupt) as info:
        runtime.load_table(tmp_path / "t")
    assert message in str(info.value)


def test_rq_of_large_values_loads_back(tmp_path: Path) -> None:
    # its norm_range holds squared norms, past 2**50 for values of 1e7: the load check refused
    # what compress had just written (found by a review)
    table = runtime.compress(X * np.float32(1e7), "rq", codebooks=2, bits=4, iterations=2)
    table.save(tmp_path / "t")
    np.testing.assert_array_equal(runtime.load_table(tmp_path / "t").lookup([0, 511]), table.lookup([0, 511]))


def test_a_negative_shared_index_is_refused(tmp_path: Path) -> None:
    # past 65,536 centroids the index is int32, whose negative entries numpy would wrap around
    runtime.compress(X, "shared", centroids=16, iterations=2).save(tmp_path / "t")

    def more_centroids(manifest: dict[str, Any]) -> None:
        manifest["tiers"][0]["params"]["centroids"] = 70_000

    edit_manifest(tmp_path / "t", more_centroids)
    put_array(tmp_path / "t", "tier0/centroids", np.zeros((70_000, 16), np.float32))
    index = stored(tmp_path / "t", "tier0/index").astype(np.int32)
    put_array(tmp_path / "t", "tier0/index", index)
    runtime.load_table(tmp_path / "t")
    index[1] = -1
    put_array(tmp_path / "t", "tier0/index", index)
    with pytest.raises(ArtifactCorrupt, match="index holds -1, not a centroid"):
        runtime.load_table(tmp_path / "t")


def test_a_nan_in_a_tier_projection_is_refused(tmp_path: Path) -> None:
    tiers: list[dict[str, Any]] = [
        {"rows": {"start": 0, "stop": 200}, "codec": "int8"},
        {"rows": {"start": 200, "stop": 512}, "codec": "int8", "dim": 8},
    ]
    runtime.compress(X, tiers=tiers).save(tmp_path / "t")
    basis = stored(tmp_path / "t", "tier1/projection.basis")
    basis[2, 3] = np.nan
    put_array(tmp_path / "t", "tier1/projection.basis", basis)
    with pytest.raises(ArtifactCorrupt, match=r"projection basis holds nan at \[2, 3\]"):
        runtime.load_table(tmp_path / "t")


def test_dropping_self_from_no_candidates_leaves_none() -> None:
    ids, scores = _drop_self(np.zeros((2, 0), np.int64), np.zeros((2, 0), np.float32), np.array([1, 2]))
    assert ids.shape == scores.shape == (2, 0)


def test_a_format_version_below_one_and_a_device_are_named_as_such(tmp_path: Path) -> None:
    # found by a review: format_version 0 was read on and refused for a missing array; inspect
    # /dev/null said it did not exist
    runtime.compress(X, "fp32").save(tmp_path / "t")
    edit_manifest(tmp_path / "t", lambda m: m.update(format_version=0))
    with pytest.raises(ArtifactIncompatible, match="artifact format version 0 is none embserve writes"):
        runtime.load_table(tmp_path / "t")
    with pytest.raises(ArtifactNotFound, match="'/dev/null' is a file; an artifact directory is expected"):
        runtime.load_table("/dev/null")


def test_pq_codeword_tables_past_their_cap_are_refused_before_they_are_built() -> None:
    # found by a security review: a 2 MB artifact of one dimension a subspace built 539 MB of
    # inner-product tables at load (checked by the options, which a load reads the manifest with)
    from runtime.codecs import codec_class

    pq = codec_class("pq")
    assert pq.check_options(2048, {"subspaces": 1024})["subspaces"] == 1024
    assert pq.check_options(4096, {"subspaces": 4096, "bits": 4})["subspaces"] == 4096
    with pytest.raises(InvalidRequest, match="2048 subspaces of 8 bits holds 536870912 bytes"):
        pq.check_options(2048, {"subspaces": 2048})
