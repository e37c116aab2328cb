"""The version registry: for each table the published artifact version, read and written in Redis.

A published version names an artifact directory relative to the artifact root and the sha256 of
its `manifest.json`. The manifest holds the sha256 of every array, so that one checksum pins the
whole artifact: a replica that finds the manifest's checksum equal to the published one and then
loads the artifact (which checks every array against the manifest) serves exactly what was
published. `generation` increases with every publish of a table, so publishing the same
directory again (after a failed rollout, say) is seen as new.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import artifact
from runtime.errors import Forbidden, InvalidRequest
from runtime.validation import check_table_name
from service.sync import connection, keys

log = logging.getLogger("embserve.sync.registry")


@dataclass(frozen=True)
class Published:
    """One table's published version, as the registry holds it."""

    table: str
    path: str
    """artifact directory, POSIX, relative to the artifact root"""
    checksum: str
    """sha256 (hex) of the artifact's manifest.json"""
    version: str
    """the manifest's version label"""
    published_at: float
    """unix seconds"""
    generation: int

    @property
    def withdrawn(self) -> bool:
        """A tombstone left by `unpublish`: replicas stop serving the table."""
        return not self.path

    @classmethod
    def from_hash(cls, table: str, fields: dict[str, str]) -> Published | None:
        """The registry hash's fields -> Published, or None when the hash is absent or incomplete."""
        try:
            published = cls(
                table=table,
                path=fields["path"],
                checksum=fields["checksum"],
                version=fields.get("version", ""),
                published_at=float(fields.get("published_at", "0")),
                generation=int(fields["generation"]),
            )
        except (KeyError, ValueError, TypeError):
            return None
        # a NaN time never equals itself: a failed rollout of it would be retried at every poll
        return published if math.isfinite(published.published_at) else None


def manifest_checksum(directory: Path) -> str:
    """sha256 (hex) of `directory/manifest.json`, the checksum a publish records."""
    artifact.read_manifest(directory)  # a missing or unreadable manifest is refused with its own error
    return artifact.sha256_file(directory / artifact.MANIFEST)


def relative_to_root(root: Path, directory: Path) -> str:
    """`directory` as a POSIX path relative to the artifact root; refused when outside it."""
    root_real = root.resolve()
    resolved = directory.resolve()
    if not resolved.is_relative_to(root_real):
        raise Forbidden(f"{directory} is outside the artifact root {root}")
    relative = resolved.relative_to(root_real).as_posix()
    if relative in ("", "."):
        raise InvalidRequest("the artifact root itself is not an artifact directory")
    return relative


def describe_artifact(directory: Path, verify: bool = True) -> tuple[str, str]:
    """-> (manifest checksum, version label) of an artifact; with `verify`, every array's size and
    sha256 are checked too, so a corrupt artifact is refused before it is published."""
    manifest = artifact.read_manifest(directory)
    if verify:
        artifact.load_arrays(directory, manifest, verify=True)
    return artifact.sha256_file(directory / artifact.MANIFEST), str(manifest.get("version", ""))


class RegistryChanged(InvalidRequest):
    """A publish made on condition that the table's published version is still the one read
    before (compaction) found another: nothing was written."""


async def publish(
    client: Any, table: str, path: str, checksum: str, version: str, if_generation: int | None = None
) -> Published:
    """Record `path` (relative to the artifact root) as the published version of `table`, then
    announce it on the pub/sub channel. The version hash is written in one transaction (one key,
    so cluster-safe) after the table set, so that a publish that fails has changed nothing a
    replica acts on. With `if_generation`, only if the table's generation is still that one
    (RegistryChanged otherwise)."""
    check_table_name(table)
    now = time.time()
    await client.sadd(keys.TABLES, table)
    generation = await _write_version(
        client,
        table,
        {"path": path, "checksum": checksum, "version": version, "published_at": repr(now)},
        if_generation,
    )
    await client.publish(keys.PUBLISHED_CHANNEL, table)
    return Published(table, path, checksum, version, now, generation)


async def unpublish(client: Any, table: str) -> Published:
    """Withdraw `table`: its version becomes a tombstone (empty path, next generation) and the
    replicas that serve it from the registry drop it. A tombstone, not a deleted key, so that a
    Redis that lost its data (restarted without AOF) never makes replicas unload anything."""
    check_table_name(table)
    now = time.time()
    await client.sadd(keys.TABLES, table)
    generation = await _write_version(
        client, table, {"path": "", "checksum": "", "version": "", "published_at": repr(now)}
    )
    await client.publish(keys.PUBLISHED_CHANNEL, table)
    return Published(table, "", "", "", now, generation)


async def _write_version(client: Any, table: str, fields: dict[str, str], if_generation: int | None = None) -> int:
    """Write `fields` and the next generation into the table's version hash, all or nothing, and
    return that generation. The generation is read under WATCH and checked first: HINCRBY on a
    value that is not an integer fails inside MULTI while the HSET beside it still applies, which
    published a version while reporting a failure."""
    from redis.exceptions import WatchError  # here: a server without Redis never imports redis

    key = keys.version_key(table)
    async with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                current = await pipe.hget(key, "generation")
                if current is not None and not (isinstance(current, str) and current.isascii() and current.isdigit()):
                    raise InvalidRequest(
                        f"{key} holds generation {current!r}, not a non-negative integer: fix or delete the key"
                    )
                if if_generation is not None and int(current or 0) != if_generation:
                    raise RegistryChanged(
                        f"the published version of table {table!r} changed meanwhile (generation {if_generation} "
                        f"was read, {int(current or 0)} is published now)"
                    )
                generation = int(current or 0) + 1
                pipe.multi()
                pipe.hset(key, mapping={**fields, "generation": str(generation)})
                await pipe.execute()
                return generation
            except WatchError:
                continue  # another publish of this table came between: read its generation again


async def read_published(client: Any) -> dict[str, Published]:
    """Every table's registry entry, tombstones included: {table: Published}."""
    names = sorted(await client.smembers(keys.TABLES))
    if not names:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.version_key(name))
        # each reply on its own: one key of the wrong type (WRONGTYPE) must not hide every table
        hashes = await pipe.execute(raise_on_error=False)
    found = {}
    for name, fields in zip(names, hashes, strict=True):
        problem = ""
        if isinstance(fields, Exception):
            problem = f"{keys.version_key(name)} cannot be read: {fields}"
        elif bad_name := table_name_problem(name):
            problem = bad_name
        elif fields and (published := Published.from_hash(name, fields)) is not None:
            found[name] = published
        elif fields:
            problem = f"{keys.version_key(name)} is not a version entry (path, checksum, an integer generation)"
        if problem:
            _warn_once(name, problem)
    return found


_warned: set[tuple[str, str]] = set()


def table_name_problem(name: Any) -> str:
    """Why `name` is no table name (check_table_name's words), or ""."""
    try:
        check_table_name(name)
    except InvalidRequest as exc:
        return str(exc)
    return ""


def _warn_once(table: str, problem: str) -> None:
    """Log a registry entry that is skipped, once per table and problem (it is read at every poll)."""
    if (table, problem) not in _warned:
        _warned.add((table, problem))
        log.warning("registry: table %r skipped: %s", table, problem)


def connect(url: str, cluster: bool = False) -> Any:
    """The registry's asyncio client for `url` (one node, or a Redis Cluster), replies as text."""
    return connection.async_client(url, cluster, decode_responses=True)


def redact(url: str) -> str:
    """`url` with its password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"
