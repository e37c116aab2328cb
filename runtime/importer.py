"""`embserve import`: every embedding table of a checkpoint into artifacts and a `tables.json`.

Output directory layout:

    DIR/tables.json      {"format_version": 1, "source": ..., "tables": [{"name", "path", "tensor",
                          "rows", "dim", "codec", "rerank", "nbytes"}]}; `path` is relative to DIR
    DIR/<name>/          one artifact directory per table

Everything is checked (keys, shapes, dtypes, names) before anything is compressed, and the
directory is built under a temporary name beside DIR and renamed into place at the end, so a
failure leaves nothing behind (and, with `force`, the old DIR untouched).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import artifact
from runtime.codecs import codec_class
from runtime.errors import JSON_FILE_ERRORS, InvalidRequest
from runtime.sources import Source, describe_candidates, embedding_keys, read_table, table_name
from runtime.table import Table, compress
from runtime.validation import check_table_name

TABLES_FILE = "tables.json"
TABLES_FILE_VERSION = 1


@dataclass(frozen=True)
class PlannedTable:
    name: str
    key: str
    rows: int
    dim: int


def plan_tables(source: Source, keys: list[str] | None = None) -> list[PlannedTable]:
    """The tables to import: `keys` when given, else every embedding-like key (a `.npy` file's
    one tensor, named after the file; every 2-D floating-point array of a `.npz` archive). Each
    must be a 2-D floating-point tensor; names come from the keys (TorchRec's table names, or
    module names), made unique by the full key when two would clash."""
    if keys:
        chosen = keys
    elif source.format == "npy":
        chosen = list(source.tensors)  # the file is the table: its name says nothing of embeddings
    elif source.format == "npz":
        # an archive of named arrays: each 2-D floating-point one is a table of its name
        chosen = [key for key, info in source.tensors.items() if len(info.shape) == 2 and info.is_float]
    else:
        chosen = embedding_keys(source.tensors)
    if not chosen:
        raise InvalidRequest(
            f"found no embedding table in {source.path}: {describe_candidates(source.tensors.values())}"
        )
    infos = []
    for key in chosen:
        info = source.info(key)
        if len(info.shape) != 2 or not info.is_float:
            read_table(source, key)  # raises the message naming what is wrong
        infos.append(info)
    short = [table_name(info.key) for info in infos]
    planned = []
    for info, name in zip(infos, short, strict=True):
        if short.count(name) > 1:
            name = info.key.removesuffix(".weight").replace(".", "_")
        try:
            check_table_name(name)
            unusable = name.startswith(".")  # a directory of DIR that ls hides, or "..", DIR's parent
        except InvalidRequest:
            unusable = True
        if unusable:
            raise InvalidRequest(f"tensor {info.key!r} gives table name {name!r}, which is not a valid table name")
        planned.append(PlannedTable(name, info.key, int(info.shape[0]), int(info.shape[1])))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"tensors give duplicate table names: {names}")
    return planned


def check_output(out: Path, force: bool, inputs: tuple[Path, ...] = (), directory: bool = True) -> None:
    """Refuse, before any work, an output that cannot be made (a file where a directory must be),
    that is or holds one of the `inputs` (replacing it would destroy the input), or that is an
    existing non-empty directory (an artifact, an import) without `force`; `directory` False for
    an output that is a file (a plan)."""
    # out and its missing ancestors, deepest first, up to the nearest that exists
    missing = []
    nearest = out
    while not nearest.exists() and nearest != nearest.parent:
        missing.append(nearest)
        nearest = nearest.parent
    if missing and not nearest.is_dir():
        raise InvalidRequest(f"output {str(out)!r} cannot be made: {str(nearest)!r} is not a directory")
    resolved = out.resolve()
    for source in inputs:
        held = source.resolve()
        if held == resolved or resolved in held.parents:
            raise InvalidRequest(
                f"output {str(out)!r} is or holds the input {str(source)!r}: writing it would replace it"
            )
    if not directory:
        if out.is_dir():
            raise InvalidRequest(f"output {str(out)!r} is a directory; name a file")
        if out.exists() and not force:
            raise InvalidRequest(f"output {str(out)!r} already exists; pass --force to replace it")
        _check_makeable(out, missing[1:])  # its directories: the file itself is written last
        _refuse_unwritable(out.parent if out.parent.exists() else nearest, out)
        return
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"output {str(out)!r} exists and is not a directory")
    _check_makeable(out, missing)
    if out.is_dir() and any(p.name != artifact.WRITE_LOCK for p in out.iterdir()) and not force:
        what = "an artifact" if (out / artifact.MANIFEST).exists() else "files"
        raise InvalidRequest(f"output directory {str(out)!r} already holds {what}; pass --force to replace it")
    if out.is_dir():
        # an artifact is written inside it: on a read-only mount that failed after the training
        _refuse_unwritable(out, out)


def _refuse_unwritable(directory: Path, out: Path) -> None:
    """Refuse an output whose `directory` this process cannot write in (its permissions, a
    read-only filesystem), before any work."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidRequest(f"output {str(out)!r} cannot be written: {str(directory)!r} is not writable")


