"""Every Redis key and channel embserve uses, in one namespace.

A table's keys carry the table name as a Redis Cluster hash tag, `embserve:{<table>}:...`, so
they all hash to one slot (the slot is computed from the text between the first `{` and the
first `}` after it; since every key of a table starts with the same `embserve:{<table>`, they
agree on that text whatever characters the name holds). Commands that touch one table's keys
together therefore work on a cluster. A replica's status key is tagged by its replica id.
`connection` makes the cluster clients and lists why every command embserve sends is cluster-safe.

| key | type | holds |
|---|---|---|
| `embserve:{<table>}:version` | hash | the published version: path, checksum, version, published_at, generation |
| `embserve:{<table>}:updates` | stream | the update log: row upserts and deletes (see `updates`) |
| `embserve:{<table>}:deadletter` | stream | refused update entries: the original fields, `id`, `reason` |
| `embserve:tables` | set | names of tables with a published version |
| `embserve:replica:{<id>}` | hash | one replica's status row; expires when heartbeats stop |
| `embserve:replicas` | sorted set | replica ids scored by their last heartbeat (unix seconds) |
| `embserve:published` | pub/sub channel | a table name, sent after each publish (a hint only) |
"""

from __future__ import annotations

PREFIX = "embserve"
TABLES = f"{PREFIX}:tables"
REPLICAS = f"{PREFIX}:replicas"
PUBLISHED_CHANNEL = f"{PREFIX}:published"


def table_key(table: str, kind: str) -> str:
    """`embserve:{<table>}:<kind>`: one of a table's keys, all in the table's cluster slot."""
    return f"{PREFIX}:{{{table}}}:{kind}"


def version_key(table: str) -> str:
    return table_key(table, "version")


def updates_key(table: str) -> str:
    return table_key(table, "updates")


def deadletter_key(table: str) -> str:
    return table_key(table, "deadletter")


def replica_key(replica_id: str) -> str:
    return f"{PREFIX}:replica:{{{replica_id}}}"


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the text inside the first `{...}` when non-empty,
    else the whole key (the cluster specification's rule)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
