"""Tables to and from artifact directories: format 2 written, formats 1 and 2 read.

Every array a manifest names is checksummed by `runtime.artifact`; here each one is also checked
for the dtype and shape the table needs, so a damaged or inconsistent artifact is refused with
ArtifactCorrupt naming the array, before anything is served.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime import artifact
from runtime.codecs import Codec, codec_class
from runtime.errors import ArtifactCorrupt, ArtifactIncompatible, EmbserveError
from runtime.table import Table
from runtime.tiers import Projection, Tier


def _codec_spec(codec: Codec | None) -> dict[str, Any] | None:
    if codec is None:
        return None
    return {"codec": codec.name, "params": codec.params, "trained": sorted(codec.state.arrays)}


def write_table(table: Table, path: str | os.PathLike[str]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    specs = []
    for t, tier in enumerate(table.tiers):
        prefix = f"tier{t}"
        arrays.update({f"{prefix}/{n}": a for n, a in tier.primary.arrays.items()})
        if tier.rerank is not None:
            arrays.update({f"{prefix}.rerank/{n}": a for n, a in tier.rerank.arrays.items()})
        if tier.projection is not None:
            arrays[f"{prefix}/projection.mean"] = tier.projection.mean
            arrays[f"{prefix}/projection.basis"] = tier.projection.basis
        if table.tier_rows is not None:
            arrays[f"{prefix}.rows"] = table.tier_rows[t].astype(np.int64)
        specs.append(
            {
                **(_codec_spec(tier.primary) or {}),
                "rerank": _codec_spec(tier.rerank),
                "rows": tier.rows,
                "dim": tier.primary.dim,
                "projected": tier.projection is not None,
            }
        )
    if table.keys is not None:
        arrays["keys"] = table.keys
    first = table.tiers[0]
    manifest = {
        "codec": first.primary.name,
        "params": first.primary.params,
        "rerank": None if first.rerank is None else {"codec": first.rerank.name, "params": first.rerank.params},
        "rows": table.rows,
        "dim": table.dim,
        "tiers": specs,
        "keyed": table.keyed,
        "missing": table.missing,
        "new_key_tier": table.new_key_tier,
        "sequence": table.sequence,
        "delta_capacity": table.delta_capacity,
        "version": table.version,
        "provenance": table.provenance,
    }
    return artifact.write(path, manifest, arrays)


def _build_codec(name: Any, params: Any, rows: int, dim: int, arrays: dict[str, np.ndarray]) -> Codec:
    if not isinstance(name, str):
        raise ArtifactCorrupt("codec name must be a string")
    if not isinstance(params, dict):
        raise ArtifactCorrupt(f"codec {name!r}: params must be an object")
    try:
        cls = codec_class(name)
    except EmbserveError as exc:
        raise ArtifactIncompatible(f"artifact uses codec {name!r}, which this embserve does not know") from exc
    missing = sorted(set(cls.required_arrays) - set(arrays))
    if missing:
        raise ArtifactCorrupt(f"codec {name!r} needs array {missing[0]!r}, which the manifest does not list")
    stray = sorted(set(arrays) - set(cls.required_arrays) - set(cls.optional_arrays))
    if stray:
        raise ArtifactCorrupt(f"codec {name!r} reads no array {stray[0]!r}, which the manifest lists")
    try:
        checked = cls.check_options(dim, params)
        codec = cls(rows, dim, checked, arrays)
    except (EmbserveError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactCorrupt(f"codec {name!r} cannot be built from this artifact: {exc}") from None
    problem = codec.check_values()
    if problem:
        raise ArtifactCorrupt(f"codec {name!r}: {problem}")
    return codec


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {n.removeprefix(prefix): a for n, a in arrays.items() if n.startswith(prefix)}


def _format1(manifest: dict[str, Any], arrays: dict[str, np.ndarray], rows: int, dim: int) -> dict[str, Any]:
    own = {n: a for n, a in arrays.items() if not n.startswith("rerank.")}
    primary = _build_codec(manifest["codec"], manifest["params"], rows, dim, own)
    rerank = None
    spec = manifest.get("rerank")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict):
            raise ArtifactCorrupt("manifest field 'rerank' must be null or an object with codec and params")
        rerank = _build_codec(spec.get("codec"), spec["params"], rows, dim, _prefixed(arrays, "rerank."))
    elif any(n.startswith("rerank.") for n in arrays):
        # a table without its rerank codec serves the cheap codes' coarser rows without a word
        raise ArtifactCorrupt("the manifest lists rerank arrays but no rerank codec")
    return {"tiers": [Tier(primary, rerank)]}


def _tier(t: int, spec: Any, arrays: dict[str, np.ndarray], dim: int) -> Tier:
    if not isinstance(spec, dict):
        raise ArtifactCorrupt(f"manifest tiers[{t}] must be an object")
    rows, tier_dim = spec.get("rows"), spec.get("dim")
    if not isinstance(rows, int) or rows <= 0 or not isinstance(tier_dim, int) or not 0 < tier_dim <= dim:
        raise ArtifactCorrupt(f"manifest tiers[{t}]: rows and dim must be positive integers (dim <= {dim})")
    own = _prefixed(arrays, f"tier{t}/")
    projection = None
    if spec.get("projected"):
        mean, basis = own.pop("projection.mean", None), own.pop("projection.basis", None)
        if mean is None or basis is None:
            raise ArtifactCorrupt(f"tier {t} is projected but its projection arrays are missing")
        projection = Projection(mean, basis)
        problem = projection.check(dim)
        if problem or basis.shape[1] != tier_dim:
            raise ArtifactCorrupt(
                f"tier {t}: {problem or f'projection basis has {basis.shape[1]} columns, not {tier_dim}'}"
            )
    elif tier_dim != dim:
        raise ArtifactCorrupt(f"tier {t} has dim {tier_dim} without a projection")
    primary = _build_codec(spec.get("codec"), spec.get("params"), rows, tier_dim, own)
    rerank = None
    second = spec.get("rerank")
    if second is not None:
        if not isinstance(second, dict):
            raise ArtifactCorrupt(f"manifest tiers[{t}].rerank must be null or an object")
        theirs = _prefixed(arrays, f"tier{t}.rerank/")
        rerank = _build_codec(second.get("codec"), second.get("params"), rows, tier_dim, theirs)
    return Tier(primary, rerank, projection)


def _format2(manifest: dict[str, Any], arrays: dict[str, np.ndarray], rows: int, dim: int) -> dict[str, Any]:
    specs = manifest.get("tiers")
    if not isinstance(specs, list) or not 1 <= len(specs) <= 255:
        raise ArtifactCorrupt("manifest field 'tiers' must be a list of 1 to 255 tiers")
    tiers = [_tier(t, spec, arrays, dim) for t, spec in enumerate(specs)]
    if sum(t.rows for t in tiers) != rows:
        raise ArtifactCorrupt(f"the tiers hold {sum(t.rows for t in tiers)} rows, the manifest says {rows}")
    tier_rows = None
    if len(tiers) > 1:
        tier_rows = []
        for t in range(len(tiers)):
            held = arrays.get(f"tier{t}.rows")
            if held is None:
                raise ArtifactCorrupt(f"tier {t}: array 'tier{t}.rows' is missing")
            tier_rows.append(held)
    keyed = manifest.get("keyed", False)
    if not isinstance(keyed, bool):
        raise ArtifactCorrupt(f"manifest field 'keyed' must be true or false, got {keyed!r}")
    _refuse_unread(arrays, specs, keyed)
    keys = None
    if keyed:
        keys = arrays.get("keys")
        if keys is None:
            raise ArtifactCorrupt("a keyed table needs the array 'keys'")
    options: dict[str, Any] = {}
    for field, kind in (("missing", str), ("new_key_tier", int), ("sequence", int), ("delta_capacity", int)):
        value = manifest.get(field)
        if value is not None:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ArtifactCorrupt(f"manifest field {field!r} must be a {kind.__name__}")
            options[field] = value
    return {"tiers": tiers, "tier_rows": tier_rows, "keys": keys, **options}


def _refuse_unread(arrays: dict[str, np.ndarray], specs: list[Any], keyed: bool) -> None:
    """A format-2 array no part of the table reads (keys of a table not keyed, a rerank codec's
    arrays without it, a tier that does not exist) means the manifest is not what was written."""
    read = {"keys"} if keyed else set()
    if len(specs) > 1:
        read |= {f"tier{t}.rows" for t in range(len(specs))}
    prefixes = tuple(
        prefix
        for t, spec in enumerate(specs)
        for prefix in (f"tier{t}/", *([f"tier{t}.rerank/"] if spec.get("rerank") is not None else []))
    )
    unread = sorted(n for n in arrays if n not in read and not n.startswith(prefixes))
    if unread:
        raise ArtifactCorrupt(f"the manifest lists array {unread[0]!r}, which no part of the table reads")


def read_table(path: str | os.PathLike[str], verify: bool = True) -> Table:
    manifest = artifact.read_manifest(path)
    arrays = artifact.load_arrays(path, manifest, verify=verify)
    rows, dim = manifest["rows"], manifest["dim"]
    if rows <= 0 or dim <= 0:
        raise ArtifactCorrupt(f"rows and dim must be positive, got {rows} × {dim}")
    parts = (
        _format1(manifest, arrays, rows, dim)
        if manifest["format_version"] < 2
        else _format2(manifest, arrays, rows, dim)
    )
    provenance = manifest.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise ArtifactCorrupt(f"manifest field 'provenance' must be an object, got {type(provenance).__name__}")
    try:
        return Table(
            **parts,
            version=str(manifest.get("version", "")),
            provenance=provenance,
            path=Path(path),
        )
    except EmbserveError as exc:
        # tier rows that overlap or leave a gap, repeated keys, ...: the artifact is inconsistent
        raise ArtifactCorrupt(f"{str(path)!r}: {exc}") from None
