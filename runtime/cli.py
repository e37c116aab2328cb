"""Offline commands of the `embserve` CLI: compress, plan, import, inspect, eval.

`service.cli` adds `serve` and owns the entry point; these work without the service installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import artifact
from runtime.codecs import CODECS, codec_options
from runtime.errors import JSON_FILE_ERRORS, EmbserveError, InvalidRequest
from runtime.importer import check_output, import_tables
from runtime.planner import against_fp32, compress_to_budget, plan
from runtime.sources import NpySource, Source, describe_candidates, open_source, read_table
from runtime.table import Table, compress, load_table
from runtime.validation import check_id_matrix

# one flag an option name, derived from the options the codecs declare; a flag given for a codec
# without that option is refused by the codec
CODEC_FLAGS = codec_options()


def _add_codec_flags(parser: argparse.ArgumentParser) -> None:
    for name, declared in CODEC_FLAGS.items():
        kind = declared[0][1].kind
        text = "; ".join(f"{codec}: {option.help} (default {option.default})" for codec, option in declared)
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, help=text)


def add_commands(sub: Any) -> None:
    """Register compress / import / inspect / eval on an argparse subparsers object."""
    p = sub.add_parser("compress", help="compress one float table into an artifact directory")
    p.add_argument(
        "input",
        type=Path,
        help="(n, d) table: a .npy file (floating point, cast to float32), a .npz archive, a .safetensors file "
        "or a PyTorch checkpoint (--tensor names the table where the file holds several)",
    )
    p.add_argument("--tensor", help="key of the table in a safetensors file or PyTorch state dict")
    p.add_argument("--codec", choices=sorted(CODECS), help="the codec of a one-tier table (or give --tiers)")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--force", action="store_true", help="replace an artifact already at --out")
    _add_codec_flags(p)
    p.add_argument("--rerank", choices=sorted(CODECS), help="second, richer codec used to rescore candidates")
    p.add_argument(
        "--tiers",
        type=Path,
        help='JSON file: a list of tiers, each {"rows": [ids] or {"start", "stop"}, "codec", '
        '"rerank", "rerank_options", "dim", codec options}; together they hold every row once',
    )
    p.add_argument("--keys", type=Path, help="(n,) .npy of distinct int64 keys: a keyed table")
    p.add_argument("--missing", choices=["error", "zeros"], default="error", help="lookup of an absent key")
    p.add_argument("--delta-capacity", type=int, help="rows the update delta holds before compaction")
    _add_budget_flags(p, required=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", help="version label (default: creation time)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "plan", help="plan the best tiered table within a memory budget (prints it, writes --tiers JSON)"
    )
    p.add_argument("input", type=Path, help="(n, d) .npy file, floating point (cast to float32)")
    _add_budget_flags(p, required=True)
    p.add_argument("--keys", type=Path, help="(n,) .npy of int64 keys: plan a keyed table (the key map is counted)")
    p.add_argument("--out", required=True, type=Path, help="the --tiers JSON file to write for compress")
    p.add_argument("--force", action="store_true", help="replace a file already at --out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "import",
        help="compress every embedding table of a checkpoint into DIR/<table>/ plus DIR/tables.json",
        description="Finds every 2-D floating-point embedding weight of a PyTorch state dict "
        "(nn.Embedding / nn.EmbeddingBag modules, TorchRec EmbeddingBagCollection and "
        "EmbeddingCollection tables), a safetensors file, a .npz archive (every 2-D float array) or a .npy "
        "file, compresses each with "
        "--codec, and writes DIR/tables.json for `embserve serve --tables-file`.",
    )
    p.add_argument("input", type=Path, help="a PyTorch checkpoint, a .safetensors file, a .npz archive or a .npy file")
    p.add_argument("--out", required=True, type=Path, help="directory to write (one artifact per table)")
    p.add_argument(
        "--tensor",
        action="append",
        dest="tensors",
        metavar="KEY",
        help="import this key (repeatable) instead of every embedding-like key",
    )
    p.add_argument("--codec", default="int8", choices=sorted(CODECS), help="codec of every table (default int8)")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier import at --out (a directory with tables.json)"
    )
    _add_codec_flags(p)
    p.add_argument("--rerank", choices=sorted(CODECS), help="second, richer codec used to rescore candidates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", help="version label of every table (default: creation time)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "inspect",
        help="describe an artifact and verify its checksums",
        description="Prints an artifact's manifest (codecs, tiers, sizes, its plan if budgeted) as JSON after "
        "verifying every array's sha256; exit status 2 naming the first array that fails.",
    )
    p.add_argument("dir", type=Path, help="the artifact directory")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("eval", help="recall@k, reconstruction error, size and speed of an artifact (JSON)")
    p.add_argument("dir", type=Path)
    p.add_argument("--source", required=True, type=Path, help="the float32 .npy the artifact was made from")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--queries", type=Path, help="(q, d) .npy query vectors")
    group.add_argument("--query-ids", type=Path, help="(q,) .npy stored ids used as queries")
    p.add_argument("--truth", type=Path, help="(q, >=k) .npy true neighbour ids (default: exact search on --source)")
    p.add_argument("--k", type=int, default=10, help="neighbours a query (recall@k; default 10)")
    p.add_argument("--metric", default="ip", choices=["ip", "l2", "hamming"], help="search metric (default ip)")
    p.add_argument(
        "--oversample", type=int, default=1, help="candidates k × this before a rerank codec rescores (default 1)"
    )
    p.add_argument("--exclude-self", action="store_true", help="with --query-ids: drop the query's own id")
    p.set_defaults(func=cmd_eval)


def _codec_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in CODEC_FLAGS if getattr(args, name) is not None}


def _add_budget_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--budget",
        required=required,
        help="memory budget of the whole table: 512MiB, 2GB, 1e9 (bytes)"
        + ("" if required else "; compress then plans the tiers (as `embserve plan` does)"),
    )
    parser.add_argument("--freq", type=Path, help="(n,) .npy lookup frequencies of the rows (default: all equal)")
    parser.add_argument("--queries", type=Path, help="(q, d) .npy sample queries: recall@10 breaks near-ties")
    parser.add_argument(
        "--menu",
        type=Path,
        help='JSON list of menu entries, each {"codec", "dim", codec options as keys} (default: all)',
    )


def _budget_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The planner's optional inputs named by the budget flags, loaded."""
    menu = None if args.menu is None else _read_json(args.menu, "menu")
    return {
        "freq": _load_npy(args.freq, "freq") if args.freq is not None else None,
        "queries": _load_npy(args.queries, "queries") if args.queries is not None else None,
        "menu": menu,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    given = (args.input, args.keys, args.freq, args.queries, args.menu)
    check_output(args.out, args.force, inputs=tuple(p for p in given if isinstance(p, Path)), directory=False)
    # as compress reads it: a plan for an input compress refuses printed a command that failed
    x = _floating(_load_npy(args.input, "input"), args.input)
    keys = _load_npy(args.keys, "keys") if args.keys is not None else None
    chosen = plan(x, args.budget, keys=keys, seed=args.seed, **_budget_inputs(args))
    # written beside it, then renamed over it: a full disk left half a plan where the old one was
    written = None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, prefix=f".{args.out.name}.", delete=False) as fh:
            written = Path(fh.name)
            fh.write(json.dumps(chosen.tier_specs()))
        os.chmod(written, 0o644)  # as a file written in place would be, not the temporary's 0600
        os.replace(written, args.out)
    except OSError as exc:
        if written is not None:
            written.unlink(missing_ok=True)
        raise InvalidRequest(f"cannot write the plan to {str(args.out)!r}: {exc}") from None
    print(chosen.text())
    keyed = f" --keys {args.keys}" if args.keys is not None else ""
    print(f"wrote {args.out}: embserve compress {args.input} --tiers {args.out}{keyed} --out DIR")
    return 0


