"""Replica status rows: each replica writes its own, `embserve status` reads them all.

A row is the hash `embserve:replica:{<id>}` with `state`, `heartbeat`, `started_at`, `redis_error`
and one field `table:<name>` per table holding a JSON object (TableStatus). The hash expires
`ttl` seconds after the last heartbeat, so a dead replica vanishes; the sorted set
`embserve:replicas` (score = heartbeat) lists the ids and is pruned by readers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from service.sync import keys
from service.sync.registry import Published

TABLE_FIELD = "table:"
UPDATES_STALLED = "updates stalled"
UPDATES_LOST = "updates lost"
"""How a table's error in a status row begins when its update log stalled or lost entries."""


@dataclass
class TableStatus:
    """What one replica serves for one table, and how its last rollout went."""

    version: str = ""
    path: str = ""
    checksum: str = ""
    """sha256 of the served artifact's manifest.json ("" when unknown)"""
    generation: int = 0
    """the registry generation last acted on (applied or failed); 0: configured, not from the registry"""
    published_at: float = 0.0
    """that publish's time: with `generation` it names one publish, even across a Redis that lost its data"""
    state: str = "serving"
    """serving | loading | failed (the last publish failed here; the old version still serves)"""
    error: str = ""
    last_update_id: str = ""
    """the update log's last applied stream id (filled once the update log exists)"""


@dataclass
class ReplicaRow:
    replica: str
    state: str
    """starting | ready | degraded (Redis was unreachable; serving what it has)"""
    heartbeat: float
    started_at: float
    redis_error: str = ""
    tables: dict[str, TableStatus] = field(default_factory=dict)

    def to_hash(self) -> dict[str, str]:
        fields = {
            "state": self.state,
            "heartbeat": repr(self.heartbeat),
            "started_at": repr(self.started_at),
            "redis_error": self.redis_error,
        }
        for name, status in self.tables.items():
            fields[TABLE_FIELD + name] = json.dumps(asdict(status), sort_keys=True)
        return fields

    @classmethod
    def from_hash(cls, replica: str, fields: dict[str, str]) -> ReplicaRow:
        tables = {}
        for name, value in fields.items():
            if name.startswith(TABLE_FIELD):
                try:
                    tables[name[len(TABLE_FIELD) :]] = _table_status(json.loads(value))
                except (ValueError, TypeError, RecursionError):
                    tables[name[len(TABLE_FIELD) :]] = TableStatus(state="unreadable")
        return cls(
            replica=replica,
            state=fields.get("state", "?"),
            heartbeat=_float(fields.get("heartbeat")),
            started_at=_float(fields.get("started_at")),
            redis_error=fields.get("redis_error", ""),
            tables=tables,
        )


def _table_status(raw: Any) -> TableStatus:
    """A row's JSON for one table -> TableStatus; TypeError unless it is an object whose known
    fields have their types (a row written by hand must not break `embserve status`)."""
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    defaults = TableStatus()
    known: dict[str, Any] = {}
    for name in TableStatus.__dataclass_fields__:
        if name not in raw:
            continue
        value, want = raw[name], type(getattr(defaults, name))
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want or (want is float and not math.isfinite(value)):
            raise TypeError(f"{name} is not a {want.__name__}")
        known[name] = value
    return TableStatus(**known)


def _float(value: str | None) -> float:
    try:
        number = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


async def write(client: Any, row: ReplicaRow, ttl: float) -> None:
    """Replace this replica's row and push its expiry `ttl` seconds ahead."""
    key = keys.replica_key(row.replica)
    async with client.pipeline(transaction=True) as pipe:  # one key: one slot
        pipe.delete(key)
        pipe.hset(key, mapping=row.to_hash())
        pipe.pexpire(key, max(1, int(ttl * 1000)))
        await pipe.execute()
    await client.zadd(keys.REPLICAS, {row.replica: row.heartbeat})


async def read_all(client: Any) -> list[ReplicaRow]:
    """Every live replica's row, by id. A row expires by itself (each replica sets its own expiry
    at every heartbeat), so live means the row is there; ids whose row has expired are pruned.
    Pruning by heartbeat age with a reader's guess of the expiry dropped live replicas (a stopped
    one, or one with a longer heartbeat), and compaction then trimmed entries they still needed."""
    ids = await client.zrange(keys.REPLICAS, 0, -1)
    rows, gone = [], []
    for replica in sorted(ids):
        fields = await client.hgetall(keys.replica_key(replica))
        if fields:
            rows.append(ReplicaRow.from_hash(replica, fields))
        else:
            gone.append(replica)
    if gone:
        await client.zrem(keys.REPLICAS, *gone)
    return rows


def lag(status: TableStatus, published: Published | None) -> str:
    """How far a replica's table is from the registry: "-" when nothing is published for it,
    "in sync" when it serves the published manifest, else what it is behind on."""
    if published is None or published.withdrawn:
        return "-"
    if status.checksum == published.checksum and status.state == "serving":
        return "in sync"
    if status.state == "loading":
        return f"loading {published.version or published.path}"
    return f"behind: published {published.version or published.path}"


def format_table(rows: list[ReplicaRow], published: dict[str, Published], now: float | None = None) -> str:
    """The `embserve status` text: one line per replica and table."""
    now = time.time() if now is None else now
    header = ("REPLICA", "STATE", "TABLE", "VERSION", "TABLE STATE", "LAG", "LAST UPDATE", "HEARTBEAT AGE", "ERROR")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        age = f"{max(0.0, now - row.heartbeat):.1f}s" if row.heartbeat > 0 else "-"  # a row with no heartbeat
        names = sorted(set(row.tables) | {name for name, pub in published.items() if not pub.withdrawn})
        if not names:
            lines.append((row.replica, row.state, "-", "-", "-", "-", "-", age, row.redis_error))
        for name in names:
            status = row.tables.get(name, TableStatus(state="absent"))
            lines.append(
                (
                    row.replica,
                    row.state,
                    name,
                    status.version or "-",
                    status.state,
                    lag(status, published.get(name)),
                    status.last_update_id or "-",
                    age,
                    status.error or row.redis_error,
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]).rstrip()
        for line in lines
    )
