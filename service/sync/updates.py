"""The update log: row upserts and deletes in one Redis stream a table, applied by every replica.

A producer appends entries with `push` (or `embserve push`); every replica reads the stream itself
with plain XREAD from its own position (every pod must apply every update, so no consumer group)
and applies each entry with `table.upsert` / `table.delete`, recording the entry's stream id as the
table's sequence. A table saved with that sequence (`compact`) tells a restarted replica where to
resume: it replays the stream from there before it reports ready.

An entry (`embserve:{<table>}:updates`, see `keys`) holds these fields, all bytes:

| field | holds |
|---|---|
| `op` | `upsert` or `delete` |
| `keys` | the keys (keyed tables) or row ids (dense tables), int64 little-endian |
| `rows` | upserts: the rows, float32 little-endian, row-major (len(keys) × dim) |
| `dim` | upserts: the row dimension, decimal |
| `base_version` | the table version the producer computed the rows against (informational) |

Stream ids `<ms>-<seq>` become sequences as `ms << 20 | seq` (order-preserving and exact while
fewer than 2**20 entries share one millisecond, which XADD's own ids guarantee in practice); a
sequence turns back into the id it came from, so a replica resumes exactly after it.

Entries that fail validation (wrong dimension, NaN, bytes that are not whole int64 / float32, a
delete of a key the table does not hold, ...) are refused whole, counted, logged, and appended to
`embserve:{<table>}:deadletter` with the reason and the original fields; the replica goes on
with the next entry. A full delta is not the entry's fault: the replica stops applying that table
(retrying) until a compacted version is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import DeltaFull, EmbserveError, InvalidRequest, TableNotFound
from runtime.table import Table
from runtime.validation import check_ids, check_keys, check_queries, check_table_name
from service.sync import connection, keys
from service.sync.status import UPDATES_LOST, UPDATES_STALLED

if TYPE_CHECKING:
    from service.sync.replica import ReplicaSync

log = logging.getLogger("embserve.sync.updates")

SEQ_BITS = 20
DEFAULT_BATCH_ROWS = 1000
READ_COUNT = 512
"""Entries one XREAD returns at most (a replica that is behind reads on at once, without waiting
for the apply interval)."""
BLOCK_MS = 1000
"""How long a caught-up replica's XREAD waits for a new entry before it looks again."""
MAX_READ_THREADS = 256
"""Update-log reads in flight at once. Every followed table keeps one read blocked for up to
BLOCK_MS, so a pool smaller than the tables served would queue a busy table's read behind idle
ones; the pool starts a thread only when reads overlap, so a few tables cost a few threads."""
OPS = ("upsert", "delete")
GAP_CHECK_SECONDS = 5.0
"""How often a follower compares its position with the stream for entries it will never apply."""
DEADLETTER_MAXLEN = 100_000
"""The dead-letter stream keeps about this many refused entries (older ones are trimmed)."""


MS_BITS = 63 - SEQ_BITS
"""A sequence is an int64: stream ids from 2**43 ms (the year 2248) on have none."""


def id_to_sequence(stream_id: str | bytes) -> int:
    """`<ms>-<seq>` -> ms << 20 | seq; InvalidRequest for an id that is not of that form, or whose
    seq or ms do not fit (an id set by hand far in the future, 2**20 entries in one millisecond)."""
    text = _text(stream_id)
    ms, _, seq = text.partition("-")
    if not ms.isascii() or not seq.isascii() or not ms.isdigit() or not seq.isdigit():
        raise InvalidRequest(f"stream id {text!r} is not <ms>-<seq>")
    if int(seq) >= 1 << SEQ_BITS or int(ms) >= 1 << MS_BITS:
        raise InvalidRequest(
            f"stream id {text!r} has no table sequence: it needs seq < {1 << SEQ_BITS} and ms < {1 << MS_BITS}"
        )
    return int(ms) << SEQ_BITS | int(seq)


def stream_order(stream_id: Any) -> tuple[int, int]:
    """A stream id as (ms, seq), which orders ids as Redis does (any size, unlike a sequence)."""
    ms, _, seq = _text(stream_id).partition("-")
    return int(ms), int(seq or 0)


