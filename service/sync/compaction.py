"""`embserve compact`: fold a table's update log into a new artifact version, publish it, trim the log.

The published version is loaded, every update log entry after its sequence is applied the way a
replica applies it (refused entries are skipped: replicas dead-lettered them), the delta is
folded in (`Table.compact`, same trained states) and saved with the sequence of the last entry
it covers. Once that version is published, the stream is trimmed (XTRIM MINID) below the oldest
position anyone still needs: the new version's sequence and every live replica's last applied
entry. A replica that restarts loads the published version and replays only what is newer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import DeltaFull, InvalidRequest
from runtime.table import Table, load_table
from service.sync import connection, keys, registry, status, updates

READ_COUNT = 1000


@dataclass(frozen=True)
class Compacted:
    table: str
    path: str
    version: str
    sequence: int
    last_id: str
    entries: int
    refused: int
    trimmed: int
    generation: int


def _read_after(client: Any, table: str, after: str) -> list[tuple[str, dict[Any, Any]]]:
    """Every entry after stream id `after`, in order (synchronous client, bytes replies)."""
    found: list[tuple[str, dict[Any, Any]]] = []
    start = f"({after}"
    while True:
        batch = client.xrange(keys.updates_key(table), min=start, max="+", count=READ_COUNT)
        if not batch:
            return found
        for raw_id, fields in batch:
            found.append((raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id), fields))
        start = f"({found[-1][0]}"


def trim_log_below(client: Any, table: str, sequence: int) -> int:
    """Remove every entry of `table`'s update log before `sequence` (a sync client); returns how
    many went. Exact, not approximate (`~`): Redis trims approximately only whole macro nodes of
    up to 100 entries, so a short log of small entries would never shrink."""
    return int(client.xtrim(keys.updates_key(table), minid=updates.sequence_to_id(sequence), approximate=False))


def _apply_all(base: Table, entries: list[tuple[str, dict[Any, Any]]]) -> tuple[Table, int]:
    """`base` with every entry applied as a replica applies it, and how many were refused. A log
    longer than the delta holds is folded in as often as the delta fills (the rows come out the
    same): compaction is what ends a replica's full-delta stall, so it must not stall itself."""
    refused = 0
    for stream_id, fields in entries:
        while True:
            try:
                refused += bool(updates.apply_entry(base, stream_id, fields)[1])
                break
            except DeltaFull:
                # an entry larger than the whole delta is refused by apply_entry, so it fits once folded
                base = base.compact(version=base.version)
    return base, refused


def compact(
    url: str, root: Path, table: str, out: Path, version: str | None = None, cluster: bool = False
) -> Compacted:
    root = Path(root)
    if out.exists():
        raise InvalidRequest(f"{out} exists: compact writes a new artifact version (choose another --out)")

    async def published() -> registry.Published | None:
        client = registry.connect(url, cluster)
        try:
            return (await registry.read_published(client)).get(table)
        finally:
            await client.aclose()

    pub = asyncio.run(published())
    if pub is None or pub.withdrawn:
        raise InvalidRequest(f"table {table!r} has no published version to compact (embserve publish one first)")
    base = load_table(root / pub.path)
    sync_client = connection.sync_client(url, cluster, socket_timeout=30.0)
    try:
        entries = _read_after(sync_client, table, updates.sequence_to_id(base.sequence))
        base, refused = _apply_all(base, entries)
        folded = base.compact(version=version or f"{base.version}+{len(entries)}")
        try:
            folded.save(out)
        except OSError as exc:  # not Redis's: OSError is also what a lost connection raises
            raise InvalidRequest(f"cannot write the compacted version to {str(out)!r}: {exc.strerror or exc}") from None
        relative = registry.relative_to_root(root, out)
        checksum, label = registry.describe_artifact(out, verify=True)

        async def publish_and_read_replicas() -> tuple[registry.Published, list[status.ReplicaRow]]:
            client = registry.connect(url, cluster)
            try:
                # only over the version this compaction read: a publish or another compaction
                # that came between would be undone, and the trim below would drop entries the
                # version left published still needs
                try:
                    done = await registry.publish(
                        client, table, relative, checksum, label, if_generation=pub.generation
                    )
                except registry.RegistryChanged as exc:
                    raise registry.RegistryChanged(
                        f"{exc}: nothing published or trimmed; {out} is not used; run compact again"
                    ) from None
                return done, await status.read_all(client)
            finally:
                await client.aclose()

        done, rows = asyncio.run(publish_and_read_replicas())
        needed = [folded.sequence]
        for row in rows:
            served = row.tables.get(table)
            if served is not None:
                try:
                    needed.append(updates.id_to_sequence(served.last_update_id) if served.last_update_id else 0)
                except InvalidRequest:
                    needed.append(0)  # a position that cannot be read (a row written by hand): trim nothing
        trimmed = trim_log_below(sync_client, table, min(needed))
    finally:
        sync_client.close()
    return Compacted(
        table,
        relative,
        folded.version,
        folded.sequence,
        updates.sequence_to_id(folded.sequence),
        len(entries),
        refused,
        trimmed,
        done.generation,
    )