class _ProgressBar:
    """tqdm bars, one per stage, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            # encoding counts rows, so the bar shows rows/s
            unit = "rows" if stage == "encode" else "it"
            bar = self.bars[stage] = tqdm(
                total=total, desc=stage, unit=unit, unit_scale=unit == "rows", file=sys.stderr, leave=True
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise InvalidRequest(f"{what} file {str(path)!r} does not exist")
    with path.open("rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            # np.load would try it as a pickle and say "pickled data" was refused
            raise InvalidRequest(f"{what} {str(path)!r} is not a .npy file (write it with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: {exc}") from None


def _floating(x: np.ndarray, path: Path) -> np.ndarray:
    """An input table read from `path`, refused unless floating point: as import and --tensor
    refuse it, an int64 .npy is more likely ids or counts than a table, and the library would
    cast it without a word."""
    if x.dtype.kind != "f":
        raise InvalidRequest(f"{path} has dtype {x.dtype}; an embedding table must be floating point")
    return x


def _read_input(source: Source, key: str | None) -> tuple[np.ndarray, str]:
    """The table to compress and its provenance string: the one tensor of a .npy file, or `key`."""
    if isinstance(source, NpySource) and key is None:
        return _floating(source.read(next(iter(source.tensors))), source.path), str(source.path)
    if key is None:
        if len(source.tensors) != 1:
            raise InvalidRequest(
                f"{source.path} holds {len(source.tensors)} tensors; name the table with --tensor KEY "
                f"({describe_candidates(source.tensors.values())})"
            )
        key = next(iter(source.tensors))
    return read_table(source, key), f"{source.path}:{key}"


def cmd_compress(args: argparse.Namespace) -> int:
    check_output(args.out, args.force)  # a rewrite removes only files the old manifest named: inputs stay
    # resolved: a link to one of the artifact's files is that file (a probe's --force deleted it)
    held = args.input.resolve()
    if held.parent == args.out.resolve() and held.name in artifact.named_files(args.out):
        raise InvalidRequest(
            f"the input {str(args.input)!r} is a file of the artifact --force replaces; copy it out first"
        )
    x, provenance = _read_input(open_source(args.input), args.tensor)
    options = _codec_options(args)
    if args.budget is not None:
        if args.codec is not None or args.tiers is not None or options or args.rerank:
            raise InvalidRequest("--budget plans the tiers: give no --codec, --tiers, codec options or --rerank")
    elif args.freq is not None or args.queries is not None or args.menu is not None:
        raise InvalidRequest("--freq, --queries and --menu are for planning: give --budget too")
    elif (args.codec is None) == (args.tiers is None):
        raise InvalidRequest("give exactly one of --codec or --tiers (or --budget to plan the tiers)")
    tiers = _load_tiers(args.tiers) if args.tiers is not None else None
    if tiers is not None and (options or args.rerank):
        raise InvalidRequest("with --tiers, give codec options and rerank inside each tier")
    extra: dict[str, Any] = {"missing": args.missing}
    if args.keys is not None:
        extra["keys"] = _load_npy(args.keys, "keys")
    if args.delta_capacity is not None:
        extra["delta_capacity"] = args.delta_capacity
    bar = _ProgressBar(not args.quiet)
    start = time.perf_counter()
    try:
        if args.budget is not None:
            table = compress_to_budget(
                x,
                args.budget,
                keys=extra.pop("keys", None),
                seed=args.seed,
                version=args.version,
                source=provenance,
                progress=bar,
                **_budget_inputs(args),
                **extra,
            )
        else:
            table = compress(
                x,
                args.codec or "int8",
                tiers=tiers,
                rerank=args.rerank,
                seed=args.seed,
                version=args.version,
                source=provenance,
                progress=bar,
                **extra,
                **options,
            )
    finally:
        bar.close()
    table.save(args.out)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.out}: {table.rows} × {table.dim} "
        f"{' | '.join(t.primary.name + (' + ' + t.rerank.name if t.rerank else '') for t in table.tiers)}"
        f"{' (keyed)' if table.keyed else ''}, {table.nbytes} bytes "
        f"({against_fp32(table.compression_ratio)}) in {elapsed:.1f} s"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    def report(plan: Any, table: Table) -> None:
        print(f"{plan.name}: {plan.key} -> {table.rows} × {table.dim} {table.codec}, {table.nbytes} bytes")

    index = import_tables(
        open_source(args.input),
        args.out,
        args.codec,
        keys=args.tensors,
        force=args.force,
        on_table=report,
        rerank=args.rerank,
        seed=args.seed,
        version=args.version,
        **_codec_options(args),
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {len(index['tables'])} tables and {args.out / 'tables.json'} in {elapsed:.1f} s")
    return 0


def _read_json(path: Path, what: str) -> Any:
    """A JSON file given on the command line: a file, or a pipe (`--menu <(...)`); a device
    (/dev/zero, which never ends) or a directory is refused."""
    if path.is_char_device() or path.is_block_device() or path.is_dir():
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: not a file or a pipe")
    try:
        return json.loads(path.read_text())
    except JSON_FILE_ERRORS as exc:
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: {exc}") from None


def _load_tiers(path: Path) -> list[dict[str, Any]]:
    tiers = _read_json(path, "tiers")
    if not isinstance(tiers, list):
        raise InvalidRequest(f"tiers {str(path)!r} must hold a JSON list of tier objects")
    return tiers


def cmd_inspect(args: argparse.Namespace) -> int:
    table = load_table(args.dir, verify=True)
    manifest = artifact.read_manifest(args.dir)
    info = table.describe()
    info["path"] = str(args.dir)
    info["format_version"] = manifest["format_version"]
    info["provenance"] = table.provenance
    if "plan" in table.provenance:
        info["plan"] = table.provenance["plan"]
    info["arrays"] = {
        name: {"dtype": e["dtype"], "shape": e["shape"], "sha256": e["sha256"]}
        for name, e in manifest["arrays"].items()
    }
    info["checksums_verified"] = True
    print(json.dumps(info, indent=2))
    return 0


def relative_l2_error(x: np.ndarray, decode: Any, batch: int = 65536) -> float:
    """Mean over rows of |x - x̂| / |x| (rows of norm 0 are skipped); decode(rows (b,) int64) ->
    (b, d) float32 reconstructs source rows."""
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch):
        ids = np.arange(start, min(x.shape[0], start + batch), dtype=np.int64)
        rows = x[ids].astype(np.float32)
        norms = np.linalg.norm(rows, axis=1)
        err = np.linalg.norm(rows - decode(ids), axis=1)
        keep = norms > 0
        total += float((err[keep] / norms[keep]).sum())
        count += int(keep.sum())
    return total / max(count, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / min(k, the truth's columns)."""
    width = min(k, truth.shape[1]) if truth.ndim == 2 else k
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / width) if hits and width else 0.0