def log_gap(position: str, info: Mapping[Any, Any]) -> str:
    """What of the update log a replica at `position` (the last id it applied) will never apply,
    from the stream's XINFO STREAM reply: "" when nothing, else why. Entries trimmed before it read
    them (XTRIM while it lagged, a compaction that did not see it), or a stream recreated with ids
    below its position (DEL, then new entries), would be skipped without a trace.

    Compaction trims below the oldest position a replica or the new version needs, so it keeps
    every replica's own entry: a first entry after the position, once entries have been removed,
    means entries after the position went (a trim by hand that cuts exactly after it is the one
    case this reports where nothing was lost)."""
    fields = _stream_fields(info)
    at = stream_order(position)
    last = fields.get("last-generated-id")
    if last is not None and stream_order(last) < at:
        return (
            f"the stream's newest id {_text(last)} is below this replica's position {position}: it was recreated, "
            "and what is pushed to it applies only once its ids pass that position"
        )
    length, added = int(fields.get("length", 0)), int(fields.get("entries-added", 0))
    if added <= length:
        return ""  # nothing was ever removed
    first_entry = fields.get("first-entry")
    first = stream_order(first_entry[0]) if first_entry else None
    if (first is None and last is not None and stream_order(last) > at) or (first is not None and first > at):
        return f"entries after {position} were trimmed or deleted before this replica applied them"
    return ""


def log_reset(added_before: int, info: Mapping[Any, Any] | None) -> str:
    """Whether the update stream was deleted or recreated since a check that saw it had had
    `added_before` entries (XINFO STREAM's entries-added), from this check's reply (None: no
    stream): "" when not, else what happened. A stream's entries-added only grows; a smaller count,
    or no stream, means it was deleted (a DEL, a FLUSHALL, Redis restarted without its data) with
    whatever entries this replica had not read yet. `log_gap` misses that case when the new ids
    are above the replica's position (new entries get the current time as their id)."""
    if added_before <= 0:
        return ""
    if info is None:
        return (
            f"the update stream is gone (deleted, or Redis lost its data; it had had {added_before} entries): "
            "entries not yet applied here when it went are lost"
        )
    added = entries_added(info, added_before)
    if added < added_before:
        return (
            f"the update stream was deleted and recreated (it had had {added_before} entries, now {added}): "
            "entries not yet applied here when it went are lost"
        )
    return ""


def _stream_fields(info: Mapping[Any, Any]) -> dict[str, Any]:
    """An XINFO STREAM reply with its field names as text, whichever client decoded it."""
    return {_text(k): v for k, v in info.items()}


def entries_added(info: Mapping[Any, Any] | None, absent: int = 0) -> int:
    """A stream's entries-added from its XINFO STREAM reply (`absent` when the reply has none:
    Redis before 7; 0 for no stream)."""
    return 0 if info is None else int(_stream_fields(info).get("entries-added", absent))