def _check_makeable(out: Path, missing: list[Path]) -> None:
    """Make the `missing` directories of `out` (deepest first, as `check_output` found them) and
    remove them again: one that cannot be made (a read-only or pseudo filesystem) is refused now,
    not after minutes of training, and a command refused later leaves nothing behind."""
    try:
        for directory in reversed(missing):
            directory.mkdir()
    except OSError as exc:
        raise InvalidRequest(f"output {str(out)!r} cannot be made: {exc.strerror or exc}") from None
    finally:
        for directory in missing:
            with contextlib.suppress(OSError):
                directory.rmdir()


def replace_dir(built: Path, out: Path) -> None:
    """Move a finished directory to `out`, replacing what was there only after the move succeeds."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.replace(out, old / out.name)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_tables(
    source: Source,
    out: str | os.PathLike[str],
    codec: str,
    *,
    keys: list[str] | None = None,
    force: bool = False,
    on_table: Callable[[PlannedTable, Table], None] | None = None,
    **compress_options: Any,
) -> dict[str, Any]:
    """Compress every planned table of `source` with `codec` (and `compress_options`, as
    `runtime.compress` takes them) into DIR/<name>/ and write DIR/tables.json; returns its content."""
    target = Path(out)
    # the path's own checks first (force=True: an existing directory is judged here, then by
    # check_output again with the caller's force), so a directory that is not an import is named
    # as such rather than asked for --force
    check_output(target, True, inputs=(Path(source.path),))
    if target.is_dir() and not (target / TABLES_FILE).is_file() and any(target.iterdir()):
        # the whole directory is swapped for the new import: it took unrelated files with it
        raise InvalidRequest(
            f"output directory {str(target)!r} holds files but no {TABLES_FILE}: --force replaces an earlier "
            "import only; choose an empty or new directory"
        )
    check_output(target, force, inputs=(Path(source.path),))
    if target.is_symlink():
        target = target.resolve()  # the directory it names is replaced, not the link by a directory
    if target.resolve() in (Path.cwd(), *Path.cwd().parents):
        # it is swapped whole by a rename, which the working directory (or one above it) refuses
        raise InvalidRequest(f"output {str(out)!r} is or holds the working directory; name a directory below it")
    planned = plan_tables(source, keys)
    _check_options(planned, codec, compress_options)
    made = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new."))
    try:
        entries = []
        for plan in planned:
            try:
                table = compress(
                    read_table(source, plan.key), codec, source=f"{source.path}:{plan.key}", **compress_options
                )
            except InvalidRequest as exc:
                raise InvalidRequest(f"tensor {plan.key!r}: {exc}") from None
            table.save(building / plan.name)
            entries.append(
                {
                    "name": plan.name,
                    "path": plan.name,
                    "tensor": plan.key,
                    "rows": table.rows,
                    "dim": table.dim,
                    "codec": table.codec,
                    "rerank": table.rerank.name if table.rerank is not None else None,
                    "nbytes": table.nbytes,
                }
            )
            if on_table is not None:
                on_table(plan, table)
        index = {"format_version": TABLES_FILE_VERSION, "source": str(source.path), "tables": entries}
        (building / TABLES_FILE).write_text(json.dumps(index, indent=2) + "\n")
        os.chmod(building, 0o755)  # mkdtemp makes it 0700; the server may run as another user
        replace_dir(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        for directory in made:  # deepest first: what this import made, if nothing else is there
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return index


def _check_options(planned: list[PlannedTable], codec: str, compress_options: dict[str, Any]) -> None:
    """The codec options against every table's shape (`pq` subspaces must divide each dimension),
    before any table is compressed: a refusal found at the third table came after minutes of the
    first two, and named no tensor."""
    named = set(inspect.signature(compress).parameters)
    options = {k: v for k, v in compress_options.items() if k not in named}
    rerank = compress_options.get("rerank")
    for plan in planned:
        try:
            codec_class(codec).check_options(plan.dim, options)
            if rerank is not None:
                codec_class(rerank).check_options(plan.dim, {})
        except InvalidRequest as exc:
            raise InvalidRequest(f"tensor {plan.key!r}: {exc}") from None


def read_tables_file(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """[(name, artifact directory)] of a `tables.json`; relative paths are taken from its directory."""
    file = Path(path)
    if file.is_dir():
        file = file / TABLES_FILE
    try:
        index = json.loads(file.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"tables file {str(file)!r} does not exist") from None
    except JSON_FILE_ERRORS as exc:
        raise InvalidRequest(f"tables file {str(file)!r} cannot be read: {exc}") from None
    tables = index.get("tables") if isinstance(index, dict) else None
    if not isinstance(tables, list):
        raise InvalidRequest(f"tables file {str(file)!r} must be an object with a 'tables' list")
    specs = []
    for i, entry in enumerate(tables):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("path"), str)
        ):
            raise InvalidRequest(f"tables file {str(file)!r}: tables[{i}] needs string 'name' and 'path'")
        check_table_name(entry["name"], f"tables file {str(file)!r}: tables[{i}]: ")
        specs.append((entry["name"], file.parent / entry["path"]))
    return specs
