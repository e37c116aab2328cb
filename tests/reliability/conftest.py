"""One real `embserve serve` process shared by the reliability tests, with small limits and short
read timeouts so each defect shows over the transport within a few seconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import runtime
from tests.conftest import low_rank_table
from tests.service.live import LiveServer, start_server

ADMIN_TOKEN = "reliability-token"
MAX_CONCURRENCY = 2
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEP_ALIVE = 1.0
MAX_IDS = 1000


@dataclass
class Reliable:
    server: LiveServer
    root: Path


def build_root(root: Path) -> Path:
    runtime.compress(low_rank_table(4000, 32, seed=21), "int8", version="t-v1").save(root / "t" / "v1")
    runtime.compress(low_rank_table(4000, 32, seed=22), "int8", version="t-v2").save(root / "t" / "v2")
    return root


def server_env(**extra: str) -> dict[str, str]:
    return {
        "EMBSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EMBSERVE_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "EMBSERVE_MAX_IDS": str(MAX_IDS),
        "EMBSERVE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "EMBSERVE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "EMBSERVE_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
        "EMBSERVE_LOG_LEVEL": "info",
        **extra,
    }


@pytest.fixture(scope="package")
def reliable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reliable]:
    root = build_root(tmp_path_factory.mktemp("reliability-artifacts"))
    server = start_server(
        tmp_path_factory.mktemp("reliability-server"),
        ["--table", f"t={root / 't' / 'v1'}", "--artifact-root", str(root)],
        env=server_env(),
    )
    yield Reliable(server, root)
    assert server.terminate() == 0, server.log()


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