def _text(value: Any) -> str:
    """A Redis reply (bytes from a client that does not decode, str from one that does) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def sequence_to_id(sequence: int) -> str:
    """The stream id a sequence came from; 0 (nothing applied) is `0-0`, before every entry."""
    return f"{sequence >> SEQ_BITS}-{sequence & ((1 << SEQ_BITS) - 1)}"


@dataclass(frozen=True)
class Update:
    """One decoded entry: keys (n,) int64 and rows (n, dim) float32 or None for a delete."""

    op: str
    keys: np.ndarray
    rows: np.ndarray | None
    base_version: str


def encode_entry(op: str, entry_keys: np.ndarray, rows: np.ndarray | None, base_version: str = "") -> dict[str, bytes]:
    """The stream fields of one entry (see the module docstring)."""
    fields = {
        "op": op.encode(),
        "keys": np.ascontiguousarray(entry_keys, dtype="<i8").tobytes(),
        "base_version": base_version.encode(),
    }
    if rows is not None:
        fields["rows"] = np.ascontiguousarray(rows, dtype="<f4").tobytes()
        fields["dim"] = str(rows.shape[1]).encode()
    return fields


def _field(fields: Mapping[Any, Any], name: str) -> bytes | None:
    value = fields.get(name.encode(), fields.get(name))
    return value.encode() if isinstance(value, str) else value


def decode_entry(fields: Mapping[Any, Any], dim: int) -> Update:
    """Stream fields -> Update, checked against the table's dimension; InvalidRequest names what
    is wrong. Values are not checked here for what the table itself refuses (NaN, unknown keys)."""
    op = (_field(fields, "op") or b"").decode(errors="replace")
    if op not in OPS:
        raise InvalidRequest(f"op must be one of {', '.join(OPS)}, got {op!r}")
    raw_keys = _field(fields, "keys")
    if raw_keys is None or len(raw_keys) == 0 or len(raw_keys) % 8:
        raise InvalidRequest(
            f"keys must be a non-empty whole number of int64 (8 bytes), got {len(raw_keys or b'')} bytes"
        )
    entry_keys = np.frombuffer(raw_keys, dtype="<i8").astype(np.int64)
    if np.unique(entry_keys).size != entry_keys.size:
        # refused here, whatever the batch: a run of upserts applied as one keeps a key's last
        # row, so a replica that read this entry beside others would take what one reading it
        # alone refuses, and the two would differ
        raise InvalidRequest("keys repeat: one entry updates each key once")
    base = (_field(fields, "base_version") or b"").decode(errors="replace")
    if op == "delete":
        return Update(op, entry_keys, None, base)
    raw_dim = (_field(fields, "dim") or b"").decode(errors="replace")
    if not raw_dim.isdigit() or int(raw_dim) != dim:
        raise InvalidRequest(f"dim must be the table's {dim}, got {raw_dim!r}")
    raw_rows = _field(fields, "rows")
    want = entry_keys.size * dim * 4
    if raw_rows is None or len(raw_rows) != want:
        raise InvalidRequest(
            f"rows must be {entry_keys.size} x {dim} float32 ({want} bytes), got {len(raw_rows or b'')} bytes"
        )
    rows = np.frombuffer(raw_rows, dtype="<f4").astype(np.float32).reshape(entry_keys.size, dim)
    return Update(op, entry_keys, rows, base)


def _check_batch(entry_keys: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """What a producer can check before sending: shapes, dtypes, finite rows, distinct keys."""
    arr = np.asarray(entry_keys)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InvalidRequest(f"keys must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = check_keys(arr)  # uint64 past int64 refused: a cast would wrap 2**64-1 to key -1
    if np.unique(arr).size != arr.size:
        raise InvalidRequest("keys repeat: one entry updates each key once")
    if rows is None:
        return arr, None
    x = np.asarray(rows)
    if x.ndim != 2 or x.shape[0] != arr.size or x.dtype.kind != "f":
        raise InvalidRequest(f"rows must be a float ({arr.size}, dim) array, got {x.dtype} {x.shape}")
    # the check every replica makes of the rows it applies (finite, below 2**50, float32)
    return arr, check_queries(x, x.shape[1], "rows")


def push(
    client: Any,
    table: str,
    entry_keys: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    base_version: str = "",
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> list[str]:
    """Append upserts (rows given) or deletes (rows None) of `entry_keys` to the table's stream,
    `batch_rows` keys an entry, with a synchronous redis-py client. Returns the entry ids."""
    if batch_rows < 1:
        raise InvalidRequest(f"batch_rows must be >= 1, got {batch_rows}")
    check_table_name(table)  # a name publish refuses would make a stream no replica reads
    checked_keys, checked_rows = _check_batch(entry_keys, rows)
    op = "delete" if checked_rows is None else "upsert"
    pipe = client.pipeline(transaction=False)
    for start in range(0, checked_keys.size, batch_rows):
        part = slice(start, start + batch_rows)
        fields = encode_entry(
            op, checked_keys[part], None if checked_rows is None else checked_rows[part], base_version
        )
        pipe.xadd(keys.updates_key(table), fields)
    # each reply on its own: the pipeline is no transaction, so entries before (or after) one that
    # Redis refuses (out of memory, a key of the wrong type) are appended, and the caller must know which
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(reply, Exception) for reply in replies):
        raise PushIncomplete(table, replies, batch_rows, checked_keys.size)
    return [_text(reply) for reply in replies]


class PushIncomplete(Exception):
    """Redis refused some entries of a push and appended the others."""

    def __init__(self, table: str, replies: list[Any], batch_rows: int, n_keys: int) -> None:
        self.appended = [_text(r) for r in replies if not isinstance(r, Exception)]
        failed = [i for i, r in enumerate(replies) if isinstance(r, Exception)]
        first = replies[failed[0]]
        ranges = ", ".join(f"{i * batch_rows}..{min((i + 1) * batch_rows, n_keys) - 1}" for i in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(
            f"Redis refused {len(failed)} of {len(replies)} entries of table {table!r} ({first}): the keys at "
            f"positions {ranges}{more} were not pushed; the {len(self.appended)} other entries were appended"
            + (f" (last id {self.appended[-1]})" if self.appended else "")
        )


def check_fits_table(table: str, manifest: Mapping[str, Any], entry_keys: np.ndarray, rows: np.ndarray | None) -> None:
    """Refuse, before anything is pushed, what every replica of `table` (whose artifact manifest
    this is) would refuse and dead-letter: rows of another dimension, deletes from a dense table,
    ids past a dense table's rows."""
    dim, count, keyed = int(manifest["dim"]), int(manifest["rows"]), bool(manifest.get("keyed", False))
    if rows is not None and rows.ndim == 2 and rows.shape[1] != dim:
        raise InvalidRequest(f"--rows have dimension {rows.shape[1]}; table {table!r} has dimension {dim}")
    if keyed:
        return
    if rows is None:
        raise InvalidRequest(
            f"table {table!r} is dense (ids 0..{count - 1}): its rows cannot be deleted, only those of a keyed table"
        )
    check_ids(np.asarray(entry_keys).reshape(-1), count, "--keys")


