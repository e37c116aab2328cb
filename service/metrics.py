"""Every Prometheus metric embserve exports, declared in one place.

Names carry the `embserve_` prefix and base units; labels are bounded (transport, operation,
table name, status class, codec), never ids.

With several worker processes (service/workers.py) PROMETHEUS_MULTIPROC_DIR is set before
prometheus_client is imported: counters and histograms then live in per-process files that any
worker's /metrics sums; in-flight requests are summed over live workers, readiness is the minimum
(1 only when every worker is ready). Per-table gauges and the build info come from the scraped
worker itself: every worker serves the same tables (admin changes reach all of them), and a
multiprocess file cannot forget a removed table's series. process_* metrics are left out there,
since they would describe only whichever worker answered the scrape."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# from 25 µs: a lookup of a few ids is answered in well under the 200 µs the buckets started at
LATENCY_BUCKETS = (25e-6, 50e-6, 1e-4, 2e-4, 5e-4, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    """A registry of its own per server, so tests can run several servers in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        PlatformCollector(registry=r)
        self.request_duration = Histogram(
            "embserve_request_duration_seconds",
            "Time from a request's arrival (HTTP: its headers; gRPC: its message) to its answer written "
            "(HTTP) or built (gRPC).",
            ["transport", "operation", "table", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "embserve_requests",
            "Requests answered, by outcome.",
            ["transport", "operation", "table", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "embserve_requests_in_flight", "Requests being processed now.", registry=r, multiprocess_mode="livesum"
        )
        self.arriving_body_bytes = Gauge(
            "embserve_http_body_bytes_arriving",
            "Bytes of HTTP request bodies received before their requests take a concurrency slot.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ids_per_request = Histogram(
            "embserve_ids_per_request", "Ids in a lookup request.", ["table"], buckets=SIZE_BUCKETS, registry=r
        )
        self.queries_per_request = Histogram(
            "embserve_queries_per_request",
            "Queries in a search or score request.",
            ["table"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.search_batch_requests = Histogram(
            "embserve_search_batch_requests",
            "Search requests answered by one batched kernel call (search batching on).",
            ["table"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.search_batch_queries = Histogram(
            "embserve_search_batch_queries",
            "Queries of one batched search kernel call (search batching on).",
            ["table"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.kernel_duration = Histogram(
            "embserve_kernel_duration_seconds",
            "Time spent in the table's compute (off the event loop), by operation and codec.",
            ["operation", "codec"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.table_rows = Gauge("embserve_table_rows", "Rows of each served table.", ["table"], registry=r)
        self.table_bytes = Gauge(
            "embserve_table_bytes", "Bytes held by each served table (all arrays).", ["table"], registry=r
        )
        self.table_fp32_bytes = Gauge(
            "embserve_table_fp32_equivalent_bytes",
            "Bytes the same table would take as float32.",
            ["table"],
            registry=r,
        )
        self.table_info = Gauge(
            "embserve_table_info",
            "Served table versions (value 1).",
            ["table", "codec", "rerank", "version"],
            registry=r,
        )
        self.missing_keys = Counter(
            "embserve_missing_keys",
            "Keys looked up that the table does not hold and answered as zero rows (missing=zeros); a table "
            "that refuses them answers 404, counted in embserve_requests_total.",
            ["table"],
            registry=r,
        )
        self.delta_rows = Gauge(
            "embserve_table_delta_rows", "Rows whose current value lives in the update delta.", ["table"], registry=r
        )
        self.delta_slots = Gauge(
            "embserve_table_delta_slots_used",
            "Delta slots taken by upserts since the table was written (compaction frees them).",
            ["table"],
            registry=r,
        )
        self.delta_capacity = Gauge(
            "embserve_table_delta_capacity_slots", "Delta slots a table holds before compaction.", ["table"], registry=r
        )
        self.overloaded = Counter(
            "embserve_rejected_overload",
            "Requests refused as overload: the concurrency limit, or HTTP bodies arriving past their byte limit.",
            ["transport"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "embserve_client_disconnects",
            "Requests whose client hung up before its request was read (HTTP) or answered (gRPC).",
            ["transport"],
            registry=r,
        )
        self.read_timeouts = Counter(
            "embserve_read_timeouts",
            "Connections closed: a request's headers or body did not arrive in time, or its answer was not read.",
            ["transport", "phase"],
            registry=r,
        )
        self.connections_refused = Counter(
            "embserve_connections_refused",
            "Connections closed at once because the open-connection cap was reached.",
            ["transport"],
            registry=r,
        )
        self.ready = Gauge(
            "embserve_ready", "1 when the server accepts requests.", registry=r, multiprocess_mode="livemin"
        )
        self.build = Info("embserve_build", "embserve version.", registry=r)
        # Redis synchronisation (present, and 0, when no Redis is configured)
        self.redis_connected = Gauge(
            "embserve_redis_connected",
            "1 while the replica's Redis watcher is connected.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.redis_errors = Counter(
            "embserve_redis_errors",
            "Redis operations that failed (connection lost, timeout), by operation.",
            ["operation"],
            registry=r,
        )
        self.rollouts = Counter(
            "embserve_rollouts",
            "Published versions this replica acted on, by outcome (applied, failed).",
            ["table", "outcome"],
            registry=r,
        )
        self.published_in_sync = Gauge(
            "embserve_table_published_in_sync",
            "1 when the replica serves the registry's published version of the table, 0 when not.",
            ["table"],
            registry=r,
        )
        # the update log (Redis streams)
        self.updates_applied = Counter(
            "embserve_updates_applied", "Rows upserted or deleted from the update log.", ["table"], registry=r
        )
        self.updates_refused = Counter(
            "embserve_updates_refused",
            "Update log entries refused whole (bad bytes, wrong dimension, NaN, unknown key) and dead-lettered.",
            ["table"],
            registry=r,
        )
        self.updates_stalled = Counter(
            "embserve_updates_stalled",
            "Times the update log stopped applying to a table because its delta was full (compact it).",
            ["table"],
            registry=r,
        )
        self.update_gaps = Counter(
            "embserve_update_gaps",
            "Times a replica found update log entries it will never apply: trimmed or deleted before it read "
            "them, or a stream recreated with ids below its position.",
            ["table"],
            registry=r,
        )
        self.update_lag = Gauge(
            "embserve_update_lag_seconds",
            "Age of the last applied update log entry when applied; 0 once the replica has read the whole stream.",
            ["table"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.update_last_applied = Gauge(
            "embserve_update_last_applied_timestamp_seconds",
            "Time (unix seconds, from its stream id) of the last update log entry applied.",
            ["table"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        per_worker = (
            self.table_rows,
            self.table_bytes,
            self.table_fp32_bytes,
            self.table_info,
            self.delta_rows,
            self.delta_slots,
            self.delta_capacity,
            self.published_in_sync,
            self.build,
        )
        self._own_families = {family.name for metric in per_worker for family in metric.describe()}
        self._aggregate: CollectorRegistry | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._aggregate = CollectorRegistry()
            self._aggregate.register(_WorkersCollector(self))

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's registry, or with several workers
        their sum (see the module docstring)."""
        return generate_latest(self._aggregate if self._aggregate is not None else self.registry)

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the request path asks for the same few series on
        every request, and prometheus_client's label lookup costs microseconds each time. Safe
        because request series are never removed (only the table gauges are)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_table(self, name: str, rows: int, nbytes: int, fp32: int, codec: str, rerank: str, version: str) -> None:
        self.clear_table(name)
        self.table_rows.labels(name).set(rows)
        self.table_bytes.labels(name).set(nbytes)
        self.table_fp32_bytes.labels(name).set(fp32)
        self.table_info.labels(name, codec, rerank, version).set(1)

    def set_delta(self, name: str, rows: int, slots: int, capacity: int, nbytes: int) -> None:
        self.delta_rows.labels(name).set(rows)
        self.delta_slots.labels(name).set(slots)
        self.delta_capacity.labels(name).set(capacity)
        self.table_bytes.labels(name).set(nbytes)

    def clear_table(self, name: str) -> None:
        gauges = (self.table_rows, self.table_bytes, self.table_fp32_bytes, self.delta_rows, self.delta_slots)
        with warnings.catch_warnings():
            # multiprocess mode warns that files keep removed series; these are rendered from this
            # process's registry instead (see the module docstring), where removal works
            warnings.simplefilter("ignore", UserWarning)
            for gauge in (*gauges, self.delta_capacity):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            for labels in list(self.table_info._metrics):  # one table has one info series at a time
                if labels[0] == name:
                    self.table_info.remove(*labels)


class _WorkersCollector:
    """Every worker's counters, histograms and live gauges from the multiprocess files, then this
    worker's own per-table gauges and build info."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.files = MultiProcessCollector(None)

    def collect(self) -> Iterator[Metric]:
        own = self.metrics._own_families
        for family in self.files.collect():
            if family.name not in own:
                yield family
        for family in self.metrics.registry.collect():
            if family.name in own:
                yield family
