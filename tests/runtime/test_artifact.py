"""Artifacts: round trip, memory mapping, and a clear typed error for each kind of damage."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # found by a probe: each loaded, serving something other than what was written
        ({"tiers": [{"rerank": None}]}, "array 'tier0.rerank/rows', which no part of the table reads"),
        ({"keyed": "no"}, "'keyed' must be true or false, got 'no'"),
        ({"arrays": {"tier7/codes": "tier0/codes"}}, "array 'tier7/codes', which no part"),
        ({"arrays": {"keys": "tier0/codes"}}, "array 'keys', which no part of the table reads"),
    ],
)
def test_arrays_no_part_reads_and_ill_typed_flags_are_refused(
    saved: tuple[runtime.Table, Path], edit: dict[str, Any], message: str
) -> None:
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    for name, copied in edit.get("arrays", {}).items():
        manifest["arrays"][name] = manifest["arrays"][copied]
    if "tiers" in edit:
        manifest["tiers"][0].update(edit["tiers"][0])
    manifest.update({k: v for k, v in edit.items() if k not in ("arrays", "tiers")})
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactCorrupt, match=re.escape(message)):
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


def save_failing_at_the_second(real_save: Any, failure: BaseException) -> Any:
    """np.save that writes the first array and raises `failure` at the second."""
    calls = []

    def save(file: object, array: np.ndarray, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise failure
        real_save(file, array, **kwargs)

    return save


def test_a_failed_or_interrupted_rewrite_leaves_the_previous_artifact_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a probe: `compress --force` over an artifact rewrote its files one by one, so a
    # full disk or a Ctrl-C left the old manifest naming new files (sha256 failures)
    x = low_rank_table(300, 16, seed=1)
    old = runtime.compress(x, "int4", rerank="fp32")
    old.save(tmp_path / "t")
    before = sorted(p.name for p in (tmp_path / "t").iterdir())
    new = runtime.compress(low_rank_table(300, 16, seed=2), "int4", rerank="fp32")
    real_save = np.save
    for failure in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        monkeypatch.setattr(np, "save", save_failing_at_the_second(real_save, failure))
        with pytest.raises(type(failure)):
            new.save(tmp_path / "t")
        monkeypatch.setattr(np, "save", real_save)
        assert sorted(p.name for p in (tmp_path / "t").iterdir()) == before  # nothing left behind
        reloaded = runtime.load_table(tmp_path / "t")
        np.testing.assert_array_equal(reloaded.lookup(np.arange(300)), old.lookup(np.arange(300)))


def test_a_rewrite_switches_whole_and_removes_the_files_it_replaced(tmp_path: Path) -> None:
    x = low_rank_table(300, 16, seed=1)
    runtime.compress(x, "int8").save(tmp_path / "t")
    for seed in (2, 3):
        table = runtime.compress(low_rank_table(300, 16, seed=seed), "pq", subspaces=4, iterations=2)
        table.save(tmp_path / "t")
        manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
        named = {entry["file"] for entry in manifest["arrays"].values()}
        assert {p.name for p in (tmp_path / "t").iterdir()} == named | {"manifest.json", ".write.lock"}
        np.testing.assert_array_equal(runtime.load_table(tmp_path / "t").lookup([0, 299]), table.lookup([0, 299]))


def test_two_writers_at_once_leave_a_complete_artifact(tmp_path: Path) -> None:
    tables = [runtime.compress(low_rank_table(2000, 32, seed=s), "int8", rerank="fp32") for s in (1, 2)]
    for attempt in range(6):
        out = tmp_path / str(attempt)
        tables[0].save(out)
        writers = [threading.Thread(target=table.save, args=(out,)) for table in tables]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        loaded = runtime.load_table(out)  # every sha256 holds
        assert any(np.array_equal(loaded.lookup([5, 1999]), t.lookup([5, 1999])) for t in tables)


def test_a_manifest_that_names_itself_survives_a_rewrite(tmp_path: Path) -> None:
    # found by a review: a rewrite removes the files the previous manifest named, this one too
    runtime.compress(low_rank_table(100, 8, seed=1), "int8").save(tmp_path / "t")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    manifest["arrays"]["extra"] = {"file": "manifest.json", "dtype": "<f4", "shape": [1], "sha256": "0"}
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    table = runtime.compress(low_rank_table(100, 8, seed=2), "int8")
    table.save(tmp_path / "t")
    np.testing.assert_array_equal(runtime.load_table(tmp_path / "t").lookup([3]), table.lookup([3]))


def test_a_rewrite_removes_what_a_killed_writer_left_and_keeps_other_files(tmp_path: Path) -> None:
    # found by a probe: a writer killed outright (SIGKILL) left a full copy of the table behind,
    # which no later write removed
    out = tmp_path / "t"
    runtime.compress(low_rank_table(100, 8, seed=1), "int8").save(out)
    leftovers = ["tier0--rows.0123abcd.npy", ".tier0--rows.ab_c9xyz", ".manifest.qwertyui"]
    for name in [*leftovers, "notes.txt", "tier0--rows.backup.npy"]:
        (out / name).write_bytes(b"x")
    runtime.compress(low_rank_table(100, 8, seed=2), "int8").save(out)
    names = {p.name for p in out.iterdir()}
    assert not names & set(leftovers) and {"notes.txt", "tier0--rows.backup.npy"} <= names


def test_paths_that_are_not_paths_or_cannot_be_reached_are_named(tmp_path: Path) -> None:
    # found by a probe: each raised TypeError or OSError from deep in pathlib
    for bad in (None, 5, b"dir", ""):
        with pytest.raises(runtime.InvalidRequest, match=r"artifact path must be a non-empty str or os\.PathLike"):
            runtime.load_table(bad)  # type: ignore[arg-type]
    with pytest.raises(ArtifactNotFound, match="cannot be reached: File name too long"):
        runtime.load_table(tmp_path / ("x" * 5000))
    with pytest.raises(runtime.InvalidRequest, match=r"parallel_min_ids must be in 1\.\.4096, got '5'"):
        runtime.load_table(tmp_path, parallel_min_ids="5")  # type: ignore[arg-type]
    with pytest.raises(runtime.InvalidRequest, match="artifact path must be"):
        runtime.compress(low_rank_table(20, 4), "fp32").save(None)  # type: ignore[arg-type]
