"""`embserve serve --workers N`: N server processes behind one pair of ports.

The supervisor (the process started as `embserve serve`) resolves the ports, then starts N worker
processes (`python -m service.workers`), each a full one-process server (service/server.py) whose
HTTP and gRPC listeners bind the same ports with SO_REUSEPORT, so the kernel spreads connections
over them. Tables are memory-mapped artifacts: the workers map the same files, so their pages sit
once in the page cache, not N times.

Admin changes (loads, deletes, upserts, key deletes) arrive at whichever worker the client's
connection landed on. That worker takes a lock shared by all workers (flock on a file in the
control directory, so two admin changes never interleave), applies the change, and replays the same
HTTP request to every sibling over the sibling's private Unix socket; it answers only when every
worker has applied it, so a read on any connection afterwards sees the change. With Redis configured
loads and deletes already reach every worker through the registry (each worker is a replica), so
only row updates are replayed.

Metrics: every worker writes its counters, histograms and gauges to prometheus-client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, a fresh directory each start) and any worker's
/metrics sums them (service/metrics.py).

SIGTERM / SIGINT to the supervisor: forwarded to every worker, each drains its in-flight requests
(server.py), the supervisor exits 0 once all have exited 0. A worker that dies on its own makes the
supervisor stop the others and exit 1: a restarted worker would come back without the row updates
its siblings hold in memory, so the pod (and Kubernetes' restart) is the unit of recovery."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

if TYPE_CHECKING:
    from service.core import EmbeddingService
    from service.settings import Settings

log = logging.getLogger("embserve")
WORKER_HEADER = b"x-embserve-worker"
ADMIN_CHANGE = re.compile(r"/v1/tables/([^/]+)(/upsert|/delete)?")
ROW_UPDATE_SUFFIXES = ("/upsert", "/delete")
RELAYED_HEADERS = (b"authorization", b"content-type", b"x-embserve-shape", b"x-embserve-sequence")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a pod's CPU
    limit shows there, not in the affinity mask)."""
    cpus = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return cpus


