"""One process, one event loop: uvicorn (HTTP) and grpc.aio (gRPC) over one EmbeddingService.

SIGTERM / SIGINT: readiness goes false at once (HTTP /readyz 503, gRPC health NOT_SERVING), new
requests get 503 / UNAVAILABLE, in-flight requests finish within `grace_seconds`, then both
servers stop and the process exits 0. Work still running in threads once the servers stop (a
request past the grace, a table loading at SIGTERM) is not waited for: the process exits 0 at
once. Stopping after the drain is bounded too: past STOP_SECONDS (a thread stuck in a blocking call
would otherwise hold the interpreter's exit) the process writes every thread's stack to stderr and
exits 1.

As one of several worker processes (`--workers N`, service/workers.py) it binds both ports with
SO_REUSEPORT, serves a private Unix socket for its siblings' replayed admin changes, and loads its
tables before it binds the shared ports, so no connection lands on a worker that cannot answer yet."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.connections import guarded_protocol
from service.core import EmbeddingService
from service.rest import create_asgi
from service.rpc.generated import embserve_pb2, embserve_pb2_grpc, oip_v2_pb2, oip_v2_pb2_grpc
from service.rpc.servicers import InferenceServicer, NativeServicer, add_servicer
from service.settings import Settings

if TYPE_CHECKING:
    from service.sync.replica import ReplicaSync
    from service.workers import WorkerRole

log = logging.getLogger("embserve")
HEALTH_SERVICES = ("", "embserve.v1.EmbeddingService", "inference.GRPCInferenceService")
STOP_SECONDS = 10.0
"""How long stopping may take once requests have drained: the servers, the Redis sync, the
executors' threads and the interpreter's exit together."""
GRPC_AGE_GRACE_MS = 30_000
"""How long the calls of a gRPC connection past its maximum age may take once it is told to go."""
HTTP_SHUTDOWN_SECONDS = 1
"""uvicorn's wait for what still runs once the drain's grace is over, before it cancels it."""


def arm_exit_watchdog(seconds: float) -> None:
    """Exit with status 1, after writing every thread's stack to stderr, unless the process has
    exited within `seconds`. Python joins worker threads at exit (asyncio's default executor,
    concurrent.futures' pools) with no time limit, so one thread blocked on a socket would keep a
    terminated server alive until it is killed; the stacks name that thread."""
    faulthandler.dump_traceback_later(seconds, exit=True)


def exit_leaving_threads() -> None:
    """Exit 0 now, once the servers have stopped, without waiting for the threads still at work
    (a request past the grace, a table still loading at SIGTERM): their answers have no one to go
    to, and the interpreter's exit would join them with no time limit (asyncio.run waits for its
    executor), until the exit watchdog dumped every stack and exited 1, or the kubelet's SIGKILL came."""
    log.info("stopped; not waiting for the work still running in threads (past the grace)")
    logging.shutdown()  # flushes every handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's drain logic owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Bound:
    http_port: int
    grpc_port: int