def apply_entry(table: Table, stream_id: str, fields: Mapping[Any, Any]) -> tuple[int, str]:
    """Apply one entry to `table`: (rows applied, refusal reason or ""). A refused entry applies
    nothing, and the table's sequence still moves past it. DeltaFull propagates (not the entry's
    fault: retry after compaction)."""
    try:
        sequence = id_to_sequence(stream_id)
    except InvalidRequest as exc:
        return 0, str(exc)  # refused; the table's sequence cannot say it is past this entry
    try:
        update = decode_entry(fields, table.dim)
    except EmbserveError as exc:
        table.sequence = max(table.sequence, sequence)
        return 0, str(exc)
    return _apply_decoded(table, stream_id, update)


def _apply_decoded(table: Table, stream_id: str, update: Update) -> tuple[int, str]:
    sequence = id_to_sequence(stream_id)
    if update.rows is not None and update.keys.size > table.delta_capacity:
        # no compaction makes room for it: waiting for one would stall the table for good
        table.sequence = max(table.sequence, sequence)
        return 0, (
            f"the entry's {update.keys.size} rows exceed the table's delta capacity of {table.delta_capacity}: "
            "no replica can apply it (push it in smaller entries)"
        )
    try:
        if update.rows is not None:
            table.upsert(update.keys, update.rows, sequence=sequence)
        else:
            table.delete(update.keys, sequence=sequence)
    except DeltaFull:
        raise
    except EmbserveError as exc:
        table.sequence = max(table.sequence, sequence)
        return 0, str(exc)
    return int(update.keys.size), ""


def _last_of_each(entry_keys: np.ndarray) -> np.ndarray:
    """A mask (n,) bool of each key's last occurrence in entry_keys (n,) int64."""
    _, first_from_end = np.unique(entry_keys[::-1], return_index=True)
    last = np.zeros(entry_keys.size, dtype=bool)
    last[entry_keys.size - 1 - first_from_end] = True
    return last