def evaluate(
    table: Table,
    source: np.ndarray,
    *,
    queries: np.ndarray | None = None,
    query_ids: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    k: int = 10,
    metric: str = "ip",
    oversample: int = 1,
    exclude_self: bool = False,
) -> dict[str, Any]:
    """The numbers `embserve eval` prints; truth defaults to exact float32 search over `source`
    (by inner product when metric is hamming). Source row r is the table's row r: on a keyed
    table the row of its r-th key, and its query ids, answers and truth are keys."""
    if source.shape != (table.rows, table.dim):
        raise InvalidRequest(f"source has shape {source.shape} but the table is {(table.rows, table.dim)}")
    if table.delta_rows or table.delta_slots:
        raise InvalidRequest("the table has updates not yet compacted; evaluate a saved artifact")
    keys = table.keys

    def run() -> tuple[np.ndarray, np.ndarray]:
        if query_ids is not None:
            return table.search_by_id(query_ids, k, metric, oversample, exclude_self)
        return table.search(queries, k, metric, oversample)

    run()  # warm-up: compile and fault in pages (and refuse bad queries, k or metric, by name)
    start = time.perf_counter()
    found, _ = run()
    elapsed = time.perf_counter() - start
    nq = found.shape[0]
    if nq == 0:
        raise InvalidRequest("no queries to evaluate")
    if truth is None:
        exact = compress(source, "fp32")
        truth_metric = metric if metric in exact.metrics else "ip"
        if query_ids is not None:
            rows = np.asarray(query_ids)
            if table.keymap is not None:  # held keys: the search above refused any other
                rows = table.keymap.rows(rows.astype(np.int64))[0]
            truth, _ = exact.search_by_id(rows, k, truth_metric, exclude_self=exclude_self)
        else:
            truth, _ = exact.search(queries, k, truth_metric)
        truth = truth if keys is None else keys[truth]
    else:
        truth = _checked_truth(truth, nq, min(k, found.shape[1]), table)
    served_error = relative_l2_error(source, lambda rows: table.lookup(rows if keys is None else keys[rows]))
    # the cheap codes' own error, where one codec holds every row (a tiered table's tiers differ)
    primary_error: float | None = None
    if len(table.tiers) == 1 and table.tiers[0].projection is None:
        primary_error = served_error if table.rerank is None else relative_l2_error(source, table.primary.decode)
    return {
        "codec": table.codec,
        "params": table.params,
        "rerank": table.rerank.name if table.rerank else None,
        "tiers": len(table.tiers),
        "metric": metric,
        "k": k,
        "oversample": oversample,
        "queries": nq,
        "recall_at_k": round(recall_at_k(found, truth, k), 4),
        "rel_l2_error": round(served_error, 5),
        "primary_rel_l2_error": None if primary_error is None else round(primary_error, 5),
        "nbytes": table.nbytes,
        "fp32_nbytes": table.fp32_nbytes,
        "compression_ratio": round(table.compression_ratio, 3),
        "search_ms_per_query": round(1000 * elapsed / max(nq, 1), 4),
    }


