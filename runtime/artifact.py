"""On-disk format of a table version: a directory with `manifest.json` and one `.npy` per array.

manifest.json (format 2; runtime/tableio.py reads and writes the table fields):
  format_version   int, this module's FORMAT_VERSION when written
  codec, params    tier 0's primary codec and its options (what format 1 had)
  rerank           null, or {"codec", "params"} of tier 0's rescoring codec
  rows, dim        the table's shape
  tiers            [{"codec", "params", "rerank", "rows", "dim", "projected", "trained"}], one a tier
  keyed, missing, new_key_tier, sequence, delta_capacity   keys, updates and their log position
  arrays           {name: {"file", "dtype", "shape", "sha256"}}: "keys", "tier<t>.rows" (several
                   tiers), "tier<t>/<codec array>", "tier<t>.rerank/<array>",
                   "tier<t>/projection.mean", "tier<t>/projection.basis"; files are named with
                   "/" written as "--"
  provenance       free-form: created_at, embserve version, source, seed
Format 1 (one codec, arrays unprefixed, rerank arrays "rerank.<name>") still loads.

Loading memory-maps every array (processes serving one artifact share the page cache) after
checking its size and sha256, so a truncated, flipped or missing file is refused before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import JSON_FILE_ERRORS, ArtifactCorrupt, ArtifactIncompatible, ArtifactNotFound

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
FILE_MODE = 0o644
"""Artifact files are readable by every user: a container's user must read tables mounted from
the host (temporary files are created 0600, so the mode is set before each rename)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


WRITE_LOCK = ".write.lock"
"""A file in the artifact directory that writers hold an exclusive flock on, one at a time."""