def numba_threads_per_worker(settings: Settings) -> int:
    """`numba_threads` when set, else the available CPUs split evenly over the workers (at least 1)."""
    return settings.numba_threads or max(1, available_cpus() // settings.workers)


@dataclass(frozen=True)
class WorkerRole:
    """Who a worker process is: its index among `count` workers and the supervisor's control directory."""

    index: int
    count: int
    control_dir: Path

    def control_path(self, index: int) -> Path:
        return self.control_dir / f"worker-{index}.sock"

    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def bind_control(self) -> socket.socket:
        """This worker's private Unix socket, listening before the tables load, so a sibling's
        replayed admin change waits in the backlog instead of being refused."""
        path = self.control_path(self.index)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(64)
        return sock


def _admin_change(method: str, path: str, relay_loads: bool) -> bool:
    match = ADMIN_CHANGE.fullmatch(path)
    if match is None:
        return False
    if match.group(2) is not None:
        return method == "POST"
    return relay_loads and method in ("PUT", "DELETE")


class WorkerFront:
    """Outermost ASGI layer of a worker: stamps `x-embserve-worker` on every response and replays
    successful admin changes to the sibling workers (see the module docstring)."""

    def __init__(self, app: Any, service: EmbeddingService, role: WorkerRole) -> None:
        self.app = app
        self.past_admission = app.app
        """the application under AdmissionFront (`create_asgi`), for replays from siblings"""
        self.service = service
        self.role = role
        self.worker_id = str(role.index).encode()
        self.control_socket = str(role.control_path(role.index))
        # with Redis the registry already carries loads and deletes to every worker
        self.relay_loads = service.settings.redis_url is None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stamp = self.worker_id

        async def stamped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (WORKER_HEADER, stamp)]
            await send(message)

        if not _admin_change(scope["method"], scope["path"], self.relay_loads):
            await self.app(scope, receive, stamped)
        elif self._from_sibling(scope):
            await self._apply_replayed(scope, receive, stamped)
        else:
            await self._apply_everywhere(scope, receive, stamped)

    def _from_sibling(self, scope: MutableMapping[str, Any]) -> bool:
        # uvicorn gives a Unix socket's scope["server"] as (path, None)
        server = scope.get("server")
        return server is not None and server[1] is None and server[0] == self.control_socket

    async def _apply_replayed(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """A change a sibling has applied and now replays here: past admission (the concurrency
        limit, the body and arriving-bytes limits, the drain), since a refusal would leave this
        worker serving other rows than its siblings. The sibling held the request to those limits
        already; the route still checks the admin token."""
        from service.rest import admitted_route, body_then, read_asgi_body

        table_of_path = ADMIN_CHANGE.fullmatch(scope["path"])  # what `_admin_change` matched to come here
        assert table_of_path is not None
        operation, table = admitted_route(scope["method"], scope["path"]) or ("admin_delete", table_of_path.group(1))
        with self.service.replay_taken_in("http", operation, table):
            body = await read_asgi_body(receive, self.service)  # a replay: held to no body limit
            if body is None:
                return  # the sibling gave up (its timeout); it reports the change as not applied
            await self.past_admission(scope, body_then(body, receive), send)

    async def _apply_everywhere(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        from runtime.errors import EmbserveError  # not at the top: the supervisor imports no runtime
        from service.errors import render_error, send_http_error, status_label
        from service.rest import admitted_route, read_asgi_body

        table_of_path = ADMIN_CHANGE.fullmatch(scope["path"])  # what `_admin_change` matched to come here
        assert table_of_path is not None
        operation, table = admitted_route(scope["method"], scope["path"]) or ("admin_delete", table_of_path.group(1))
        # the record counts a change refused before it reaches this worker's server (a wrong
        # token, a body over the limit); one that gets there is counted by that server
        with self.service.taken_in("http", operation, table) as taken:
            try:
                # as a single server does: the token before the body, so a caller without it learns
                # nothing of the format and sends no body for nothing
                self.service.authorize(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None)
                body = await read_asgi_body(receive, self.service)
            except EmbserveError as exc:
                taken.status = status_label(exc)
                await send_http_error(send, render_error(exc, self.service.settings.artifact_root))
                return
            if body is None:
                self.service.client_disconnected("http")
                return
        await self._apply_read(scope, body, send)

    async def _apply_read(self, scope: MutableMapping[str, Any], body: bytes, send: Any) -> None:
        from service.errors import not_applied_everywhere, render_error

        lock = await asyncio.to_thread(_take_admin_lock, self.role.control_dir)
        try:
            status, headers, answer = await self._apply_here(scope, body)
            if 200 <= status < 300:
                target = _request_target(scope)
                headers_out = [
                    (key.decode(), value.decode("latin-1")) for key, value in scope["headers"] if key in RELAYED_HEADERS
                ]
                headers_out, body = _pin_sequence(scope["path"], headers_out, body, answer)
                timeout = self.service.settings.publish_wait_seconds
                failures = await replay_to_siblings(self.role, timeout, scope["method"], target, headers_out, body)
                if failures:
                    log.error("admin change %s %s not applied everywhere: %s", scope["method"], scope["path"], failures)
                    error = render_error(not_applied_everywhere(failures), self.service.settings.artifact_root)
                    status, headers = error.http_status, [(b"content-type", b"application/json")]
                    answer = error.json_body()
        finally:
            lock.close()
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _apply_here(
        self, scope: MutableMapping[str, Any], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        sent = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def replayed_receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # like a client that stays connected
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                parts.append(bytes(message.get("body", b"")))

        await self.app(scope, replayed_receive, capture)
        return status, headers, b"".join(parts)


def _request_target(scope: MutableMapping[str, Any]) -> str:
    """The request's path and query as the client sent them, percent-encoded: the decoded path
    would send a table named "a?b" to table "a" of the siblings, and "a b" not at all."""
    raw = scope.get("raw_path")
    path = raw.decode("ascii") if raw else quote(scope["path"])
    query = scope.get("query_string") or b""
    return path + ("?" + query.decode("ascii") if query else "")


async def replay_to_siblings(
    role: WorkerRole, timeout: float, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> list[str]:
    """Send one HTTP request to every sibling's Unix socket at once; what went wrong where, if anything."""
    problems = await asyncio.gather(
        *(_replay(role.control_path(i), timeout, method, target, headers, body) for i in role.siblings())
    )
    return [f"worker {i}: {problem}" for i, problem in zip(role.siblings(), problems, strict=True) if problem]


async def _replay(
    path: Path, timeout: float, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> str | None:
    """None when the worker behind `path` answered 2xx, else what went wrong."""
    lines = [f"{method} {target} HTTP/1.1", "host: embserve-worker", "connection: close"]
    lines += [f"{key}: {value}" for key, value in headers]
    lines.append(f"content-length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
        try:
            writer.write(request)
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return f"not reachable ({exc.__class__.__name__}: {exc})"
    head, _, answer = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0
    if 200 <= status < 300:
        return None
    return f"HTTP {status or '?'} {answer[:300].decode(errors='replace')}"


class ReplayingServicer:
    """Mixin over the native gRPC servicer: Upsert and DeleteKeys, once applied here, are replayed
    to the siblings as the equivalent binary HTTP update (with the sequence this worker reached,
    so every worker ends at the same one), under the shared admin lock."""

    role: WorkerRole
    service: EmbeddingService

    async def _everywhere(self, context: Any, apply: Any, path: str, body: bytes, shape: str) -> Any:
        lock = await asyncio.to_thread(_take_admin_lock, self.role.control_dir)
        try:
            reply = await apply()
            if reply is None:  # refused here (its status is set on the call): nothing to replay
                return None
            headers = [
                ("content-type", "application/octet-stream"),
                ("x-embserve-shape", shape),
                ("x-embserve-sequence", str(reply.sequence)),
            ]
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    headers.append(("authorization", str(value)))
            timeout = self.service.settings.publish_wait_seconds
            failures = await replay_to_siblings(self.role, timeout, "POST", path, headers, body)
        finally:
            lock.close()
        if failures:
            log.error("gRPC admin change on %s not applied everywhere: %s", path, failures)
            from service.errors import not_applied_everywhere, render_error

            error = render_error(not_applied_everywhere(failures), self.service.settings.artifact_root)
            await context.abort(error.grpc_code, error.message)
        return reply

    async def Upsert(self, request: Any, context: Any) -> Any:  # noqa: N802
        from service.rpc.servicers import _authorization, request_tensor

        self.service.authorize(_authorization(context))  # before the tensors are read, as the parent does
        parent: Any = super()
        keys = request_tensor(request.keys, "keys") if request.HasField("keys") else None
        rows = request_tensor(request.rows, "rows") if request.HasField("rows") else None
        if keys is None or rows is None or rows.ndim != 2 or keys.ndim != 1:
            return await parent.Upsert(request, context)  # its own error, nothing to replay
        body = keys.astype("<i8").tobytes() + rows.astype("<f4").tobytes()
        return await self._everywhere(
            context,
            lambda: parent.Upsert(request, context),
            f"/v1/tables/{quote(request.table, safe='')}/upsert",
            body,
            f"{keys.shape[0]},{rows.shape[1]}",
        )

    async def DeleteKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        from service.rpc.servicers import _authorization, request_tensor

        self.service.authorize(_authorization(context))
        parent: Any = super()
        keys = request_tensor(request.keys, "keys") if request.HasField("keys") else None
        if keys is None or keys.ndim != 1:
            return await parent.DeleteKeys(request, context)
        return await self._everywhere(
            context,
            lambda: parent.DeleteKeys(request, context),
            f"/v1/tables/{quote(request.table, safe='')}/delete",
            keys.astype("<i8").tobytes(),
            str(keys.shape[0]),
        )


def replaying_servicer(service: EmbeddingService, role: WorkerRole) -> Any:
    """The native gRPC servicer of a worker: NativeServicer with Upsert / DeleteKeys replayed."""
    from service.rpc.servicers import NativeServicer, grpc_errors

    class WorkerNativeServicer(ReplayingServicer, NativeServicer):
        # typed errors (a wrong token, a tensor that does not parse) end the call with their
        # status and are counted, as on a single server, instead of escaping as UNKNOWN
        Upsert = grpc_errors(ReplayingServicer.Upsert)  # type: ignore[assignment]
        DeleteKeys = grpc_errors(ReplayingServicer.DeleteKeys)  # type: ignore[assignment]

    servicer = WorkerNativeServicer(service)
    servicer.role = role
    return servicer


def _pin_sequence(
    path: str, headers: list[tuple[str, str]], body: bytes, answer: bytes
) -> tuple[list[tuple[str, str]], bytes]:
    """A row update replayed with the sequence this worker reached, so every worker ends at the
    same one even where the client let it default to "one more": in the sequence header for a
    binary body, in the JSON body's "sequence" otherwise."""
    if not path.endswith(ROW_UPDATE_SUFFIXES):
        return headers, body
    try:
        sequence = json.loads(answer)["sequence"]
    except (ValueError, KeyError, TypeError):
        return headers, body
    content_type = next((value for key, value in headers if key == "content-type"), "")
    if content_type.split(";")[0].strip() == "application/octet-stream":
        kept = [(key, value) for key, value in headers if key != "x-embserve-sequence"]
        return [*kept, ("x-embserve-sequence", str(sequence))], body
    try:
        payload = orjson.loads(body)
    except ValueError:
        return headers, body
    if not isinstance(payload, dict):
        return headers, body
    payload["sequence"] = sequence
    # compact, as orjson writes it: json.dumps's ", " would make a body near the size limit
    # larger than the one the client sent (its numbers are written back the shortest way)
    return headers, orjson.dumps(payload)


def _take_admin_lock(control_dir: Path) -> Any:
    """An exclusive flock shared by all workers (and by concurrent requests in one worker: each
    call opens its own file description); released by closing the returned file."""
    handle = (control_dir / "admin.lock").open("a")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


# ---- supervisor ---------------------------------------------------------------------------------
def _reserve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """A concrete port for `port` (0: a free one, held by a bound, never listening SO_REUSEPORT
    socket until the supervisor exits, so no other program takes it while workers start)."""
    if port != 0:
        return port, None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, 0))
    return int(holder.getsockname()[1]), holder


def _metrics_dir(control_dir: Path) -> Path:
    """PROMETHEUS_MULTIPROC_DIR when the environment names one (emptied of an earlier run's files),
    else a fresh directory under the control directory."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path
    path = control_dir / "metrics"
    path.mkdir()
    return path


def supervise(settings: Settings) -> int:
    """Run `settings.workers` worker processes until SIGTERM / SIGINT (exit 0 when all drained
    cleanly) or until one exits on its own (the others are stopped; exit 1)."""
    logging.basicConfig(level=settings.logging_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    http_port, http_holder = _reserve_port(settings.host, settings.http_port)
    grpc_port, grpc_holder = _reserve_port(settings.host, settings.grpc_port)
    control_dir = Path(tempfile.mkdtemp(prefix="embserve-workers-"))
    threads = numba_threads_per_worker(settings)
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(_metrics_dir(control_dir)),
        "NUMBA_NUM_THREADS": str(threads),
    }
    worker_settings = settings.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(settings.workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.workers", str(index), str(settings.workers), str(control_dir)],
                stdin=subprocess.PIPE,
                env=env,
            )
            assert proc.stdin is not None
            proc.stdin.write(worker_settings.model_dump_json().encode())
            proc.stdin.close()
            procs.append(proc)
        log.info(
            "supervisor: %d workers (pids %s), %d numba threads each, on http %s:%d and grpc %s:%d",
            len(procs),
            ", ".join(str(p.pid) for p in procs),
            threads,
            settings.host,
            http_port,
            settings.host,
            grpc_port,
        )
        return _watch(procs, lambda: stopping, settings.grace_seconds)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for holder in (http_holder, grpc_holder):
            if holder is not None:
                holder.close()
        shutil.rmtree(control_dir, ignore_errors=True)


def _watch(procs: list[subprocess.Popen[bytes]], stopping: Any, grace_seconds: float) -> int:
    while not stopping():
        for index, proc in enumerate(procs):
            code = proc.poll()
            if code is not None:
                log.error("worker %d (pid %d) exited with status %d: stopping the others", index, proc.pid, code)
                _stop_all(procs, grace_seconds)
                return 1
        time.sleep(0.1)
    log.info("supervisor: signal received, draining %d workers", len(procs))
    codes = _stop_all(procs, grace_seconds)
    if any(codes):
        log.error("workers exited with statuses %s", codes)
        return 1
    return 0


def _stop_all(procs: list[subprocess.Popen[bytes]], grace_seconds: float) -> list[int]:
    """SIGTERM every live worker, wait for their drains (grace + a margin), kill what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds + 10
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def exec_supervisor(settings: Settings) -> None:
    """Replace this process (same pid: PID 1 in a container stays the supervisor) by a lean
    `python -m service.workers supervise`, which imports no numpy, numba or server code, so the
    supervisor holds tens of MiB, not a worker's worth. The settings travel in a 0600 file the
    supervisor reads and deletes."""
    fd, path = tempfile.mkstemp(prefix="embserve-settings-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        handle.write(settings.model_dump_json())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "service.workers", "supervise", path])


def supervisor_main(settings_path: str) -> int:
    from service.settings import Settings

    path = Path(settings_path)
    try:
        settings = Settings.model_validate_json(path.read_bytes())
    finally:
        path.unlink(missing_ok=True)
    return supervise(settings)


def worker_main(argv: list[str]) -> int:
    """Entry of one worker process: `python -m service.workers INDEX COUNT CONTROL_DIR`, the
    supervisor's settings as JSON on stdin. PROMETHEUS_MULTIPROC_DIR and NUMBA_NUM_THREADS are in
    the environment before prometheus_client or numba is imported."""
    if argv[0] == "supervise":
        return supervisor_main(argv[1])
    index, count, control_dir = int(argv[0]), int(argv[1]), Path(argv[2])
    from service.server import serve
    from service.settings import Settings

    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    if settings.replica_id:  # one registry row per worker process
        settings = settings.model_copy(update={"replica_id": f"{settings.replica_id}-w{index}"})
    serve(settings, WorkerRole(index, count, control_dir))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
