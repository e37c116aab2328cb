"""`embserve publish`, `embserve status` and `embserve push`: the operator's side of the version
registry and the update log.

All take `--redis-url` (default: EMBSERVE_REDIS_URL) and `--redis-cluster` (default:
EMBSERVE_REDIS_CLUSTER). Redis is imported only when they run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.errors import InvalidRequest


def add_commands(sub: Any) -> None:
    p = sub.add_parser("publish", help="publish an artifact as the version of a table every replica serves (Redis)")
    p.add_argument("table")
    p.add_argument("dir", type=Path, help="artifact directory below the artifact root (absolute, or relative to it)")
    _redis_flags(p)
    p.add_argument(
        "--artifact-root",
        type=Path,
        default=os.environ.get("EMBSERVE_ARTIFACT_ROOT"),
        help="the replicas' artifact root as seen here (default: EMBSERVE_ARTIFACT_ROOT)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip checking every array's sha256 before publishing")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("status", help="every replica's row: versions served, state, lag, heartbeat age (Redis)")
    _redis_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # accepted and unused: a row is live while it exists (each replica sets its own expiry)
    p.add_argument("--expiry-seconds", type=float, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("push", help="append row upserts or deletes to a table's update log (Redis)")
    p.add_argument("table")
    _redis_flags(p)
    p.add_argument("--keys", type=Path, help=".npy of int64 keys (keyed tables) or row ids (dense) to upsert")
    p.add_argument("--rows", type=Path, help=".npy of float rows, one per key, in the table's dimension")
    p.add_argument("--delete", type=Path, metavar="KEYS", help=".npy of int64 keys to delete instead")
    p.add_argument("--base-version", default="", help="the table version the rows were computed against")
    p.add_argument("--batch-rows", type=int, default=1000, help="keys an entry (default 1000)")
    p.add_argument(
        "--force",
        action="store_true",
        help="push to a table no replica serves, none is published as and whose log does not exist yet",
    )
    p.add_argument(
        "--artifact-root",
        type=Path,
        default=os.environ.get("EMBSERVE_ARTIFACT_ROOT"),
        help="where the published version is, to check the entries fit the table before pushing "
        "(default: EMBSERVE_ARTIFACT_ROOT)",
    )
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "compact", help="fold a table's update log into a new published artifact version and trim the log (Redis)"
    )
    p.add_argument("table")
    _redis_flags(p)
    p.add_argument("--out", type=Path, required=True, help="the new artifact directory, below the artifact root")
    p.add_argument(
        "--artifact-root",
        type=Path,
        default=os.environ.get("EMBSERVE_ARTIFACT_ROOT"),
        help="the replicas' artifact root as seen here (default: EMBSERVE_ARTIFACT_ROOT)",
    )
    p.add_argument("--version", default=None, help="the new version's label (default: <old>+<entries>)")
    p.set_defaults(func=cmd_compact)


def _redis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=os.environ.get("EMBSERVE_REDIS_URL"),
        help="redis:// or rediss:// URL, password in it (default: EMBSERVE_REDIS_URL)",
    )
    p.add_argument(
        "--redis-cluster",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("EMBSERVE_REDIS_CLUSTER"),
        help="the URL names one node of a Redis Cluster (default: EMBSERVE_REDIS_CLUSTER)",
    )


def _env_flag(name: str) -> bool:
    """A boolean environment variable as the settings read it (1/true/yes/on, any case)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _require_url(args: argparse.Namespace) -> str:
    if not args.redis_url:
        raise InvalidRequest("--redis-url (or EMBSERVE_REDIS_URL) is required")
    return str(args.redis_url)


def _resolve_artifact(root: Path, directory: Path) -> Path:
    """DIR as given (absolute or relative to the working directory) when it exists, else relative
    to the artifact root, as the admin API takes it."""
    return directory if directory.is_absolute() or directory.exists() else root / directory