def write(path: str | os.PathLike[str], manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays and manifest into directory `path` (created when missing).

    A new version never overwrites a file the directory's current manifest names, so a write that
    fails (a full disk) or is interrupted leaves the previous artifact whole: each array goes to a
    file of its own (`tier0--codes.npy`, or with a random suffix where that name is taken), the
    manifest is switched to them by one rename, and only then are the files the previous manifest
    named removed, with what a writer killed outright left of the same arrays. A reader sees one
    version or the other, never a mix; a failed write removes the files it made. Writers to one
    directory take turns (an flock, released by the kernel even when its holder is killed), so the
    last one's version is the one left, whole."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / WRITE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = named_files(out)
        entries = _write_version(out, manifest, arrays)
        # the previous version's files, and what a writer killed outright (SIGKILL, power) left of
        # the same arrays: claimed files and temporaries no manifest names, a copy of the table each
        stems = "|".join(re.escape(name.replace("/", "--")) for name in arrays) or "(?!)"
        leftover = re.compile(rf"(?:{stems})\.[0-9a-f]{{8}}\.npy|\.(?:{stems}|manifest)\.[a-z0-9_]{{8}}")
        kept = {entry["file"] for entry in entries.values()}
        for file in out.iterdir():
            if file.name not in kept and (file.name in previous or leftover.fullmatch(file.name)):
                with contextlib.suppress(OSError):
                    file.unlink()
    return out


def _write_version(out: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each array to a new file, then the manifest naming them by one rename; -> the manifest's
    array entries. On any failure the files made are removed and the previous manifest stands."""
    made: list[Path] = []
    try:
        entries = {}
        for name, array in arrays.items():
            # format 2 namespaces arrays by tier ("tier0/codes"); files stay flat in the directory
            stem = name.replace("/", "--")
            with tempfile.NamedTemporaryFile(dir=out, prefix=f".{stem}.", delete=False) as fh:
                made.append(Path(fh.name))
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            os.chmod(fh.name, FILE_MODE)
            target = _claim_name(out, stem, Path(fh.name))
            made[-1] = target
            entries[name] = {
                "file": target.name,
                "dtype": np.dtype(array.dtype).str,
                "shape": list(array.shape),
                "sha256": sha256_file(target),
            }
        full = dict(manifest, format_version=FORMAT_VERSION, arrays=entries)
        with tempfile.NamedTemporaryFile(mode="w", dir=out, prefix=".manifest.", delete=False) as text:
            made.append(Path(text.name))
            text.write(json.dumps(full, indent=2, sort_keys=True) + "\n")
        os.chmod(text.name, FILE_MODE)
        os.replace(text.name, out / MANIFEST)
    except BaseException:
        for file in made:
            with contextlib.suppress(OSError):
                file.unlink()
        raise
    return entries


def named_files(directory: Path) -> set[str]:
    """The array files the directory's manifest names (none when it has no readable one)."""
    try:
        listed = json.loads((directory / MANIFEST).read_text())["arrays"].values()
        named = {e["file"] for e in listed if isinstance(e.get("file"), str) and Path(e["file"]).name == e["file"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return set()
    return named - {MANIFEST}  # a manifest written by hand that names itself must not be removed


def _claim_name(directory: Path, stem: str, written: Path) -> Path:
    """Gives the finished file `written` its name: `<stem>.npy`, or `<stem>.<random>.npy` where
    the version being replaced holds that one (the caller holds the directory's write lock)."""
    for suffix in ("", *(f".{secrets.token_hex(4)}" for _ in range(8))):
        target = directory / f"{stem}{suffix}.npy"
        if not target.exists():
            os.replace(written, target)
            return target
    raise FileExistsError(f"no free file name for array {stem!r} in {str(directory)!r}")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    root = Path(path)
    file = root / MANIFEST
    try:
        root.stat()
    except FileNotFoundError:
        pass  # named below
    except OSError as exc:  # a name too long, a loop of links, a component that is a file, ...
        raise ArtifactNotFound(f"artifact directory {str(root)[:200]!r} cannot be reached: {exc.strerror}") from None
    if root.exists() and not root.is_dir():  # a file, or a device such as /dev/null
        raise ArtifactNotFound(
            f"{str(root)!r} is a file; an artifact directory is expected (make one with `embserve compress`)"
        )
    if not root.is_dir():
        raise ArtifactNotFound(f"artifact directory {str(root)!r} does not exist")
    if not file.is_file():
        raise ArtifactNotFound(f"{str(file)!r} is missing: not an embserve artifact")
    try:
        manifest = json.loads(file.read_text())
    except JSON_FILE_ERRORS as exc:
        raise ArtifactCorrupt(f"{str(file)!r} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ArtifactCorrupt(f"{str(file)!r} must hold a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ArtifactCorrupt(f"{str(file)!r} has no integer format_version")
    if version < 1:
        raise ArtifactIncompatible(f"artifact format version {version} is none embserve writes (1 to {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise ArtifactIncompatible(
            f"artifact format version {version} is newer than this embserve reads ({FORMAT_VERSION}); upgrade embserve"
        )
    for key, kind in (("codec", str), ("rows", int), ("dim", int), ("arrays", dict), ("params", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactCorrupt(f"{str(file)!r}: field {key!r} is missing or not a {kind.__name__}")
    return manifest


def load_arrays(path: str | os.PathLike[str], manifest: dict[str, Any], verify: bool = True) -> dict[str, np.ndarray]:
    """Memory-map every array the manifest names, after checking size, dtype, shape and sha256."""
    root = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, entry in manifest["arrays"].items():
        try:
            file = root / entry["file"]
            dtype, shape, digest = np.dtype(entry["dtype"]), tuple(entry["shape"]), entry["sha256"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactCorrupt(f"manifest entry for array {name!r} is malformed: {exc}") from None
        if Path(entry["file"]).name != entry["file"]:
            raise ArtifactCorrupt(f"array {name!r} names a file outside the artifact: {entry['file']!r}")
        if not file.is_file():
            raise ArtifactCorrupt(f"array {name!r}: file {str(file)!r} is missing")
        if verify and sha256_file(file) != digest:
            raise ArtifactCorrupt(f"array {name!r}: {str(file)!r} fails its sha256 check (corrupt or truncated)")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ArtifactCorrupt(f"array {name!r}: {str(file)!r} cannot be read: {exc}") from None
        if not array.flags.c_contiguous:
            raise ArtifactCorrupt(
                f"array {name!r}: {str(file)!r} is stored in Fortran order; embserve reads C-ordered arrays"
            )
        if array.dtype != dtype or array.shape != shape:
            raise ArtifactCorrupt(
                f"array {name!r}: file holds {array.dtype} {array.shape}, manifest says {dtype} {shape}"
            )
        # a plain ndarray view of the mapping: numba takes it, no copy is made
        arrays[name] = np.asarray(array)
    return arrays


def release_pages(array: np.ndarray) -> None:
    """Drop this process's resident pages of a file-mapped array (they stay in the page cache and
    fault back in if read again). Used once a codec has built a layout it reads instead; a no-op
    for arrays in anonymous memory and where madvise is unavailable."""
    base: Any = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    mapping = getattr(base, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None:
        return
    try:
        mapping.madvise(advice)
    except (OSError, ValueError):
        return