class EmbserveServer:
    def __init__(self, settings: Settings, role: WorkerRole | None = None) -> None:
        self.settings = settings
        self.role = role
        self.work_left_running = False
        """a request outlived the drain's grace, or a table was loading at SIGTERM"""
        self.service = EmbeddingService(settings)
        self.health = health.aio.HealthServicer()
        self.stopping = asyncio.Event()
        self.grpc_server: grpc.aio.Server | None = None
        self.http_server: _Uvicorn | None = None
        self.sync: ReplicaSync | None = None
        self._control_socket: socket.socket | None = None

    async def _set_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if self.service.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)

    async def start(self) -> Bound:
        s = self.settings
        limit = s.max_body_bytes
        self.grpc_server = grpc.aio.server(
            options=[
                # several workers share the port; a lone server must not silently share it
                ("grpc.so_reuseport", 1 if self.role is not None else 0),
                ("grpc.max_receive_message_length", limit),
                # the answer limit counts arrays; 1 MiB more for the rest of a reply
                ("grpc.max_send_message_length", min(max(limit, s.max_answer_bytes + (1 << 20)), 2**31 - 1)),
                # a connection must complete its HTTP/2 handshake within the header timeout
                ("grpc.server_handshake_timeout_ms", int(s.header_timeout_seconds * 1000)),
                ("grpc.max_connection_idle_ms", int(s.grpc_max_connection_idle_seconds * 1000)),
                ("grpc.max_connection_age_ms", int(s.grpc_max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", GRPC_AGE_GRACE_MS),
                ("grpc.max_allowed_incoming_connections", s.max_connections),
                # ping quiet connections; one that does not answer within 20 s is dead
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
            ]
        )
        native: NativeServicer = NativeServicer(self.service)
        if self.role is not None:
            from service.workers import replaying_servicer

            native = replaying_servicer(self.service, self.role)
        add_servicer(embserve_pb2_grpc.add_EmbeddingServiceServicer_to_server, native, self.grpc_server)
        add_servicer(
            oip_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            InferenceServicer(self.service),
            self.grpc_server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        names = (
            embserve_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
            oip_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.grpc_server)
        # an IPv6 literal in brackets: gRPC parses `:::8001` as a name, and refuses it
        grpc_host = f"[{s.host}]" if ":" in s.host else s.host
        grpc_port = self.grpc_server.add_insecure_port(f"{grpc_host}:{s.grpc_port}")
        if grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")
        await self._set_health()
        await self.grpc_server.start()

        # protocol IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and accepted sockets inherit the listener's protocol (the connection guard sets it too)
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.role is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.http_port))
        http_port = sock.getsockname()[1]
        service = self.service
        app: Any = create_asgi(self.service)
        sockets = [sock]
        if self.role is not None:
            from service.workers import WorkerFront

            app = WorkerFront(app, self.service, self.role)
            sockets.append(self._control_socket or self.role.bind_control())
        config = uvicorn.Config(
            app,
            log_level=s.log_level,
            access_log=False,
            timeout_graceful_shutdown=max(1, int(s.grace_seconds)),
            timeout_keep_alive=s.keep_alive_seconds,  # type: ignore[arg-type]
            limit_concurrency=None,
            http=guarded_protocol(
                s.header_timeout_seconds,
                s.body_timeout_seconds,
                s.max_connections,
                on_timeout=lambda phase: service.read_timed_out("http", phase),
                on_refused=lambda: service.connection_refused("http"),
            ),
        )
        self.http_server = _Uvicorn(config)
        self._http_task = asyncio.create_task(self.http_server.serve(sockets=sockets))
        while not self.http_server.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)
        return Bound(http_port, grpc_port)

    async def load(self) -> None:
        """Load and warm the configured tables off the loop; health follows readiness. With Redis,
        the registry's published versions come first and the configured tables fill the rest."""
        served_from_registry: set[str] = set()
        if self.settings.redis_url:
            from service.sync.replica import ReplicaSync  # Redis is imported only when configured

            self.sync = ReplicaSync(
                self.settings, self.service, reports_events=self.role is None or self.role.index == 0
            )
            self.service.sync = self.sync
            served_from_registry = await self.sync.load_published()
        if self.sync is not None:
            self.service.catching_up = True  # not ready until the update log is replayed
        await asyncio.get_running_loop().run_in_executor(None, self.service.load_configured, served_from_registry)
        if self.sync is not None:
            self.sync.note_configured()
            await self.sync.catch_up()
            self.service.catching_up = False
            self.service.refresh_ready()
            self.sync.start()
        await self._set_health()

    async def drain_and_stop(self) -> None:
        self.service.start_draining()
        await self._set_health()
        log.info(
            "draining: waiting up to %.1f s for %d in-flight requests (%d more receiving their body)",
            self.settings.grace_seconds,
            self.service.in_flight,
            self.service.receiving,
        )
        finished = await self.service.wait_idle(self.settings.grace_seconds)
        if not finished:
            log.warning(
                "grace period over with %d requests still running: answering them 503",
                self.service.in_flight + self.service.receiving,
            )
            self.work_left_running = True
        arm_exit_watchdog(STOP_SECONDS)
        if self.http_server is not None:
            # the grace was given above: uvicorn's own wait (what remains is a health check or a
            # metrics scrape, or a request past the grace) is short, then it cancels
            self.http_server.config.timeout_graceful_shutdown = HTTP_SHUTDOWN_SECONDS
            self.http_server.should_exit = True
            await self._http_task
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
        if self.sync is not None:
            await self.sync.stop()
        self.service.close()

    def _log_bound(self, bound: Bound) -> None:
        worker = "" if self.role is None else f" (worker {self.role.index} of {self.role.count})"
        log.info(
            "embserve listening%s: http://%s:%d  grpc %s:%d",
            worker,
            self.settings.host,
            bound.http_port,
            self.settings.host,
            bound.grpc_port,
        )

    async def _load_then_start(self) -> None:
        """A worker: control socket first (siblings' replays queue there), then the tables, then
        the shared ports."""
        assert self.role is not None
        self._control_socket = self.role.bind_control()
        await self.load()
        self._log_bound(await self.start())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if self.role is None:
            self._log_bound(await self.start())
            loader = asyncio.create_task(self.load())
        else:
            loader = asyncio.create_task(self._load_then_start())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({loader, stop}, return_when=asyncio.FIRST_COMPLETED)
        if loader.done() and loader.exception() is not None:
            await self.drain_and_stop()
            raise loader.exception()  # type: ignore[misc]
        if loader.done() and self.service.store.names():
            log.info("ready: serving %s", ", ".join(self.service.store.names()))
        elif loader.done():
            # readiness needs a table: with none configured and no demo, only an admin load makes one
            log.warning("no table to serve (none configured, demo off): not ready until an admin load adds one")
        await stop
        log.info("signal received: draining")
        await self.drain_and_stop()
        if not loader.done():
            loader.cancel()  # the loop's side only: the thread loading a table goes on
            self.work_left_running = True
        if self.work_left_running:
            exit_leaving_threads()


def serve(settings: Settings, role: WorkerRole | None = None) -> None:
    """Run one server process until SIGTERM / SIGINT; `role` when it is one of several workers."""
    worker = "" if role is None else f" [worker {role.index}]"
    logging.basicConfig(
        level=settings.logging_level(), format=f"%(asctime)s %(levelname)s %(name)s{worker}: %(message)s"
    )
    if role is None and settings.numba_threads is not None:
        import numba

        numba.set_num_threads(min(settings.numba_threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    asyncio.run(EmbserveServer(settings, role).run())