def cmd_publish(args: argparse.Namespace) -> int:
    from service.sync import connection, registry

    url = _require_url(args)
    if args.artifact_root is None:
        raise InvalidRequest("--artifact-root (or EMBSERVE_ARTIFACT_ROOT) is required: published paths are below it")
    root = Path(args.artifact_root)
    directory = _resolve_artifact(root, args.dir)
    relative = registry.relative_to_root(root, directory)
    checksum, version = registry.describe_artifact(directory, verify=not args.no_verify)

    async def run() -> registry.Published:
        client = registry.connect(url, args.redis_cluster)
        try:
            return await registry.publish(client, args.table, relative, checksum, version)
        finally:
            await client.aclose()

    try:
        published = asyncio.run(run())
    except connection.FAILURES as exc:
        print(f"embserve publish: Redis {registry.redact(url)} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(published), sort_keys=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from service.sync import connection, registry, status

    url = _require_url(args)

    async def run() -> tuple[list[status.ReplicaRow], dict[str, registry.Published]]:
        client = registry.connect(url, args.redis_cluster)
        try:
            return await status.read_all(client), await registry.read_published(client)
        finally:
            await client.aclose()

    try:
        rows, published = asyncio.run(run())
    except connection.FAILURES as exc:
        print(f"embserve status: Redis {registry.redact(url)} failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        payload = {
            "published": {name: asdict(p) for name, p in published.items()},
            "replicas": [
                {**asdict(row), "lag": {n: status.lag(t, published.get(n)) for n, t in row.tables.items()}}
                for row in rows
            ],
        }
        print(json.dumps(payload, sort_keys=True))
    else:
        print(status.format_table(rows, published))
    return 0


def _load_npy(path: Path, what: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty or cut-short file
        raise InvalidRequest(f"{what} {path}: not a readable .npy file ({exc})") from None


def _published_manifest(client: Any, table: str, root: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The manifest of `table`'s published version (a sync client), or None and why not."""
    from runtime.artifact import read_manifest
    from runtime.errors import ArtifactError
    from service.sync import keys

    path = client.hget(keys.version_key(table), "path")
    path = path.decode() if isinstance(path, bytes) else path
    if not path:
        return None, f"table {table!r} has no published version to check the entries against"
    if root is None:
        return None, "no --artifact-root (or EMBSERVE_ARTIFACT_ROOT) to read the published version from"
    directory = (Path(root) / path).resolve()
    if not directory.is_relative_to(Path(root).resolve()):  # a registry path written by hand: ../..
        return None, f"the published path {path!r} is outside the artifact root"
    try:
        return read_manifest(directory), ""
    except ArtifactError as exc:
        return None, f"the published version cannot be read here ({exc})"


def _anyone_follows(client: Any, table: str) -> bool:
    """Whether a live replica serves `table` (its status row has the table) or its update log
    exists already (someone pushed to it: a table served from a replica's own configuration, its
    replicas all restarting). A sync client; a table with a published version is not asked about."""
    from service.sync import keys, status

    if client.exists(keys.updates_key(table)):
        return True
    field = status.TABLE_FIELD + table
    replicas = [r.decode() if isinstance(r, bytes) else r for r in client.zrange(keys.REPLICAS, 0, -1)]
    return any(client.hexists(keys.replica_key(replica), field) for replica in replicas)


def cmd_push(args: argparse.Namespace) -> int:
    from runtime.validation import check_table_name
    from service.sync import connection, registry, updates

    url = _require_url(args)
    check_table_name(args.table)  # before any note about the table
    if (args.delete is None) == (args.keys is None):
        raise InvalidRequest("give --keys with --rows (upserts) or --delete (deletes)")
    if args.delete is not None:
        keys, rows = _load_npy(args.delete, "--delete"), None
    else:
        if args.rows is None:
            raise InvalidRequest("--keys needs --rows")
        keys, rows = _load_npy(args.keys, "--keys"), _load_npy(args.rows, "--rows")
    client = None
    try:
        # inside the try: a cluster client connects as it is made
        client = connection.sync_client(url, args.redis_cluster)
        manifest, unchecked = _published_manifest(client, args.table, args.artifact_root)
        if manifest is not None:
            updates.check_fits_table(args.table, manifest, keys, rows)
        elif not args.force and not _anyone_follows(client, args.table):
            raise InvalidRequest(
                f"table {args.table!r} is not published, no live replica serves it and it has no update log: "
                "no one would read these entries (a misspelt name?); --force pushes them all the same "
                "(a replica that serves the table later replays them)"
            )
        else:
            print(
                f"embserve push: note: {unchecked}; each replica checks the entries and dead-letters", file=sys.stderr
            )
        ids = updates.push(client, args.table, keys, rows, base_version=args.base_version, batch_rows=args.batch_rows)
    except updates.PushIncomplete as exc:
        print(f"embserve push: {exc}", file=sys.stderr)
        return 1
    except connection.FAILURES as exc:
        print(f"embserve push: Redis {registry.redact(url)} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    op = "deletes" if rows is None else "upserts"
    print(
        json.dumps(
            {
                "table": args.table,
                "op": op,
                "keys": len(keys),
                "entries": len(ids),
                "last_id": ids[-1] if ids else "",
            }
        )
    )
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from service.sync import compaction, connection, registry

    url = _require_url(args)
    if args.artifact_root is None:
        raise InvalidRequest("--artifact-root (or EMBSERVE_ARTIFACT_ROOT) is required: published paths are below it")
    root = Path(args.artifact_root)
    out = args.out if args.out.is_absolute() else root / args.out
    try:
        done = compaction.compact(url, root, args.table, out, args.version, cluster=args.redis_cluster)
    except connection.FAILURES as exc:
        print(f"embserve compact: Redis {registry.redact(url)} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(done), sort_keys=True))
    return 0
