"""The replica side of the registry: load the published versions at start, watch for new ones,
roll them out off the request path, and report this replica's status.

Two background tasks share one Redis client: the watcher (subscribe to the publish channel; read
the whole registry after every hint and at least every `sync_poll_seconds`, since pub/sub drops
messages while disconnected; apply what changed) and the heartbeat (write this replica's status
row every `heartbeat_seconds`). Redis errors never reach requests: the watcher reconnects with
exponential back-off while the tables already loaded keep serving, and readiness stays true with
a `degraded` detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtime import artifact
from runtime.errors import ArtifactCorrupt, ArtifactError, EmbserveError, NotReady, TableNotFound
from runtime.table import Table, load_table
from service.core import EmbeddingService
from service.settings import Settings
from service.sync import connection, keys, registry, status
from service.sync.registry import Published
from service.sync.status import ReplicaRow, TableStatus
from service.sync.updates import UpdateApplier

log = logging.getLogger("embserve.sync")
REDIS_FAILURES = connection.FAILURES
HEARTBEATS_TO_EXPIRY = 5
STARTUP_READ_SECONDS = 5.0
# a pass over many publishes reports its rollouts at most this often: each write replaces the whole
# row, so one write a rollout cost O(tables²) (3,000 unloadable entries kept a replica unready 86 s)
ROLLOUT_REPORT_SECONDS = 1.0


class ReplicaSync:
    """Keeps this replica's tables on the registry's published versions."""

    def __init__(self, settings: Settings, service: EmbeddingService, reports_events: bool = True) -> None:
        """`reports_events`: this process counts the pod's update-log and rollout events and writes
        its dead-letter copies; with `--workers N` every worker applies every entry and rollout, and
        only the first reports them, so the pod's counters (summed over its workers) and its
        dead-letter stream hold each event once, not N times."""
        if not settings.redis_url or settings.artifact_root is None:
            raise ValueError("ReplicaSync needs redis_url and artifact_root (published versions are paths below it)")
        self.settings = settings
        self.service = service
        self.metrics = service.metrics
        self.reports_events = reports_events
        self.root = Path(settings.artifact_root).resolve()
        self.replica_id = settings.resolved_replica_id()
        self.client = registry.connect(settings.redis_url, settings.redis_cluster)
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embserve-rollout")
        self.tables: dict[str, TableStatus] = {}
        self.failures: dict[str, EmbserveError] = {}
        self.from_registry: set[str] = set()
        self.withdrawn: dict[str, float] = {}
        """tombstones acted on: table -> its published_at"""
        self.unpublished: set[str] = set()
        """tables served from the registry whose entry has gone from it (no tombstone)"""
        self.connected = False
        self.redis_error = ""
        self.started_at = time.time()
        self.ttl = HEARTBEATS_TO_EXPIRY * settings.heartbeat_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._reported_at = -math.inf
        self._unreported = False
        self.metrics.redis_connected.set(0)
        self.failures_types = REDIS_FAILURES
        self.updates = UpdateApplier(self)

    # ---- health --------------------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        return not self.connected

    def health(self) -> dict[str, Any]:
        """The readiness detail: Redis connection and tables whose last rollout failed here."""
        return {
            "degraded": self.degraded,
            "redis": "connected" if self.connected else "unreachable",
            "redis_error": self.redis_error,
            "replica": self.replica_id,
            "rollout_failures": {n: s.error for n, s in sorted(self.tables.items()) if s.state == "failed"},
        }

    def _mark_connected(self) -> None:
        if not self.connected:
            log.info("redis %s: connected", registry.redact(self.settings.redis_url or ""))
        self.connected = True
        self.redis_error = ""
        self.metrics.redis_connected.set(1)

    def _mark_failed(self, operation: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        message = f"{type(exc).__name__}: {exc}"
        if self.connected or message != self.redis_error:
            log.warning("redis %s failed, serving what is loaded: %s", operation, message)
        self.connected = False
        self.redis_error = message
        self.metrics.redis_connected.set(0)

    def count_event(self, counter: Any, *labels: str, amount: float = 1) -> None:
        """Count one of the pod's events (`reports_events`); the series exists at 0 either way."""
        child = counter.labels(*labels)
        if self.reports_events:
            child.inc(amount)

    def mark_failed(self, operation: str, exc: BaseException) -> None:
        self._mark_failed(operation, exc)

    def note_update(self, name: str, stream_id: str) -> None:
        """Record the update log's last applied id for `name` (status rows and describe); a stall
        it reported is over once entries apply again."""
        known = self.tables.get(name)
        if known is not None:
            error = "" if known.error.startswith(status.UPDATES_STALLED) else known.error
            self.tables[name] = dataclasses.replace(known, last_update_id=stream_id, error=error)

    def note_update_problem(self, name: str, problem: str) -> None:
        """Show what stops or lost `name`'s updates in this replica's status row (`embserve status`'s
        ERROR column), until the updates apply again (a stall) or another version swaps in."""
        known = self.tables.get(name)
        if known is not None:
            self.tables[name] = dataclasses.replace(known, error=problem)

    def last_update_id(self, name: str) -> str:
        return self.updates.last_applied(name)

    async def catch_up(self) -> None:
        """Before the replica reports ready: replay every served table's update log from the
        sequence its artifact recorded. Redis unreachable: serve what is loaded, degraded; the
        followers replay once it answers."""
        for name in self.service.store.names():
            try:
                replayed = await self.updates.catch_up(
                    name, self.service.get(name).table, self.settings.catch_up_seconds
                )
            except REDIS_FAILURES as exc:
                self._mark_failed("updates", exc)
                return
            except EmbserveError as exc:  # a full delta: serve what is applied; the follower waits
                log.error("table %r: replaying the update log stopped: %s", name, exc)
                continue
            if replayed:
                log.info("table %r: replayed %d update log entries before serving", name, replayed)

    def row(self) -> ReplicaRow:
        state = "degraded" if self.degraded else ("ready" if self.service.ready else "starting")
        return ReplicaRow(self.replica_id, state, time.time(), self.started_at, self.redis_error, dict(self.tables))

    # ---- start and stop -----------------------------------------------------------------------
    async def load_published(self) -> set[str]:
        """At start, before the configured tables: load every published version (the registry is
        the truth). Returns the tables now served from it; with Redis unreachable, none (the
        configured tables load instead and the watcher catches up once Redis answers)."""
        try:
            published = await asyncio.wait_for(registry.read_published(self.client), STARTUP_READ_SECONDS)
        except REDIS_FAILURES as exc:
            self._mark_failed("startup", exc)
            return set()
        self._mark_connected()
        for pub in published.values():
            if not pub.withdrawn:
                await self._apply(pub)
        await self._report_rollouts(at_once=True)
        return {name for name in self.from_registry if self.tables[name].state == "serving"}

    def note_configured(self) -> None:
        """Record what the configured tables serve, so status can compare them with the registry."""
        for entry in self.service.store.entries():
            if entry.name in self.from_registry:
                continue
            table = entry.table
            served = self._describe_served(table)
            known = self.tables.get(entry.name)
            if known is not None:  # a published version failed at start: the configured one serves
                served = dataclasses.replace(
                    served,
                    generation=known.generation,
                    published_at=known.published_at,
                    state=known.state,
                    error=known.error,
                )
            self.tables[entry.name] = served

    def _describe_served(self, table: Table) -> TableStatus:
        path, checksum = "", ""
        if table.path is not None:
            resolved = Path(table.path).resolve()
            path = resolved.relative_to(self.root).as_posix() if resolved.is_relative_to(self.root) else str(table.path)
            with contextlib.suppress(OSError):
                checksum = artifact.sha256_file(resolved / artifact.MANIFEST)
        return TableStatus(version=table.version, path=path, checksum=checksum)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._heartbeat())]
        self.updates.start()

    async def stop(self) -> None:
        await self.updates.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, *REDIS_FAILURES):
                await task
        with contextlib.suppress(*REDIS_FAILURES):
            # a clean stop removes the row at once instead of waiting for its expiry
            await self.client.delete(keys.replica_key(self.replica_id))
            await self.client.zrem(keys.REPLICAS, self.replica_id)
        with contextlib.suppress(*REDIS_FAILURES):
            await self.client.aclose()
        self.loader.shutdown(wait=False, cancel_futures=True)

    # ---- the watcher ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = await connection.subscribe(self.client, keys.PUBLISHED_CHANNEL)
                while True:
                    published = await registry.read_published(self.client)
                    self._mark_connected()
                    backoff = 0.1
                    await self._reconcile(published)
                    # a hint ends the wait early; the timeout is the periodic read of the truth
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.settings.sync_poll_seconds)
            except REDIS_FAILURES as exc:
                self._mark_failed("watch", exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.settings.redis_retry_max_seconds)
            except Exception:
                # a registry entry this code cannot handle must not end the watcher for good
                log.exception("registry watcher: unexpected error; retrying")
                await asyncio.sleep(self.settings.redis_retry_max_seconds)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_FAILURES):
                        await pubsub.aclose()

    async def _reconcile(self, published: dict[str, Published]) -> None:
        for name, pub in published.items():
            known = self.tables.get(name)
            if name in self.unpublished:
                self.unpublished.discard(name)
                log.info("table %r is in the registry again (generation %d)", name, pub.generation)
                self._set_in_sync(name, pub)
            if known is not None and (known.generation, known.published_at) == (pub.generation, pub.published_at):
                continue  # applied, or failed here: a new publish is needed to try again
            if pub.withdrawn:
                if self.withdrawn.get(name) != pub.published_at:
                    self._withdraw(name, pub)
                continue
            if known is not None and known.state == "serving" and known.checksum == pub.checksum:
                # already serving exactly that artifact (configured, or published again unchanged)
                self.tables[name] = dataclasses.replace(
                    known, path=pub.path, generation=pub.generation, published_at=pub.published_at
                )
                self.from_registry.add(name)
                self._set_in_sync(name, pub)
                continue
            await self._apply(pub)
        await self._report_rollouts(at_once=True)
        # a table absent from the registry (Redis lost its data, say) keeps serving: only a
        # tombstone withdraws it. It no longer serves a published version, though: its in-sync
        # gauge drops to 0, so the alert on it says the registry lost what every replica serves
        for name in sorted(self.from_registry - published.keys() - self.unpublished):
            self.unpublished.add(name)
            self.metrics.published_in_sync.labels(name).set(0)
            log.warning(
                "table %r: its published version is gone from the registry (deleted by hand, or Redis lost its "
                "data); still serving %s until it is published again",
                name,
                self.tables[name].path,
            )

    def _withdraw(self, name: str, pub: Published) -> None:
        self.withdrawn[name] = pub.published_at
        self.from_registry.discard(name)
        self.tables.pop(name, None)
        with contextlib.suppress(TableNotFound):
            self.service.uninstall(name)
        with contextlib.suppress(KeyError):
            self.metrics.published_in_sync.remove(name)
        log.info("table %r was withdrawn from the registry (generation %d): no longer served", name, pub.generation)

    def _set_in_sync(self, name: str, pub: Published) -> None:
        known = self.tables.get(name)
        in_sync = known is not None and known.state == "serving" and known.checksum == pub.checksum
        self.metrics.published_in_sync.labels(name).set(1 if in_sync else 0)

    async def _apply(self, pub: Published) -> None:
        """Load, verify and warm `pub` on the rollout thread, then swap it in; on failure the old
        version keeps serving and the error is recorded."""
        name = pub.table
        before = self.tables.get(name)
        self.tables[name] = dataclasses.replace(before or TableStatus(state="absent"), state="loading", error="")
        log.info("table %r: rolling out %s (generation %d)", name, pub.path, pub.generation)
        try:
            table = await asyncio.get_running_loop().run_in_executor(self.loader, self._load, pub)
        except Exception as exc:
            error = exc if isinstance(exc, EmbserveError) else ArtifactError(f"{type(exc).__name__}: {exc}")
            message = self._relative(str(error))
            if not isinstance(exc, EmbserveError):
                log.exception("table %r: unexpected error loading %s", name, pub.path)
            failed = before or TableStatus()
            self.tables[name] = dataclasses.replace(
                failed, generation=pub.generation, published_at=pub.published_at, state="failed", error=message
            )
            self.failures[name] = error
            self.count_event(self.metrics.rollouts, name, "failed")
            log.warning("table %r: version %s refused, the previous one keeps serving: %s", name, pub.path, message)
        else:
            try:
                # updates newer than the version's sequence, applied before it serves
                await self.updates.catch_up(name, table, self.settings.catch_up_seconds)
            except REDIS_FAILURES as exc:
                self._mark_failed("updates", exc)  # its follower replays the rest once Redis answers
            except EmbserveError as exc:  # a full delta: the version serves, its follower waits
                log.error("table %r: replaying the update log onto %s stopped: %s", name, pub.path, exc)
            self.service.install(name, table)
            self.tables[name] = TableStatus(
                version=table.version,
                path=pub.path,
                checksum=pub.checksum,
                generation=pub.generation,
                published_at=pub.published_at,
                state="serving",
                last_update_id=self.updates.last_applied(name),
            )
            self.from_registry.add(name)
            self.failures.pop(name, None)
            self.count_event(self.metrics.rollouts, name, "applied")
            log.info("table %r now serves %s (version %s)", name, pub.path, table.version)
        self._set_in_sync(name, pub)
        self._unreported = True
        await self._report_rollouts(at_once=False)

    async def _report_rollouts(self, at_once: bool) -> None:
        """Write this replica's row if a rollout changed it since the last write: at the end of a
        pass (`at_once`), and during one at most every ROLLOUT_REPORT_SECONDS; not at the next
        heartbeat, which may be many seconds away."""
        if not self._unreported or (not at_once and time.monotonic() - self._reported_at < ROLLOUT_REPORT_SECONDS):
            return
        self._unreported = False
        self._reported_at = time.monotonic()
        with contextlib.suppress(*REDIS_FAILURES):
            await status.write(self.client, self.row(), self.ttl)

    def _load(self, pub: Published) -> Table:
        directory = self.service.confine(pub.path)
        actual = (
            artifact.sha256_file(directory / artifact.MANIFEST) if (directory / artifact.MANIFEST).is_file() else ""
        )
        if actual != pub.checksum:
            raise ArtifactCorrupt(
                f"{pub.path}/manifest.json has sha256 {actual[:16] or '(missing)'}…, the registry published "
                f"{pub.checksum[:16]}…: the artifact changed (or is missing) since it was published"
            )
        table = load_table(directory, parallel_min_ids=self.settings.parallel_min_ids)
        if self.settings.warmup:
            table.warmup()
        return table

    def _relative(self, message: str) -> str:
        """Error text naming artifacts relative to the artifact root (never the server's paths)."""
        return message.replace(f"{self.root}/", "").replace(str(self.root), ".")

    # ---- heartbeat -----------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            try:
                await status.write(self.client, self.row(), self.ttl)
                # a write that went through is news too: a failed one may have marked Redis down
                # while the watcher waits out its poll period
                self._mark_connected()
            except REDIS_FAILURES as exc:
                self._mark_failed("heartbeat", exc)
            except Exception:
                log.exception("replica heartbeat: unexpected error")
            await asyncio.sleep(self.settings.heartbeat_seconds)

    # ---- admin ---------------------------------------------------------------------------------
    async def publish_and_wait(self, name: str, directory: Path) -> dict[str, Any]:
        """The admin PUT with Redis: verify the artifact, publish it for every replica, and wait
        until this replica's own watcher has applied it (or refused it: the reason is raised)."""
        relative = registry.relative_to_root(self.root, directory)
        loop = asyncio.get_running_loop()
        checksum, version = await loop.run_in_executor(self.loader, registry.describe_artifact, directory, True)
        try:
            pub = await registry.publish(self.client, name, relative, checksum, version)
        except REDIS_FAILURES as exc:
            self._mark_failed("publish", exc)
            raise NotReady(f"Redis is unreachable, nothing was published: {self.redis_error}") from None
        log.info("admin: published %r = %s (generation %d)", name, relative, pub.generation)
        deadline = time.monotonic() + self.settings.publish_wait_seconds
        while True:
            known = self.tables.get(name)
            if known is not None and known.published_at >= pub.published_at and known.state != "loading":
                break
            if time.monotonic() > deadline:
                raise NotReady(
                    f"{relative} is published (generation {pub.generation}) but this replica has not applied it "
                    f"within {self.settings.publish_wait_seconds:g} s; see `embserve status`"
                )
            await asyncio.sleep(0.05)
        if known.state == "failed" and known.published_at == pub.published_at:
            failure = self.failures.get(name)
            raise type(failure)(known.error) if isinstance(failure, ArtifactError) else ArtifactError(known.error)
        return self.service.describe_entry(self.service.get(name))

    async def unpublish(self, name: str) -> None:
        """The admin DELETE with Redis: withdraw the table from the registry for every replica."""
        try:
            pub = await registry.unpublish(self.client, name)
        except REDIS_FAILURES as exc:
            self._mark_failed("publish", exc)
            raise NotReady(f"Redis is unreachable, nothing was withdrawn: {self.redis_error}") from None
        self._withdraw(name, pub)
