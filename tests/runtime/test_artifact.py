"""Artifacts: round trip, memory mapping, and a clear typed error for each kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import ArtifactCorrupt, ArtifactIncompatible, ArtifactNotFound
from tests.conftest import low_rank_table


@pytest.fixture
def saved(tmp_path: Path) -> tuple[runtime.Table, Path]:
    t = runtime.compress(low_rank_table(500, 16), "pq", subspaces=4, iterations=4, rerank="int8", seed=2)
    return t, t.save(tmp_path / "items" / "v1")


def test_round_trip_is_identical(saved: tuple[runtime.Table, Path]) -> None:
    t, path = saved
    loaded = runtime.load_table(path)
    assert (loaded.rows, loaded.dim, loaded.codec, loaded.params, loaded.nbytes) == (
        t.rows,
        t.dim,
        t.codec,
        t.params,
        t.nbytes,
    )
    assert loaded.rerank is not None and loaded.rerank.name == "int8"
    q = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(loaded.search(q, 5, oversample=3)[0], t.search(q, 5, oversample=3)[0])
    np.testing.assert_array_equal(loaded.lookup([1, 2]), t.lookup([1, 2]))
    assert isinstance(loaded.primary.arrays["codes"].base, np.memmap) or loaded.primary.arrays["codes"].base is not None
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert set(manifest["arrays"]) == {"tier0/codes", "tier0/codebooks", "tier0.rerank/rows"}
    assert manifest["tiers"][0]["trained"] == ["codebooks"] and manifest["sequence"] == 0
    assert all(len(e["sha256"]) == 64 for e in manifest["arrays"].values())


def test_truncated_file_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    file = path / "tier0--codes.npy"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ArtifactCorrupt, match="codes"):
        runtime.load_table(path)


def test_flipped_byte_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    file = path / "tier0.rerank--rows.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        runtime.load_table(path)


def test_missing_array_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    (path / "tier0--codebooks.npy").unlink()
    with pytest.raises(ArtifactCorrupt, match="codebooks"):
        runtime.load_table(path)


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _edit_tier(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["tiers"][0].update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_unknown_codec_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    _edit_tier(path, codec="lattice")
    with pytest.raises(ArtifactIncompatible, match="lattice"):
        runtime.load_table(path)


def test_newer_format_version_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    _edit_manifest(path, format_version=99)
    with pytest.raises(ArtifactIncompatible, match="newer"):
        runtime.load_table(path)


def test_array_missing_from_manifest_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["arrays"]["tier0/codes"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactCorrupt, match="codes"):
        runtime.load_table(path)


def test_wrong_shape_for_params_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    _edit_tier(path, params={"subspaces": 8, "bits": 8})
    with pytest.raises(ArtifactCorrupt):
        runtime.load_table(path)


def test_missing_and_garbled_manifests(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        runtime.load_table(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactNotFound):
        runtime.load_table(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactCorrupt, match="JSON"):
        runtime.load_table(tmp_path / "empty")


def test_file_outside_the_artifact_is_refused(saved: tuple[runtime.Table, Path]) -> None:
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["tier0/codes"]["file"] = "../codes.npy"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactCorrupt, match="outside"):
        runtime.load_table(path)
