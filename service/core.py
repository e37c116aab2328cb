"""EmbeddingService: the one core API every transport calls.

It owns validation of request limits, the concurrency gate (over the limit: Overloaded at once,
no queue), readiness and draining, timing and metrics, and runs table compute on a thread
executor so the event loop never waits on a kernel. Transports parse into plain values and numpy
arrays, call a method here, and serialize what it returns.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from runtime.errors import (
    ArtifactError,
    ArtifactNotFound,
    EmbserveError,
    Forbidden,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)
from runtime.store import LoadedTable, TableStore
from runtime.table import Table, __version__, check_exclude_self, checked_sequence, load_table
from runtime.validation import check_queries, check_table_name, kind_of_values
from service import oip
from service.batching import SearchBatcher, SearchCall
from service.errors import TableReplaced, status_label
from service.metrics import Metrics
from service.multi import MultiLookupResult, answer, bag_offsets, check_request, pool_mode
from service.requests import (
    DeleteKeysRequest,
    InferRequest,
    InferResult,
    LoadRequest,
    LookupRequest,
    MultiLookupRequest,
    ScoreRequest,
    SearchRequest,
    UpsertRequest,
)
from service.settings import Settings
from service.state import ActiveVersions
from service.sync import SyncHooks

log = logging.getLogger("embserve")
T = TypeVar("T")


class TakenIn:
    """A request from its transport's first look at it to its answer (a context manager): whether
    it already holds a concurrency slot (`admission`), whether it has been counted in the request
    metrics, and the status it ended with (set by the core for a request it gets to, else by the
    transport). It is counted on exit here, timed from its arrival, so the latency histogram holds
    what a client waits for (the body read and parsed, the answer serialized), unless counted
    already (refused by admission) or left without a status (a client that left before the core)."""

    __slots__ = ("admitted", "counted", "labels", "receiving", "replayed", "service", "start", "status", "token")

    def __init__(
        self,
        service: EmbeddingService,
        labels: tuple[str, str, str],
        admitted: bool,
        receiving: bool = False,
        replayed: bool = False,
    ) -> None:
        self.service = service
        self.labels = labels
        """(transport, operation, table label)"""
        self.admitted = admitted
        self.replayed = replayed
        """a sibling worker's replay of a change it applied: held to no limit of the body"""
        self.receiving = receiving
        """its body is arriving (counted in service.receiving from enter to admission or exit)"""
        self.counted = False
        self.status: str | None = None
        self.start = time.perf_counter()
        self.token: Any = None

    def __enter__(self) -> TakenIn:
        self.token = _TAKEN_IN.set(self)
        if self.receiving:
            self.service.receiving += 1
        return self

    def stop_receiving(self) -> None:
        if self.receiving:
            self.receiving = False
            self.service.receiving -= 1

    def __exit__(self, *exc: object) -> None:
        _TAKEN_IN.reset(self.token)
        self.stop_receiving()
        if self.admitted:
            self.service._release()
        if not self.counted and self.status is not None:
            metrics = self.service.metrics
            labels = (*self.labels, self.status)
            metrics.child(metrics.request_duration, *labels).observe(time.perf_counter() - self.start)
            metrics.child(metrics.requests, *labels).inc()


_TAKEN_IN: ContextVar[TakenIn | None] = ContextVar("embserve_taken_in", default=None)
"""The running request as its transport took it in (None: a caller inside the process)."""
CLIENT_GONE = "499"
"""The status label of a request whose client left before its answer (nginx's code for it)."""
INLINE_MAX_IDS = 1024
"""Plain lookups up to this many ids run on the event loop (a few tens of µs of gather)."""
INLINE_CHECK_VALUES = 1 << 16
"""Queries of a batched search up to this many values are checked on the event loop (~10 µs);
larger ones in a kernel thread, so a wide batch never holds the loop for milliseconds."""


def as_array(value: Any, field: str, dtype: Any = None) -> np.ndarray:
    """JSON value -> ndarray, refusing ragged or non-numeric input with a message naming `field`."""
    if value is None:
        raise InvalidRequest(f"{field} is required")
    try:
        arr = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        # numpy's own text (inhomogeneous shapes, detected parts) names nothing the caller sent
        raise InvalidRequest(f"{field} must be a rectangular array of numbers (every row of one length)") from None
    if arr.dtype.kind not in "biuf" and arr.size:
        raise InvalidRequest(f"{field} must hold numbers, got {kind_of_values(arr)}")
    if arr.dtype.kind == "b":
        raise InvalidRequest(f"{field} must hold numbers, not booleans")
    return arr