def _checked_truth(truth: np.ndarray, nq: int, k: int, table: Table) -> np.ndarray:
    """A caller's true neighbours (q, >= k): integers the table holds (ids, or keys on a keyed
    table), one row a query."""
    if truth.ndim != 2 or truth.shape[0] != nq or truth.shape[1] < k:
        raise InvalidRequest(f"truth must be (q={nq}, >= k={k}), got {truth.shape}")
    if truth.dtype.kind not in "iu":
        raise InvalidRequest(f"truth must hold integer ids, got dtype {truth.dtype}")
    if table.keymap is None:
        check_id_matrix(truth[:, :k], table.rows, "truth")  # names a bad id by row and column
    else:
        flat = truth[:, :k].reshape(-1).astype(np.int64)
        rows, missing = table.keymap.rows(flat)
        if missing:
            pos = int(np.flatnonzero(rows < 0)[0])
            raise InvalidRequest(f"truth[{pos // k}][{pos % k}] = {int(flat[pos])} is not a key of the table")
    return truth


def cmd_eval(args: argparse.Namespace) -> int:
    if args.exclude_self and args.query_ids is None:
        # with query vectors there is no "self" to leave out: the flag changed nothing, unseen
        raise InvalidRequest("--exclude-self leaves each stored query id out of its results: give --query-ids")
    table = load_table(args.dir)
    # as compress reads its input: an integer table is refused, not cast and scored
    source = np.ascontiguousarray(_floating(_load_npy(args.source, "source"), args.source), dtype=np.float32)
    queries = _load_npy(args.queries, "queries") if args.queries else None
    query_ids = _load_npy(args.query_ids, "query ids") if args.query_ids else None
    truth = _load_npy(args.truth, "truth") if args.truth else None
    result = evaluate(
        table,
        source,
        queries=queries,
        query_ids=query_ids,
        truth=truth,
        k=args.k,
        metric=args.metric,
        oversample=args.oversample,
        exclude_self=args.exclude_self,
    )
    print(json.dumps(result))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a typed error becomes a one-line message and exit status 2."""
    try:
        return int(args.func(args))
    except EmbserveError as exc:
        print(f"embserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path that cannot be read or written (an --out under a file, a read-only or full disk)
        where = f": {exc.filename!r}" if exc.filename is not None else ""
        print(f"embserve {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        # numpy names the allocation that failed ("Unable to allocate 1.00 GiB for an array with shape ...")
        print(
            f"embserve {args.command}: error: out of memory: {exc or 'an allocation failed'}; give a smaller table or "
            "codec options that need less (fewer subspaces, train_rows or codewords)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"embserve {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemError as exc:
        # Ctrl-C landing inside a compiled kernel's call surfaces as "returned a result with an
        # exception set", the KeyboardInterrupt as its cause
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            print(f"embserve {args.command}: interrupted", file=sys.stderr)
            return 130
        raise