def apply_batch(table: Table, entries: list[tuple[str, Mapping[Any, Any]]]) -> tuple[list[tuple[str, int, str]], str]:
    """Apply entries in stream order: ([(stream id, rows applied, refusal reason or "")], and the
    DeltaFull message that stopped it, or "").

    Runs of consecutive upserts go to the table as one `upsert` (a key in several entries keeps
    its last row): each apply rebuilds the delta's view, so a replica that has fallen behind, or
    that reads every `update_apply_interval_seconds`, pays that once per run, not once per entry.
    The rows a later one replaces are checked all the same (`Table.check_upsert`): a refused row
    (NaN) followed by a good one for the same key would otherwise apply, where the entry read
    alone is refused, and replicas reading the log in different batches would differ. A run the
    table refuses is applied again entry by entry, so only the bad entries are refused."""
    results: list[tuple[str, int, str]] = []
    run: list[tuple[str, Update]] = []

    def flush() -> None:
        if len(run) > 1:
            merged_keys = np.concatenate([u.keys for _, u in run])
            merged_rows = np.concatenate([u.rows for _, u in run if u.rows is not None])
            last = _last_of_each(merged_keys)
            try:
                if not last.all():
                    table.check_upsert(merged_keys[~last], merged_rows[~last])
                table.upsert(merged_keys[last], merged_rows[last], sequence=id_to_sequence(run[-1][0]))
            except EmbserveError:
                # one of them is bad, or the run does not fit: entry by entry below, so the bad
                # ones alone are refused and a full delta stops at the entry that does not fit
                # (as it does for a replica that read these entries one by one)
                pass
            else:
                results.extend((stream_id, int(u.keys.size), "") for stream_id, u in run)
                run.clear()
                return
        for stream_id, update in run:
            results.append((stream_id, *_apply_decoded(table, stream_id, update)))
        run.clear()

    try:
        for stream_id, fields in entries:
            try:
                sequence = id_to_sequence(stream_id)
            except InvalidRequest as exc:
                # refused, and the follower reads on past it (its position is the stream id); it
                # stopped the table's log for good when this escaped
                flush()
                results.append((stream_id, 0, str(exc)))
                continue
            try:
                update = decode_entry(fields, table.dim)
            except EmbserveError as exc:
                flush()
                table.sequence = max(table.sequence, sequence)
                results.append((stream_id, 0, str(exc)))
                continue
            if update.rows is None:
                flush()
                results.append((stream_id, *_apply_decoded(table, stream_id, update)))
            else:
                run.append((stream_id, update))
        flush()
    except DeltaFull as exc:
        return results, str(exc)
    return results, ""


DEADLETTER_COPY_BYTES = 1 << 20
"""An entry's fields are copied into its dead-letter entry up to this size; a larger entry leaves
its size there instead (each replica dead-letters its own copy: four 50 MB entries refused on a
few replicas filled Redis with copies of what the update stream still holds)."""


def dead_letter_fields(fields: Mapping[Any, Any]) -> dict[Any, Any]:
    """What a refused entry's dead-letter entry keeps of its fields."""
    size = sum(len(value) for value in fields.values() if isinstance(value, (bytes, str)))
    if size <= DEADLETTER_COPY_BYTES:
        return dict(fields)
    return {b"op": _field(fields, "op") or b"", b"fields_bytes": str(size).encode()}


def connect(url: str, cluster: bool = False) -> Any:
    """An asyncio client that keeps stream fields as bytes (the registry's client decodes text)."""
    return connection.async_client(url, cluster, decode_responses=False)


UPDATE_THREAD_NICENESS = 10
"""Niceness added to the threads that read and apply updates: where they compete with requests for
a core, the scheduler gives requests the larger share, and updates use what requests leave."""


def lower_thread_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread is its own scheduling
    entity; elsewhere, or where refused, nothing changes)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPDATE_THREAD_NICENESS)