class EmbeddingService:
    def __init__(self, settings: Settings, store: TableStore | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store or TableStore()
        self.metrics = metrics or Metrics()
        self.groups = settings.group_specs()
        """Open Inference Protocol group models: {name: ((feature, table), ...)}"""
        self.executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="embserve-kernel")
        self._admin_locks: dict[str, asyncio.Lock] = {}
        self.in_flight = 0
        self.receiving = 0
        """HTTP requests whose body is still arriving (they hold no concurrency slot yet)"""
        self.arriving_body_bytes = 0
        """the bytes those requests have received so far (max_arriving_body_bytes bounds them)"""
        self.draining = False
        self.started = False
        root = settings.artifact_root
        # with Redis the registry is the truth about active versions; the state file is the one-node record
        self.state = ActiveVersions(Path(root)) if root is not None and settings.redis_url is None else None
        self.sync: SyncHooks | None = None
        self.catching_up = False
        """True while a replica replays the update log at start (not ready until it has)"""
        """set when Redis is configured: admin PUT / DELETE then publish / withdraw for every replica"""
        self.search_batcher = (
            SearchBatcher(
                settings.search_batch_max_queries,
                settings.search_batch_delay_ms / 1000,
                self._search_call,
                self._observe_batch,
            )
            if settings.search_batch_max_queries
            else None
        )
        """joins concurrent searches into one kernel call (EMBSERVE_SEARCH_BATCH_MAX_QUERIES); None: off"""
        self.metrics.build.info({"version": __version__})
        self._refresh_ready()

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.started and not self.draining and not self.catching_up and len(self.store) > 0

    def _refresh_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    def refresh_ready(self) -> None:
        self._refresh_ready()

    def load_configured(self, skip: Collection[str] = ()) -> None:
        """Load the tables the settings name (or the demo table), warmed; blocking, at start.
        Tables named in `skip` are already served (from the Redis registry)."""
        specs = [(name, path) for name, path in self.settings.table_specs() if name not in skip]
        configured = dict(specs)
        remembered = self.state.read() if self.state is not None else {}
        if remembered:
            specs = self._with_remembered(specs, remembered)
        if not specs and not skip and self.settings.demo:
            from service.demo import demo_table_path

            path = demo_table_path(self.settings)
            log.info("no table configured: serving the built-in demo table 'demo' from %s", path)
            specs = [("demo", path)]
        for name, path in specs:
            try:
                table = load_table(path, parallel_min_ids=self.settings.parallel_min_ids)
            except ArtifactError:
                fallback = configured.get(name)
                if name not in remembered or fallback is None or fallback == path:
                    raise
                log.warning(
                    "table %r: the version recorded in the state file does not load; serving %s", name, fallback
                )
                path = fallback
                table = load_table(path, parallel_min_ids=self.settings.parallel_min_ids)
            if self.settings.warmup:
                table.warmup()
            self._install(name, table)
            log.info(
                "loaded table %r: %d x %d %s (%d bytes) from %s",
                name,
                table.rows,
                table.dim,
                table.codec,
                table.nbytes,
                path,
            )
        self.started = True
        self._refresh_ready()

    def _with_remembered(
        self, specs: list[tuple[str, Path]], remembered: dict[str, dict[str, Any]]
    ) -> list[tuple[str, Path]]:
        """The configured (name, path) list with each admin-loaded table's recorded artifact in place
        of (or after) its configured one; a recorded path that leaves the root is ignored."""
        paths = dict(specs)
        for name, entry in remembered.items():
            try:
                paths[name] = self.confine(entry["path"])
            except EmbserveError as exc:
                log.warning("state file: ignoring table %r: %s", name, exc)
                continue
            log.info("table %r: serving %s, recorded by an admin load before the restart", name, entry["path"])
        return list(paths.items())

    def start_draining(self) -> None:
        self.draining = True
        self._refresh_ready()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight or receiving its body (True) or `timeout` seconds
        pass (False)."""
        deadline = time.monotonic() + timeout
        while (self.in_flight > 0 or self.receiving > 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight == 0 and self.receiving == 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def install(self, name: str, table: Table) -> LoadedTable:
        """Make `table` the served version of `name` (atomic swap); readiness follows."""
        entry = self._install(name, table)
        self._refresh_ready()
        return entry

    def uninstall(self, name: str) -> LoadedTable:
        entry = self.store.remove(name)
        self.metrics.clear_table(name)
        self._refresh_ready()
        return entry

    def _install(self, name: str, table: Table) -> LoadedTable:
        entry = self.store.put(name, table)
        rerank = table.rerank.name if table.rerank is not None else ""
        self.metrics.set_table(name, table.rows, table.nbytes, table.fp32_nbytes, table.codec, rerank, table.version)
        self.metrics.set_delta(name, table.delta_rows, table.delta_slots, table.delta_capacity, table.nbytes)
        return entry

    # ---- request plumbing -----------------------------------------------------------------------
    def _table_label(self, name: str | None) -> str:
        # labels stay bounded: a name that is neither served nor a configured group is "unknown";
        # a request of many tables (None) has an empty label
        if name is None:
            return ""
        return name if name in self.store or name in self.groups else "unknown"

    def _check_room(self, transport: str, operation: str, table: str | None, before_drain: bool = False) -> None:
        """Refuses (and counts) a request that cannot be admitted now; `before_drain` for one taken
        in before the drain began, which the drain waits for."""
        if (self.draining and not before_drain) or not self.started:
            self._count_refusal(transport, operation, table, "503")
            raise NotReady("server is draining" if self.draining else "server is starting")
        if self.in_flight >= self.settings.max_concurrency:
            self.metrics.overloaded.labels(transport).inc()
            self._count_refusal(transport, operation, table, "429")
            raise Overloaded(f"server is at its limit of {self.settings.max_concurrency} concurrent requests; retry")

    def _admit(self, transport: str, operation: str, table: str | None, before_drain: bool = False) -> None:
        self._check_room(transport, operation, table, before_drain)
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def _count_refusal(self, transport: str, operation: str, table: str | None, status: str) -> None:
        self.metrics.requests.labels(transport, operation, self._table_label(table), status).inc()
        taken = _TAKEN_IN.get()
        if taken is not None:
            taken.counted = True  # the transport's own record must not count it again

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()

    def receive_body(self, transport: str, operation: str, table: str | None) -> TakenIn:
        """The record of an HTTP request about to read its body, which it does holding no
        concurrency slot (a client sending its body slowly must not keep others out); refused at
        once, before a byte of the body is read, while the limit is full. Entered, it counts the
        request as receiving until `admit` (after the body) or its exit; a request that ends
        before reaching the core is counted on exit, with the status the transport set."""
        self._check_room(transport, operation, table)
        return TakenIn(self, (transport, operation, self._table_label(table)), admitted=False, receiving=True)

    def admit(self, taken: TakenIn, table: str | None) -> None:
        """Take the concurrency slot of a request whose body has arrived (`receive_body`); it
        keeps it for the core call made inside (`request`) and gives it back on exit. It is
        admitted even if the drain has begun since: `receive_body` refused it otherwise, so it
        began before the drain, which waits for it."""
        transport, operation, _ = taken.labels
        self._admit(transport, operation, table, before_drain=True)
        taken.admitted = True
        taken.stop_receiving()

    def take_arriving(self, nbytes: int) -> None:
        """Count `nbytes` more of a request body received before admission; Overloaded past
        max_arriving_body_bytes (bodies arriving at once, over all of this process's connections)."""
        limit = self.settings.max_arriving_body_bytes
        if self.arriving_body_bytes + nbytes > limit:
            self.metrics.overloaded.labels("http").inc()
            raise Overloaded(f"request bodies arriving at once exceed the server's {limit} bytes; retry")
        self.arriving_body_bytes += nbytes
        self.metrics.arriving_body_bytes.inc(nbytes)

    def release_arriving(self, nbytes: int) -> None:
        self.arriving_body_bytes -= nbytes
        self.metrics.arriving_body_bytes.dec(nbytes)

    def taken_in(self, transport: str, operation: str, table: str | None) -> TakenIn:
        """The record of a request whose transport lets the core admit it (gRPC), entered for
        the whole call: counted once, by the core or, refused before, on exit."""
        return TakenIn(self, (transport, operation, self._table_label(table)), admitted=False)

    def replay_taken_in(self, transport: str, operation: str, table: str | None) -> TakenIn:
        """The record of a sibling worker's replay of an admin change it has applied: admitted
        whatever the limits and the drain (refused, it would leave the workers differing), yet
        in flight, so a drain waits for it."""
        self.in_flight += 1
        self.metrics.in_flight.inc()
        return TakenIn(self, (transport, operation, self._table_label(table)), admitted=True, replayed=True)

    def client_disconnected(self, transport: str) -> None:
        """A client hung up before its request was read (HTTP): counted as a disconnect, not as a
        request with a status, nor as an error."""
        self._count_disconnect(transport)
        taken = _TAKEN_IN.get()
        if taken is not None:
            taken.counted = True

    def _count_disconnect(self, transport: str) -> None:
        self.metrics.client_disconnects.labels(transport).inc()
        log.debug("%s client went away before its request was complete", transport)

    def read_timed_out(self, transport: str, phase: str) -> None:
        """A connection was closed because a request's `phase` ("header" or "body") stalled, or
        its client stopped reading its answer ("write")."""
        self.metrics.read_timeouts.labels(transport, phase).inc()

    def connection_refused(self, transport: str) -> None:
        """A connection over the open-connection cap was closed at once."""
        self.metrics.connections_refused.labels(transport).inc()

    @contextmanager
    def request(self, transport: str, operation: str, table: str | None = None) -> Iterator[None]:
        """Admission (unless the transport already admitted this request), in-flight accounting
        and the request metrics around one request (`table` None: a request of many tables)."""
        taken = _TAKEN_IN.get()
        if taken is not None and taken.service is not self:
            taken = None
        admitted_before = taken is not None and taken.admitted
        if not admitted_before:
            self._admit(transport, operation, table)
        start = time.perf_counter()
        status = "ok"
        try:
            yield
        except asyncio.CancelledError:
            # a gRPC call whose client cancelled it or whose deadline passed: a client that left
            # (nginx's 499), not a server error, and still in the latency histogram, where the
            # calls clients gave up on belong (unless the server is stopping: then the 503 it gets)
            status = "503" if self.draining else CLIENT_GONE
            raise
        except BaseException as exc:
            # the label only: holding the exception in this generator's frame, which its traceback
            # holds, would make a cycle that keeps the request's arrays alive until a gc pass
            status = status_label(exc)
            raise
        finally:
            if not admitted_before:
                self._release()
            if status == CLIENT_GONE:  # a gRPC call: counted as a disconnect and with its status
                self._count_disconnect(transport)
            if taken is None:
                labels = (transport, operation, self._table_label(table), status)
                self.metrics.child(self.metrics.request_duration, *labels).observe(time.perf_counter() - start)
                self.metrics.child(self.metrics.requests, *labels).inc()
            else:
                # counted by the transport's record once the answer is out: the time a client
                # waits is mostly outside this call (the body parsed, the answer serialized and
                # written; at 256 ids over JSON, 1.6 ms against the 0.05 ms in here)
                taken.status = status

    async def _compute(self, operation: str, codec: str, fn: Callable[[], T], inline: bool = False) -> T:
        """Run table compute off the event loop; `inline` work (a small gather, tens of µs) runs
        on the loop, where the thread hop would cost more than the work itself."""

        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self.metrics.child(self.metrics.kernel_duration, operation, codec).observe(time.perf_counter() - start)

        if inline:
            return timed()
        return await asyncio.get_running_loop().run_in_executor(self.executor, timed)

    def replaying(self) -> bool:
        """Whether the running request is a sibling worker's replay (`replay_taken_in`): its body,
        written again with the sequence the sibling reached, may be larger than the one the
        sibling took in, and a refusal here would leave the workers differing."""
        taken = _TAKEN_IN.get()
        return taken is not None and taken.service is self and taken.replayed

    def json_values_limit(self) -> int | None:
        """Numbers a JSON body may hold (None: no limit, for a replay)."""
        return None if self.replaying() else self.settings.max_json_values

    def check_body_size(self, nbytes: int) -> None:
        if self.replaying():
            return
        if nbytes > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"request body of {nbytes} bytes exceeds the limit of {self.settings.max_body_bytes}")

    def _limit(self, count: int, limit: int, what: str) -> None:
        if count > limit:
            raise PayloadTooLarge(f"{count} {what} exceed the limit of {limit} a request")

    def _limit_answer(self, nbytes: int, described: str) -> None:
        """Refuse, before any work, a request whose answer arrays (`described`) would pass
        max_answer_bytes: a lookup of 100,000 ids of a 1,024-wide table is 400 MB, more than gRPC
        sends."""
        limit = self.settings.max_answer_bytes
        if nbytes > limit:
            raise PayloadTooLarge(
                f"the answer would be {nbytes} bytes ({described}), over the limit of {limit} a request; ask for fewer"
            )

    def _limit_search_answer(self, nq: int, k: Any) -> None:
        """A search's answer, ids (int64) and scores (float32) for k results a query (a k that
        is not a positive integer is the table's to refuse)."""
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
            self._limit_answer(
                nq * int(k) * 12, f"{nq} queries × {int(k)} results, an int64 id and a float32 score each"
            )

    def _check_k(self, k: Any, oversample: Any, excluded: int = 0) -> None:
        """k, and the candidates a search takes: k × oversample, or (k + the most ids one query
        leaves out) × oversample, within max_k (the table checks their types and signs)."""
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            self._limit(int(k), self.settings.max_k, "results (k)")
            # a k below 1 is the table's to refuse, by name, before any count of candidates
            if (
                k > 0
                and isinstance(oversample, (int, np.integer))
                and not isinstance(oversample, bool)
                and oversample > 0
            ):
                self._limit(int(k) * int(oversample), self.settings.max_k, "candidates (k × oversample)")
                if excluded:
                    self._limit(
                        (int(k) + excluded) * int(oversample),
                        self.settings.max_k,
                        "candidates ((k + the most exclude_ids of one query) × oversample)",
                    )

    def _exclusions(self, request: SearchRequest) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        """A search's exclude_ids and exclude_lengths as arrays (None: not given; read once, and
        handed to the table as read), and the most ids one query may leave out, as sent (0: none),
        with the count of exclude_ids within max_ids; the table checks the values themselves."""
        if request.exclude_ids is None:
            return None, request.exclude_lengths, 0  # lengths without ids: the table names that
        ids = as_array(request.exclude_ids, "exclude_ids")
        self._limit(ids.size, self.settings.max_ids, "exclude_ids")
        if request.exclude_lengths is None:
            return ids, None, ids.size
        lengths = as_array(request.exclude_lengths, "exclude_lengths")
        most = max(0, min(ids.size, int(lengths.max()))) if lengths.dtype.kind in "iu" and lengths.size else 0
        return ids, lengths, most

    # ---- read operations ------------------------------------------------------------------------
    def describe_entry(self, entry: LoadedTable) -> dict[str, Any]:
        info = entry.table.describe()
        info["name"] = entry.name
        info["loaded_at"] = entry.loaded_at.isoformat(timespec="seconds")
        if self.sync is not None:
            info["last_update_id"] = self.sync.last_update_id(entry.name)
        return info

    def list_tables(self) -> list[dict[str, Any]]:
        return [self.describe_entry(e) for e in self.store.entries()]

    def get(self, name: str) -> LoadedTable:
        return self.store.get(name)

    async def lookup(self, transport: str, request: LookupRequest) -> np.ndarray:
        """ids (n,) -> (n, dim) float32; with bags (lengths or offsets (B,)) -> pooled (B, dim) float32."""
        name = request.table
        with self.request(transport, "lookup_pooled" if request.pooled else "lookup", name):
            return await self._lookup(self.store.get(name), request)

    async def _lookup(self, entry: LoadedTable, request: LookupRequest) -> np.ndarray:
        """A lookup answered by `entry`'s table (taken from the store by the caller)."""
        name = entry.name
        ids_arr = as_array(request.ids, "ids")
        self._limit(ids_arr.size, self.settings.max_ids, "ids")
        self.metrics.child(self.metrics.ids_per_request, name).observe(ids_arr.size)
        table = entry.table
        small = ids_arr.size <= INLINE_MAX_IDS
        offsets_arr = bag_offsets(request, ids_arr.size)
        out_rows = ids_arr.size if offsets_arr is None else offsets_arr.size
        self._limit_answer(out_rows * table.dim * 4, f"{out_rows} rows × {table.dim} float32")
        if offsets_arr is None:
            rows, missing = await self._compute(
                "lookup", table.codec, lambda: table.lookup_counted(ids_arr), inline=small
            )
        else:
            self._limit(offsets_arr.size, self.settings.max_ids, "bags")
            weights = None if request.weights is None else as_array(request.weights, "weights")
            mode = pool_mode(request)
            rows, missing = await self._compute(
                "lookup_pooled",
                table.codec,
                lambda: table.lookup_pooled_counted(ids_arr, offsets_arr, mode, weights),
            )
        if missing:
            self.metrics.child(self.metrics.missing_keys, name).inc(missing)
        return rows

    async def multi_lookup(self, transport: str, request: MultiLookupRequest) -> MultiLookupResult:
        """Many tables in one request, answered from the table objects taken once at the start."""
        with self.request(transport, "multi_lookup"):
            return await self._multi_lookup(request)

    async def _multi_lookup(self, request: MultiLookupRequest) -> MultiLookupResult:
        checked = check_request(request, self.store, self.settings.max_tables_per_request, self.settings.max_ids)
        values = sum(item.out_rows * item.table.dim for item in checked)
        self._limit_answer(values * 4, f"{values} float32 over {len(checked)} tables")
        total = sum(item.ids.shape[0] for item in checked)
        result = await self._compute("multi_lookup", "multi", lambda: answer(checked), inline=total <= INLINE_MAX_IDS)
        for item, answered in zip(checked, result.results, strict=True):
            self.metrics.child(self.metrics.ids_per_request, item.name).observe(item.ids.shape[0])
            if answered.missing:
                self.metrics.child(self.metrics.missing_keys, item.name).inc(answered.missing)
        return result

    async def search(self, transport: str, request: SearchRequest) -> tuple[np.ndarray, np.ndarray]:
        """-> ids (q, k') int64, scores (q, k') float32, best first."""
        with self.request(transport, "search", request.table):
            return await self._search(self.store.get(request.table), request)

    async def _search(self, entry: LoadedTable, request: SearchRequest) -> tuple[np.ndarray, np.ndarray]:
        """A search answered by `entry`'s table (taken from the store by the caller)."""
        name = entry.name
        if (request.queries is None) == (request.query_ids is None):
            raise InvalidRequest("give exactly one of queries or query_ids")
        k, metric, oversample = request.k, request.metric, request.oversample
        exclude_ids, exclude_lengths, most_excluded = self._exclusions(request)
        self._check_k(k, oversample, most_excluded)
        table = entry.table
        # a search that leaves ids out is answered alone: the batcher's calls carry no exclusions
        batcher = self.search_batcher if exclude_ids is None and exclude_lengths is None else None
        if request.query_ids is not None:
            qids = as_array(request.query_ids, "query_ids")
            self._limit(qids.size, self.settings.max_queries, "queries")
            self._limit_search_answer(qids.size, k)
            self.metrics.child(self.metrics.queries_per_request, name).observe(qids.size)
            exclude_self = request.exclude_self
            if batcher is not None and qids.ndim == 1 and batcher.takes(qids.size):
                # checked here, in the order `search_by_id` checks them: a bad request is refused alone
                k, metric, oversample = table.check_search_args(k, metric, oversample)
                call = SearchCall(k, metric, oversample, check_exclude_self(exclude_self))
                table.check_query_ids(qids)
                return await batcher.search(table, name, qids.astype(np.int64, copy=False), call)
            return await self._compute(
                "search_by_id",
                table.codec,
                lambda: table.search_by_id(qids, k, metric, oversample, exclude_self, exclude_ids, exclude_lengths),
            )
        if request.exclude_self is not None:
            # no query id to leave out, yet a value no search takes is refused as by query_ids
            check_exclude_self(request.exclude_self)
        q = as_array(request.queries, "queries")
        nq = q.shape[0] if q.ndim == 2 else 1
        self._limit(nq, self.settings.max_queries, "queries")
        self._limit_search_answer(nq, k)
        self.metrics.child(self.metrics.queries_per_request, name).observe(nq)
        if batcher is not None and batcher.takes(nq):
            # checked here, in the order `search` checks them, so a bad request is refused alone
            call = SearchCall(*table.check_search_args(k, metric, oversample))
            if q.size <= INLINE_CHECK_VALUES:
                queries = check_queries(q, table.dim)
            else:
                queries = await asyncio.get_running_loop().run_in_executor(self.executor, check_queries, q, table.dim)
            return await batcher.search(table, name, queries, call)
        return await self._compute(
            "search", table.codec, lambda: table.search(q, k, metric, oversample, exclude_ids, exclude_lengths)
        )

    async def _search_call(self, table: Table, queries: np.ndarray, call: SearchCall) -> tuple[np.ndarray, np.ndarray]:
        """One kernel call of the search batcher: queries (q, dim) float32, or query ids (q,) int64
        when call.exclude_self is set -> ids, scores (q, k')."""
        k, metric, oversample = call.k, call.metric, call.oversample
        if call.exclude_self is None:
            return await self._compute("search", table.codec, lambda: table.search(queries, k, metric, oversample))
        exclude_self = call.exclude_self
        return await self._compute(
            "search_by_id", table.codec, lambda: table.search_by_id(queries, k, metric, oversample, exclude_self)
        )

    def _observe_batch(self, name: str, requests: int, queries: int) -> None:
        self.metrics.child(self.metrics.search_batch_requests, name).observe(requests)
        self.metrics.child(self.metrics.search_batch_queries, name).observe(queries)

    # ---- Open Inference Protocol ----------------------------------------------------------------
    def resolve_model(self, name: str, version: str | None = None) -> oip.Model:
        """An OIP model name (and optional version) -> its table(s), from one snapshot of the store."""
        return oip.resolve(self.store.snapshot(), self.groups, name, version)

    async def infer(self, transport: str, request: InferRequest) -> InferResult:
        """One OIP inference, accounted as one request (operation "infer", the model's table or
        group as its label) under the same admission and limits as a native one. The model is
        resolved inside it, and a one-table model is answered by the very table object it resolved
        to, so the version reported is the version that answered."""
        with self.request(transport, "infer", oip.model_table(request.model)):
            model = self.resolve_model(request.model, request.version)
            oip.refuse_repeated_outputs(request.outputs)
            typed = oip.core_request(model, request.inputs, request.parameters)
            answered: np.ndarray | tuple[np.ndarray, np.ndarray] | MultiLookupResult
            if isinstance(typed, MultiLookupRequest):
                answered = await self._multi_lookup(typed)
            else:
                assert model.entry is not None
                if isinstance(typed, LookupRequest):
                    answered = await self._lookup(model.entry, typed)
                else:
                    answered = await self._search(model.entry, typed)
            version, outputs = oip.answer_outputs(model, answered, request.outputs)
            return InferResult(model.name, version, outputs)

    async def score(self, transport: str, request: ScoreRequest) -> np.ndarray:
        """candidate_ids (q, c) with queries (q, dim) or query_ids (q,) -> (q, c) float32."""
        name = request.table
        with self.request(transport, "score", name):
            entry = self.store.get(name)
            cands = as_array(request.candidate_ids, "candidate_ids")
            self._limit(cands.size, self.settings.max_candidates, "candidate ids")
            self._limit_answer(cands.size * 4, f"{cands.size} float32 scores")
            nq = cands.shape[0] if cands.ndim >= 1 else 0
            self._limit(nq, self.settings.max_queries, "queries")
            self.metrics.child(self.metrics.queries_per_request, name).observe(nq)
            q = as_array(request.queries, "queries") if request.queries is not None else None
            qids = as_array(request.query_ids, "query_ids") if request.query_ids is not None else None
            table, metric = entry.table, request.metric
            return await self._compute(
                "score", table.codec, lambda: table.score(cands, queries=q, query_ids=qids, metric=metric)
            )

    # ---- admin ----------------------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        token = self.settings.admin_token
        if not token:
            raise Forbidden("admin endpoints are disabled: set EMBSERVE_ADMIN_TOKEN to enable them")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("admin endpoints need 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("the bearer token is not the admin token")

    def confine(self, path: Any) -> Path:
        """Resolve an admin-given artifact path inside the artifact root (no '..', no symlink escape)."""
        root = self.settings.artifact_root
        if root is None:
            raise Forbidden("no artifact root is configured (EMBSERVE_ARTIFACT_ROOT): admin loads are disabled")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidRequest("path must be a non-empty string")
        root_real = Path(root).resolve()
        candidate = Path(path)
        if ".." in candidate.parts:
            raise Forbidden("path may not contain '..'")
        try:
            resolved = (candidate if candidate.is_absolute() else root_real / candidate).resolve()
            if not resolved.is_relative_to(root_real):
                raise Forbidden(f"path {path!r} is outside the artifact root")
            if not resolved.is_dir():
                raise ArtifactNotFound(f"artifact directory {path!r} does not exist under the artifact root")
            # the files too: a manifest or array that is a link out of the root would be read
            for entry in os.scandir(resolved):
                if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(root_real):
                    raise Forbidden(f"{path}/{entry.name} is a symbolic link out of the artifact root")
        except OSError as exc:  # a name too long, a directory that cannot be read
            raise InvalidRequest(f"path {path[:64]!r} cannot be read: {exc.strerror or exc}") from None
        return resolved

    async def admin_load(self, transport: str, authorization: str | None, request: LoadRequest) -> dict[str, Any]:
        """Load a new version of the table and swap it in atomically; a failed load changes nothing."""
        name = request.table
        with self.request(transport, "admin_load", name):
            self.authorize(authorization)
            check_table_name(name)
            directory = self.confine(request.path)
            if self.sync is not None:
                return await self.sync.publish_and_wait(name, directory)

            def load() -> Table:
                table = load_table(directory, parallel_min_ids=self.settings.parallel_min_ids)
                if self.settings.warmup:
                    table.warmup()
                return table

            table = await self._compute("admin_load", "any", load)
            # the swap and its record in the state file as one step for this name: a delete that
            # ran between them left a table deleted yet recorded, served again after a restart
            async with self._admin_lock(name):
                entry = self._install(name, table)
                self._refresh_ready()
                if self.state is not None:
                    state = self.state
                    await _outlasting_cancellation(
                        asyncio.get_running_loop().run_in_executor(
                            self.executor, lambda: state.record(name, directory, table.version)
                        )
                    )
            log.info("admin: table %r now serves version %s from %s", name, table.version, directory)
            return self.describe_entry(entry)

    def _admin_lock(self, name: str) -> asyncio.Lock:
        """One lock a table name: admin swaps, deletes and updates of one table run one at a time."""
        lock = self._admin_locks.get(name)
        if lock is None:
            lock = self._admin_locks[name] = asyncio.Lock()
        return lock

    async def _apply_update(self, name: str, operation: str, update: Callable[[Table], int]) -> tuple[Table, int]:
        """Run `update` on the served table, not across an admin swap of it; refused if a version
        rolled out from Redis replaced the table meanwhile (its rows would be in no table served)."""
        async with self._admin_lock(name):
            table = self.store.get(name).table
            applied = await _outlasting_cancellation(
                asyncio.ensure_future(self._compute(operation, table.codec, lambda: update(table)))
            )
            if self.store.get(name).table is not table:
                raise TableReplaced(
                    f"table {name!r} was replaced by another version while this update was applied; "
                    "it is not in the version now served: send it again"
                )
            return table, applied

    async def admin_upsert(self, transport: str, authorization: str | None, request: UpsertRequest) -> dict[str, Any]:
        """Apply one batch of row updates to the served table: all of it or, on error, none."""
        name = request.table
        with self.request(transport, "admin_upsert", name):
            self.authorize(authorization)
            self.store.get(name)  # an unknown table is named before the body is looked at
            keys_arr, rows_arr = as_array(request.keys, "keys"), as_array(request.rows, "rows")
            self._limit(keys_arr.size, self.settings.max_ids, "keys")
            sequence = self._admin_sequence(request.sequence)
            table, applied = await self._apply_update(
                name,
                "upsert",
                lambda table: table.upsert(keys_arr, rows_arr, sequence, keep_sequence=self.sync is not None),
            )
            return self._updated(name, table, int(keys_arr.size), applied)

    async def admin_delete_keys(
        self, transport: str, authorization: str | None, request: DeleteKeysRequest
    ) -> dict[str, Any]:
        """Delete keys from a served keyed table: all of them or, on error, none."""
        name = request.table
        with self.request(transport, "admin_delete_keys", name):
            self.authorize(authorization)
            self.store.get(name)
            keys_arr = as_array(request.keys, "keys")
            self._limit(keys_arr.size, self.settings.max_ids, "keys")
            sequence = self._admin_sequence(request.sequence)
            table, applied = await self._apply_update(
                name, "delete", lambda table: table.delete(keys_arr, sequence, keep_sequence=self.sync is not None)
            )
            return self._updated(name, table, int(keys_arr.size), applied)

    def _admin_sequence(self, value: Any) -> int | None:
        """An admin update's optional log position: absent, or an integer from 0 to 2**63 - 1.
        With Redis the update log owns every table's sequence (where a replica reads on after a
        swap), so an admin update neither gives one nor moves it."""
        if value is None:
            return None
        if self.sync is not None:
            raise InvalidRequest(
                "with Redis configured a table's sequence is its update log position: an admin update cannot set it "
                "(leave sequence out, or push through the update log)"
            )
        return checked_sequence(value)

    def _updated(self, name: str, table: Table, count: int, sequence: int) -> dict[str, Any]:
        self.metrics.set_delta(name, table.delta_rows, table.delta_slots, table.delta_capacity, table.nbytes)
        return {
            "table": name,
            "applied": count,
            "sequence": sequence,
            "delta_rows": table.delta_rows,
            "delta_slots": table.delta_slots,
            "delta_capacity": table.delta_capacity,
        }

    async def admin_delete(self, transport: str, authorization: str | None, name: str) -> dict[str, Any]:
        with self.request(transport, "admin_delete", name):
            self.authorize(authorization)
            entry = self.store.get(name)
            if self.sync is not None:
                await self.sync.unpublish(name)  # every replica drops it, this one included
            else:
                async with self._admin_lock(name):
                    self.uninstall(name)
                    if self.state is not None:
                        await _outlasting_cancellation(
                            asyncio.get_running_loop().run_in_executor(self.executor, self.state.forget, name)
                        )
            return {"deleted": entry.name, "version": entry.table.version}


async def _outlasting_cancellation(work: asyncio.Future[T]) -> T:
    """work's result. If the caller is cancelled meanwhile (a gRPC client gone, a deadline), the
    cancellation waits for work to end before it goes on: an admin lock held around the await is
    held for as long as the thread it started still writes."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise


__all__ = ["EmbeddingService", "as_array"]
