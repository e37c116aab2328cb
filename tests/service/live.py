"""Start a real `embserve serve` process on loopback for tests, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen (two calls of
    free_port can be handed the same port, and a server given it twice cannot start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return int(self.proc.returncode)


READY_TIMEOUT = 300.0
"""Seconds a server may take to get ready. With a cold numba cache its warm-up compiles every kernel
its tables use: the demo table (PQ M=16 + int8 rerank) took ~100 s of warm-up after a 44 s build
on the 2-core VM, over the 120 s allowed before, when its test file ran alone. The wait ends as
soon as the server is ready, and at once if it exits."""


def start_server(
    workdir: Path, args: list[str], env: dict[str, str] | None = None, ready_timeout: float = READY_TIMEOUT
) -> LiveServer:
    for attempt in range(3):
        try:
            return _start_server_once(workdir, args, env, ready_timeout)
        except PortTaken:
            # the port was free when chosen and taken before the server bound it (another
            # process's connection can be handed it in between): choose again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """The server exited because a chosen port was in use by the time it bound it."""


def _start_server_once(workdir: Path, args: list[str], env: dict[str, str] | None, ready_timeout: float) -> LiveServer:
    http_port, grpc_port = free_ports(2)
    log_path = workdir / f"server-{http_port}.log"
    full_env = {**os.environ, "EMBSERVE_DEMO_DIR": str(workdir / "demo"), **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *args,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = LiveServer(proc, http_port, grpc_port, log_path, full_env)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = server.log()
            error = PortTaken if "is already in use" in output else RuntimeError
            raise error(f"server exited with {proc.returncode}:\n{output}")
        try:
            if httpx.get(f"{server.http}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.proc.kill()
    server.proc.wait(10)  # reaped here, or its ResourceWarning fails whichever test runs next
    raise RuntimeError(f"server not ready after {ready_timeout} s:\n{server.log()}")