class UpdateApplier:
    """Follows every served table's stream inside one replica (one task a table)."""

    def __init__(self, sync: ReplicaSync) -> None:
        self.sync = sync
        self.service = sync.service
        self.metrics = sync.metrics
        self.client = connect(sync.settings.redis_url or "", sync.settings.redis_cluster)
        # the stream is read off the event loop: a batch of entries is megabytes of rows, and
        # receiving and parsing it on the loop would hold up the requests it serves meanwhile
        # (made on first read, in its thread: a cluster client connects as it is made)
        self.reader: Any = None
        self._reader_lock = threading.Lock()
        self._closed = False
        self.read_executor = ThreadPoolExecutor(
            max_workers=MAX_READ_THREADS, thread_name_prefix="embserve-update-reads", initializer=lower_thread_priority
        )
        # one thread applies every entry: entries of a table apply in stream order
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embserve-updates", initializer=lower_thread_priority
        )
        self.positions: dict[str, tuple[weakref.ref[Table], str]] = {}
        """table -> (the Table object followed, weakly; the last stream id applied to it)"""
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._manager: asyncio.Task[None] | None = None
        self._gaps_seen: set[tuple[str, str]] = set()
        self._entries_added: dict[str, int] = {}
        """table -> the stream's entries-added at its last gap check (0: no stream)"""

    # ---- positions -----------------------------------------------------------------------------
    def position(self, name: str, table: Table) -> str:
        """Where to read on: after the last entry applied to this very table object, or after the
        table's own sequence if that is further (a swapped-in version replays what is newer than
        the sequence it was saved with; an applied batch moves the sequence before its position
        is recorded here). With Redis only the log moves a table's sequence (admin updates leave
        it), so it never points past an entry not applied."""
        saved = sequence_to_id(table.sequence)
        known = self.positions.get(name)
        # the table itself, weakly: an id() could be reused by a version loaded after it was freed
        if known is not None and known[0]() is table:
            return max(known[1], saved, key=stream_order)
        return saved

    def last_applied(self, name: str) -> str:
        known = self.positions.get(name)
        return known[1] if known is not None else ""

    # ---- applying ------------------------------------------------------------------------------
    async def apply_entries(self, name: str, table: Table, entries: list[tuple[Any, Any]]) -> None:
        decoded_ids = [(_text(raw), fields) for raw, fields in entries]
        loop = asyncio.get_running_loop()
        results, stalled = await loop.run_in_executor(self.executor, apply_batch, table, decoded_ids)
        by_id = dict(decoded_ids)
        for stream_id, applied, reason in results:
            self.positions[name] = (weakref.ref(table), stream_id)
            if reason and not self.sync.reports_events:
                log.warning("table %r: update %s refused: %s", name, stream_id, reason)
            elif reason:
                self.sync.count_event(self.metrics.updates_refused, name)
                dead = {**dead_letter_fields(by_id[stream_id]), b"id": stream_id.encode(), b"reason": reason.encode()}
                try:
                    await self.client.xadd(keys.deadletter_key(name), dead, maxlen=DEADLETTER_MAXLEN, approximate=True)
                except Exception as exc:
                    # the refusal stands; only its copy is lost (a full Redis, a key of the wrong type)
                    log.warning(
                        "table %r: update %s refused: %s; its dead-letter copy could not be written: %s",
                        name,
                        stream_id,
                        reason,
                        exc,
                    )
                else:
                    log.warning("table %r: update %s refused and dead-lettered: %s", name, stream_id, reason)
            else:
                self.sync.count_event(self.metrics.updates_applied, name, amount=applied)
        if results:
            ms = int(results[-1][0].partition("-")[0])
            self.metrics.update_lag.labels(name).set(max(0.0, time.time() - ms / 1000))
            self.metrics.update_last_applied.labels(name).set(ms / 1000)
        self.sync.note_update(name, self.last_applied(name))
        if name in self.service.store.names() and self.service.get(name).table is table:
            self.metrics.set_delta(name, table.delta_rows, table.delta_slots, table.delta_capacity, table.nbytes)
        if stalled:
            raise DeltaFull(stalled)

    async def read_batch(self, name: str, table: Table, block_ms: int | None) -> int:
        """One XREAD from the table's position; applies what it returns. Returns entries read."""
        stream = keys.updates_key(name)
        read = functools.partial(self._xread, stream, self.position(name, table), block_ms)
        reply = await asyncio.get_running_loop().run_in_executor(self.read_executor, read)
        entries = [e for _, batch in reply or [] for e in batch]
        if entries:
            await self.apply_entries(name, table, entries)
        return len(entries)

    def _xread(self, stream: str, position: str, block_ms: int | None) -> Any:
        return self._reader().xread({stream: position}, count=READ_COUNT, block=block_ms)

    def _reader(self) -> Any:
        """The one sync client every read thread shares, made by the first read that needs it
        (under a lock: reads of several tables start together, and a client made after `stop`
        would never be closed)."""
        with self._reader_lock:
            if self._closed:
                raise RuntimeError("the update applier is stopped")
            if self.reader is None:
                settings = self.sync.settings
                self.reader = connection.sync_client(settings.redis_url or "", settings.redis_cluster)
            return self.reader

    async def check_gap(self, name: str, table: Table) -> None:
        """Compare the table's position with the stream (XINFO STREAM): entries this replica will
        never apply are logged and counted, once for each gap."""
        stream = keys.updates_key(name)

        def info() -> Any:
            try:
                return self._reader().xinfo_stream(stream)
            except connection.ResponseError as exc:
                # "no such key": no stream (yet, or any more); anything else (TRYAGAIN or
                # CLUSTERDOWN in a failover) is an error, not a stream gone with its updates
                if "no such key" in str(exc).lower():
                    return None
                raise

        reply = await asyncio.get_running_loop().run_in_executor(self.read_executor, info)
        # the position once the reply is in: a check that took it before the reply reported the
        # entries of a batch applied meanwhile as lost (a test that trimmed the stream right after
        # that batch saw it under load)
        position = self.position(name, table)
        self.metrics.update_gaps.labels(name)  # the series exists, at 0, before any gap
        gap = log_gap(position, reply) if reply else ""
        gap = gap or log_reset(self._entries_added.get(name, 0), reply or None)
        self._entries_added[name] = entries_added(reply or None)
        if gap and (name, gap) not in self._gaps_seen:
            self._gaps_seen.add((name, gap))
            self.sync.count_event(self.metrics.update_gaps, name)
            self.sync.note_update_problem(name, f"{UPDATES_LOST}: {gap}")
            log.warning("table %r: %s: %s", name, UPDATES_LOST, gap)

    async def catch_up(self, name: str, table: Table, seconds: float) -> int:
        """Apply every entry after the table's position, until the stream has no more or `seconds`
        have passed (before a table serves: at start and before a published version is swapped
        in; the follower replays the rest). Entries after the version's own sequence that were
        trimmed are reported first: once replayed past, the position would no longer show them.

        The time limit is checked between batches, never by cancelling one: a batch cancelled
        while its thread applied it was applied, but its position was not recorded, and the
        follower applied it again (a repeated upsert takes delta slots again; a repeated delete
        is refused and dead-lettered)."""
        await self.check_gap(name, table)
        deadline = time.monotonic() + seconds
        total = 0
        while (read := await self.read_batch(name, table, None)) > 0:
            total += read
            if time.monotonic() >= deadline:
                log.warning(
                    "table %r: replaying the update log took over %.0f s (catch_up_seconds); it serves what is "
                    "applied (%d entries) and its follower replays the rest",
                    name,
                    seconds,
                    total,
                )
                return total
        self.metrics.update_lag.labels(name).set(0)
        return total

    # ---- following -----------------------------------------------------------------------------
    def start(self) -> None:
        self._manager = asyncio.create_task(self._manage())

    async def _manage(self) -> None:
        """One follower task for every served table; tasks of tables no longer served end."""
        while True:
            names = set(self.service.store.names())
            for name in names - set(self.tasks):
                self.tasks[name] = asyncio.create_task(self._follow(name))
            for name in set(self.tasks) - names:
                self.tasks.pop(name).cancel()
            for name, task in list(self.tasks.items()):
                if task.done():
                    self.tasks.pop(name)
            await asyncio.sleep(0.5)

    async def _follow(self, name: str) -> None:
        backoff = 0.1
        checked_at = -GAP_CHECK_SECONDS
        while True:
            try:
                table = self.service.get(name).table
            except TableNotFound:
                return
            try:
                if time.monotonic() - checked_at >= GAP_CHECK_SECONDS:
                    checked_at = time.monotonic()
                    await self.check_gap(name, table)
                read = await self.read_batch(name, table, BLOCK_MS)
                backoff = 0.1
                if read == 0:
                    self.metrics.update_lag.labels(name).set(0)
                elif read < READ_COUNT:
                    # entries that arrive meanwhile are applied as one batch (see apply_batch)
                    await asyncio.sleep(self.sync.settings.update_apply_interval_seconds)
            except DeltaFull as exc:
                log.error("table %r: %s; updates wait for a compacted version", name, exc)
                self.sync.count_event(self.metrics.updates_stalled, name)
                self.sync.note_update_problem(name, f"{UPDATES_STALLED}: {exc}")
                await asyncio.sleep(self.sync.settings.redis_retry_max_seconds)
            except self.sync.failures_types as exc:
                self.sync.mark_failed("updates", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.sync.settings.redis_retry_max_seconds)
            except Exception:
                log.exception("table %r: update follower failed; retrying", name)
                await asyncio.sleep(self.sync.settings.redis_retry_max_seconds)

    async def stop(self) -> None:
        tasks = [t for t in (self._manager, *self.tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with self._reader_lock:
            self._closed = True
            reader, self.reader = self.reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.read_executor.shutdown(wait=False, cancel_futures=True)
