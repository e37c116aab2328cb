"""One typed settings object, read once from flags and `EMBSERVE_*` environment variables."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's levels (trace is its own, below debug)"""
TRACE = 5
"""uvicorn's trace level, which the logging module does not know by name"""
SECONDS_MAX = 2_000_000.0
"""The longest time a setting takes (23 days): gRPC takes its times as int32 milliseconds, and the
event loop's timers refuse times far beyond; a time that means "never" is past any pod's life."""


class Settings(BaseSettings):
    """Every knob of the server. Environment: EMBSERVE_<FIELD> (e.g. EMBSERVE_HTTP_PORT=8000);
    EMBSERVE_TABLES is a comma-separated list of NAME=DIR."""

    # inf or nan: crashes at start (int(inf)) or a timer that never fires; "never" is SECONDS_MAX
    model_config = SettingsConfigDict(env_prefix="EMBSERVE_", extra="ignore", allow_inf_nan=False)

    host: str = Field("127.0.0.1", description="address both servers bind")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: pick a free one)")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    tables: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="NAME=DIR artifacts to serve at start"
    )
    tables_file: Path | None = Field(
        None, description="tables.json written by `embserve import`: every table it lists is served too"
    )
    groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Open Inference Protocol group models, each NAME=FEATURE[:TABLE]+FEATURE[:TABLE]+... "
        "(a feature without :TABLE reads the table of its name)",
    )
    demo: bool = Field(True, description="serve the built-in demo table when no table is configured")
    demo_dir: Path = Field(
        Path.home() / ".cache" / "embserve" / "demo", description="where the demo artifact is cached"
    )
    demo_rows: int = Field(100_000, ge=1000, description="rows of the demo table")
    artifact_root: Path | None = Field(None, description="admin loads are confined below this directory")
    admin_token: str | None = Field(None, description="bearer token for admin endpoints; unset disables them")
    max_ids: int = Field(100_000, ge=1, description="ids a lookup may carry")
    max_tables_per_request: int = Field(64, ge=1, description="tables one multi-table lookup may name")
    max_queries: int = Field(1024, ge=1, description="queries a search or score may carry")
    max_k: int = Field(10_000, ge=1, description="largest k (and k × oversample) a search may ask")
    max_candidates: int = Field(1_000_000, ge=1, description="candidate ids a score request may carry")
    max_body_bytes: int = Field(
        64 << 20, ge=1024, le=2**31 - 1, description="largest HTTP body or gRPC message (gRPC's limit is an int32)"
    )
    max_answer_bytes: int = Field(
        256 << 20,
        ge=1024,
        le=(2**31 - 1) - (1 << 20),  # gRPC's largest message, less room for the rest of a reply
        description="largest answer a request may ask for, counted as its arrays' bytes (rows × dim × 4 for a "
        "lookup) before any work; gRPC answers up to it (JSON text of it is ~2.5× larger)",
    )
    max_json_values: int = Field(
        4 << 20,
        ge=1024,
        description="numbers one JSON body (or one OIP gRPC input's `contents`) may hold, counted before it is "
        "parsed; larger batches go as octet-stream or raw tensors, which take 4-8 bytes a number, not ~32",
    )
    max_concurrency: int = Field(64, ge=1, description="requests in flight before 429 / RESOURCE_EXHAUSTED")
    max_arriving_body_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="bytes of HTTP request bodies still arriving (read before a request takes its concurrency "
        "slot) held at once over all of a process's connections (at least max_body_bytes); a body that "
        "would pass it is refused 429",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=2**31 - 1,
        description="open connections on each port; one more is closed at once (HTTP: with a 503, unless it asks "
        "for health, readiness or metrics)",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=SECONDS_MAX,
        description="a client must send a request's headers (HTTP) or its HTTP/2 preface (gRPC) within this",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=SECONDS_MAX,
        description="longest pause between two pieces of a request body before the connection is closed",
    )
    keep_alive_seconds: float = Field(
        5.0, gt=0, le=SECONDS_MAX, description="an idle kept-alive HTTP connection is closed after this"
    )
    grpc_max_connection_age_seconds: float = Field(
        600.0,
        gt=0,
        le=SECONDS_MAX,
        description="a gRPC connection is closed after this long (GOAWAY; its calls get 30 s to finish), so "
        "clients' channels reconnect and spread over pods added since",
    )
    grpc_max_connection_idle_seconds: float = Field(
        300.0, gt=0, le=SECONDS_MAX, description="a gRPC connection with no call for this long is closed (GOAWAY)"
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="server processes sharing both ports (SO_REUSEPORT) and the tables' memory-mapped pages; "
        "admin changes reach every one",
    )
    numba_threads: int | None = Field(
        None, ge=1, description="numba threads per worker process (default: the CPUs available to the pod // workers)"
    )
    worker_threads: int = Field(4, ge=1, description="threads running kernels off the event loop")
    search_batch_max_queries: int = Field(
        0,
        ge=0,
        le=4096,
        description="dynamic batching of searches: concurrent search requests against one table with the same "
        "k, metric and oversample (by vectors, or by stored ids with the same exclude_self) are answered by one "
        "kernel call of up to this many queries "
        "(a request of this many or more runs alone); 0: off, else at least 2",
    )
    search_batch_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="with search batching on, how long a batch waits after its oldest request arrived for more "
        "to join (0: a batch is what arrived while the one before ran)",
    )
    parallel_min_ids: int = Field(
        4096, ge=1, le=4096, description="lookups of fewer ids gather on one thread (requests already run concurrently)"
    )
    grace_seconds: float = Field(
        20.0, ge=0, le=SECONDS_MAX, description="SIGTERM: how long in-flight requests may take"
    )
    warmup: bool = Field(True, description="run every kernel once at load so no request pays JIT time")
    log_level: str = Field("info", description="uvicorn / logging level")
    redis_url: str | None = Field(
        None,
        description="Redis for the version registry and replica status (redis:// or rediss://, password in the URL); "
        "unset: one node, no Redis",
    )
    redis_cluster: bool = Field(
        False,
        description="redis_url names one node of a Redis Cluster: talk to the cluster (every key of a table "
        "shares one slot through its {table} hash tag)",
    )
    replica_id: str | None = Field(
        None, description="this replica's name in the registry (default: hostname-pid; on Kubernetes the pod name)"
    )
    sync_poll_seconds: float = Field(
        5.0,
        gt=0,
        le=SECONDS_MAX,
        description="how often a replica reads the registry (pub/sub only hints between reads)",
    )
    heartbeat_seconds: float = Field(
        2.0, gt=0, le=SECONDS_MAX, description="replica status refresh; a row expires after 5 missed heartbeats"
    )
    catch_up_seconds: float = Field(
        120.0,
        gt=0,
        le=SECONDS_MAX,
        description="longest a replica replays the update log before serving (at start, after a publish)",
    )
    update_apply_interval_seconds: float = Field(
        1.0,
        ge=0,
        le=SECONDS_MAX,
        description="a replica applies the update log at most this often, entries meanwhile as one batch "
        "(bounds the lag; fewer, larger applies keep lookup p99 flat)",
    )
    redis_retry_max_seconds: float = Field(
        10.0, gt=0, le=SECONDS_MAX, description="longest back-off between Redis reconnects"
    )
    publish_wait_seconds: float = Field(
        120.0,
        gt=0,
        le=SECONDS_MAX,
        description="with Redis, an admin PUT waits this long for this replica to apply the publish",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    def logging_level(self) -> int:
        """`log_level` as the logging module's number (it knows no "trace")."""
        logging.addLevelName(TRACE, "TRACE")
        return TRACE if self.log_level == "trace" else logging.getLevelName(self.log_level.upper())

    @model_validator(mode="after")
    def _two_ports(self) -> Settings:
        if self.http_port == self.grpc_port != 0:
            raise ValueError(f"http_port and grpc_port are both {self.http_port}: HTTP and gRPC need a port each")
        return self

    @field_validator("search_batch_max_queries")
    @classmethod
    def _batch_of_two_or_off(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (off) or at least 2: a batch of one query is no batch")
        return value

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _root_is_a_directory(cls, value: object) -> object:
        if isinstance(value, (str, Path)) and Path(value).exists() and not Path(value).is_dir():
            raise ValueError("is a file; the artifact root is a directory")
        return value

    @model_validator(mode="after")
    def _arriving_holds_a_body(self) -> Settings:
        if self.max_arriving_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_arriving_body_bytes ({self.max_arriving_body_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}): a body between the two would be refused 429 at every retry"
            )
        return self

    @field_validator("tables", "groups", mode="before")
    @classmethod
    def _split_tables(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def check_redis(self) -> None:
        """Redis needs an artifact root. Checked here, not in a validator, whose error would echo
        the URL and its password."""
        if self.redis_url and self.artifact_root is None:
            raise ValueError("redis_url needs artifact_root: published versions are paths below it")
        if self.redis_url:
            from service.sync.connection import check_url  # imports redis: only when it is configured

            check_url(self.redis_url, cluster=self.redis_cluster)  # InvalidRequest is a ValueError

    def resolved_replica_id(self) -> str:
        """`replica_id`, else `<hostname>-<pid>` (unique per process on one host)."""
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: list[str]) -> list[str]:
        parse_groups(value)  # a bad spec is a settings error at start, not a failure at first use
        return value

    def group_specs(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Parsed `groups`: {model name: ((feature, table), ...)} in the order given."""
        return parse_groups(self.groups)

    def table_specs(self) -> list[tuple[str, Path]]:
        """Parsed `tables`, then the tables of `tables_file`: [(name, directory)], names unique."""
        from runtime.validation import check_table_name  # not at the top: the supervisor imports no runtime

        specs = []
        for spec in self.tables:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"table spec {spec!r} must be NAME=DIR")
            specs.append((check_table_name(name.strip(), f"table spec {spec!r}: "), Path(path.strip())))
        if self.tables_file is not None:
            from runtime.importer import read_tables_file

            specs.extend(read_tables_file(self.tables_file))
        names = [name for name, _ in specs]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise ValueError(f"table {duplicate!r} is configured twice")
        return specs


READ_ELSEWHERE = ("EMBSERVE_NUMBA_CACHES", "EMBSERVE_VECTOR_LANES", "EMBSERVE_LOAD_", "EMBSERVE_SHARED_DATA")
"""EMBSERVE_* variables (and prefixes) read by no setting: the kernels' (runtime.kernels), the load
tests' and the benchmarks'."""
KUBERNETES_SERVICE_LINKS = ("EMBSERVE_SERVICE_", "EMBSERVE_PORT")
"""What Kubernetes sets in every pod of a namespace with a Service named embserve."""


def unread_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """EMBSERVE_* variables no setting reads: a misspelt or singular name (EMBSERVE_TABLE for
    EMBSERVE_TABLES) would otherwise leave its setting at the default without a word."""
    settings = {f"EMBSERVE_{name.upper()}" for name in Settings.model_fields}
    ignored = READ_ELSEWHERE + KUBERNETES_SERVICE_LINKS
    return sorted(n for n in environ if n.startswith("EMBSERVE_") and n not in settings and not n.startswith(ignored))


def parse_groups(specs: list[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """NAME=FEATURE[:TABLE]+... specs -> {name: ((feature, table), ...)}; a bad spec raises ValueError."""
    groups: dict[str, tuple[tuple[str, str], ...]] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        name = name.strip()
        if not sep or not name or not members.strip():
            raise ValueError(f"group spec {spec!r} must be NAME=FEATURE[:TABLE]+...")
        if name in groups:
            raise ValueError(f"group {name!r} is configured twice")
        features = []
        for member in members.split("+"):
            feature, _, table = member.strip().partition(":")
            feature, table = feature.strip(), (table.strip() or feature.strip())
            if not feature or "__" in feature:
                raise ValueError(f"group {name!r}: feature {member.strip()!r} must be a non-empty name without '__'")
            features.append((feature, table))
        names = [f for f, _ in features]
        duplicate = next((f for f in names if names.count(f) > 1), None)
        if duplicate is not None:
            raise ValueError(f"group {name!r}: feature {duplicate!r} is listed twice")
        groups[name] = tuple(features)
    return groups
