"""Real redis-server processes on loopback for the sync tests (no persistence, in a temp dir)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.service.conftest import require_binary
from tests.service.live import free_port


@dataclass
class RedisServer:
    binary: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    appendonly: bool = False
    """AOF on with an fsync per write, as the deploy manifests configure Redis: a restart keeps every entry"""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


def start_redis(workdir: Path, appendonly: bool = False) -> RedisServer:
    server = RedisServer(require_binary("redis-server"), workdir, free_port(), appendonly=appendonly)
    server.start()
    return server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.kill()


@dataclass
class RedisClusterNodes:
    """A Redis Cluster of `redis-server --cluster-enabled yes` processes on loopback, every slot
    assigned by `redis-cli --cluster create`, no replicas, no persistence."""

    workdir: Path
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """One node's URL: the cluster clients learn the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, server: str, cli: str) -> None:
        for port in self.ports:
            # the cluster bus gets its own free port (a port + 10000 may be taken or above 65535)
            cmd = [server, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1"]
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf")]
            cmd += ["--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "", "--dir", str(self.workdir)]
            with (self.workdir / f"redis-{port}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        for port in self.ports:
            _wait_for_ping(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = {redis.Redis(port=p, decode_responses=True).cluster("info")["cluster_state"] for p in self.ports}
            if states == {"ok"}:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster on ports {self.ports} did not reach cluster_state:ok")

    def node_of(self, key: str) -> int:
        """The port of the node serving `key`'s slot, from the cluster's own slot map."""
        client = redis.Redis(port=self.ports[0], decode_responses=True)
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"slot {slot} of {key!r} is served by no node")

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


def start_redis_cluster(workdir: Path, nodes: int = 3) -> RedisClusterNodes:
    server, cli = require_binary("redis-server"), require_binary("redis-cli")
    cluster = RedisClusterNodes(workdir, [free_port() for _ in range(nodes)])
    try:
        cluster.start(server, cli)
    except BaseException:
        cluster.kill()
        raise
    return cluster
