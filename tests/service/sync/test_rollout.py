"""Version rollout end to end: one real redis-server, two real `embserve serve` replicas.

The tests run in order on one pair of replicas (each step starts from the previous one's state):
start on the registry's version, a publish under load, a corrupt publish, the admin PUT as a
publish, Redis killed and restarted, a replica restarted, a replica started while Redis is down."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import runtime
from service.cli import main
from service.sync import registry, status
from tests.conftest import low_rank_table
from tests.service.conftest import ADMIN_TOKEN
from tests.service.live import LiveServer, start_server
from tests.service.sync.conftest import RedisServer, start_redis

pytestmark = [pytest.mark.slow, pytest.mark.external]
IDS = list(range(0, 2000, 97))
VERSIONS = ("v0", "v1", "v2", "v4", "v5")
SYNC_ENV = {
    "EMBSERVE_SYNC_POLL_SECONDS": "1",
    "EMBSERVE_HEARTBEAT_SECONDS": "0.25",
    "EMBSERVE_REDIS_RETRY_MAX_SECONDS": "0.5",
    "EMBSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
}


@dataclass
class Cluster:
    redis: RedisServer
    root: Path
    workdir: Path
    replicas: dict[str, LiveServer] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)

    def start(self, replica_id: str) -> LiveServer:
        args = ["--table", f"items={self.root / 'items' / 'v0'}", "--artifact-root", str(self.root)]
        args += ["--redis-url", self.redis.url, "--replica-id", replica_id]
        self.replicas[replica_id] = start_server(self.workdir, args, env=SYNC_ENV)
        return self.replicas[replica_id]

    def version(self, replica: str) -> str:
        return str(httpx.get(f"{self.replicas[replica].http}/v1/tables/items", timeout=5).json()["version"])

    def lookup(self, replica: str) -> np.ndarray:
        r = httpx.post(f"{self.replicas[replica].http}/v1/tables/items/lookup", json={"ids": IDS}, timeout=5)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["embeddings"], dtype=np.float32)

    def ready(self, replica: str) -> dict[str, Any]:
        r = httpx.get(f"{self.replicas[replica].http}/readyz", timeout=5)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def publish(self, relative: str, verify: bool = True, checksum_of: str | None = None) -> registry.Published:
        checksum, version = registry.describe_artifact(self.root / (checksum_of or relative), verify=verify)

        async def run() -> registry.Published:
            client = registry.connect(self.redis.url)
            try:
                return await registry.publish(client, "items", relative, checksum, version)
            finally:
                await client.aclose()

        return asyncio.run(run())

    def rows(self) -> dict[str, status.ReplicaRow]:
        async def run() -> list[status.ReplicaRow]:
            client = registry.connect(self.redis.url)
            try:
                return await status.read_all(client)
            finally:
                await client.aclose()

        return {row.replica: row for row in asyncio.run(run())}


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("registry-artifacts")
    for seed, version in enumerate(VERSIONS):
        runtime.compress(low_rank_table(2000, 16, seed=40 + seed), "int8", version=version).save(
            root / "items" / version
        )
    runtime.compress(low_rank_table(2000, 16, seed=99), "int8", version="v3").save(
        root / "items" / "v3"
    )  # corrupted below
    redis = start_redis(tmp_path_factory.mktemp("redis"))
    found = Cluster(redis, root, tmp_path_factory.mktemp("replicas"))
    found.expected = {v: runtime.load_table(root / "items" / v).lookup(np.array(IDS)) for v in VERSIONS}
    # published before any replica starts: the registry, not the configured v0, is what they serve
    found.publish("items/v1")
    try:
        found.start("a")
        found.start("b")
        yield found
    finally:
        try:
            # every replica is stopped even when one will not stop: a live one would outlast the module
            failures = []
            for server in found.replicas.values():
                try:
                    server.terminate()
                except subprocess.TimeoutExpired as exc:
                    failures.append(exc)
            if failures:
                raise failures[0]
        finally:
            redis.kill()


def test_replicas_start_on_the_published_version(cluster: Cluster) -> None:
    for replica in ("a", "b"):
        assert cluster.version(replica) == "v1"
        np.testing.assert_array_equal(cluster.lookup(replica), cluster.expected["v1"])
        assert cluster.ready(replica)["degraded"] is False
    wait_for("both status rows", lambda: {"a", "b"} <= cluster.rows().keys())
    rows = cluster.rows()
    for replica in ("a", "b"):
        items = rows[replica].tables["items"]
        assert (rows[replica].state, items.version, items.path, items.state) == ("ready", "v1", "items/v1", "serving")


def test_publish_swaps_both_replicas_under_load_without_a_failed_request(cluster: Cluster) -> None:
    failures: list[str] = []
    seen: dict[str, set[str]] = {"a": set(), "b": set()}
    counts = {"a": 0, "b": 0}
    stop = threading.Event()

    def hammer(replica: str) -> None:
        with httpx.Client(base_url=cluster.replicas[replica].http, timeout=10) as client:
            while not stop.is_set():
                r = client.post("/v1/tables/items/lookup", json={"ids": IDS})
                counts[replica] += 1
                if r.status_code != 200:
                    failures.append(f"{replica}: {r.status_code} {r.text}")
                    continue
                rows = np.asarray(r.json()["embeddings"], dtype=np.float32)
                match = [v for v in ("v1", "v2") if np.array_equal(rows, cluster.expected[v])]
                if not match:
                    failures.append(f"{replica}: rows of neither version")
                seen[replica].update(match)

    threads = [threading.Thread(target=hammer, args=(r,)) for r in ("a", "b") for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        code = main(
            ["publish", "items", "items/v2", "--redis-url", cluster.redis.url, "--artifact-root", str(cluster.root)]
        )
        assert code == 0
        wait_for("both replicas on v2", lambda: cluster.version("a") == cluster.version("b") == "v2")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert min(counts.values()) > 20, counts
    assert seen == {"a": {"v1", "v2"}, "b": {"v1", "v2"}}


def test_a_corrupt_publish_leaves_both_on_the_old_version_and_says_why(cluster: Cluster) -> None:
    codes = max((cluster.root / "items" / "v3").glob("*.npy"), key=lambda p: p.stat().st_size)
    codes.write_bytes(codes.read_bytes()[:-5])
    cluster.publish("items/v3", verify=False)

    def both_failed() -> bool:
        rows = cluster.rows()
        return all(rows[r].tables["items"].state == "failed" for r in ("a", "b"))

    wait_for("both replicas to refuse v3", both_failed)
    for replica, row in cluster.rows().items():
        items = row.tables["items"]
        assert "sha256" in items.error and "items/v3" in items.error, items.error
        assert str(cluster.root) not in items.error  # named relative to the artifact root
        assert items.version == "v2", replica
        assert cluster.version(replica) == "v2"
        np.testing.assert_array_equal(cluster.lookup(replica), cluster.expected["v2"])
        assert "sha256" in cluster.ready(replica)["rollout_failures"]["items"]
    metrics = httpx.get(f"{cluster.replicas['a'].http}/metrics").text
    assert 'embserve_rollouts_total{outcome="failed",table="items"} 1.0' in metrics
    assert 'embserve_table_published_in_sync{table="items"} 0.0' in metrics
    # a manifest that differs from the one published (changed after publishing) is refused too
    cluster.publish("items/v4", checksum_of="items/v2")
    wait_for(
        "both replicas to refuse the changed manifest",
        lambda: all("changed" in row.tables["items"].error for row in cluster.rows().values()),
    )
    assert cluster.version("a") == cluster.version("b") == "v2"


def test_admin_put_publishes_for_every_replica(cluster: Cluster) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"{cluster.replicas['a'].http}/v1/tables/items"
    r = httpx.put(url, json={"path": "items/v3"}, headers=auth, timeout=60)
    assert r.status_code == 422 and "sha256" in r.json()["error"]  # refused before publishing
    r = httpx.put(url, json={"path": "items/v4"}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "v4"
    wait_for("replica b on v4", lambda: cluster.version("b") == "v4")
    np.testing.assert_array_equal(cluster.lookup("b"), cluster.expected["v4"])
    rows = cluster.rows()
    assert all(row.tables["items"].state == "serving" and not row.tables["items"].error for row in rows.values())


def test_redis_down_degrades_then_recovers_and_a_later_publish_applies(cluster: Cluster) -> None:
    cluster.redis.kill()
    wait_for("both degraded", lambda: all(cluster.ready(r)["degraded"] for r in ("a", "b")), timeout=20)
    for replica in ("a", "b"):
        np.testing.assert_array_equal(cluster.lookup(replica), cluster.expected["v4"])
        assert cluster.ready(replica)["redis"] == "unreachable"
    metrics = httpx.get(f"{cluster.replicas['b'].http}/metrics").text
    assert "embserve_redis_connected 0.0" in metrics
    assert 'embserve_redis_errors_total{operation="watch"}' in metrics
    cluster.redis.start()  # same port, no persistence: the registry is empty now
    wait_for("both recovered", lambda: not any(cluster.ready(r)["degraded"] for r in ("a", "b")), timeout=20)
    # an empty registry withdraws nothing, but the replicas no longer serve a published version:
    # their in-sync gauge says so (it stayed 1; found by a probe)
    assert cluster.version("a") == cluster.version("b") == "v4"
    out_of_sync = 'embserve_table_published_in_sync{table="items"} 0.0'
    for replica in ("a", "b"):
        wait_for(
            f"{replica} out of sync", partial(lambda r: out_of_sync in metrics_text(cluster, r), replica), timeout=20
        )
        assert "its published version is gone from the registry" in cluster.replicas[replica].log()
    cluster.publish("items/v5")
    wait_for("both replicas on v5", lambda: cluster.version("a") == cluster.version("b") == "v5")
    assert "embserve_redis_connected 1.0" in httpx.get(f"{cluster.replicas['b'].http}/metrics").text
    for replica in ("a", "b"):
        assert 'embserve_table_published_in_sync{table="items"} 1.0' in metrics_text(cluster, replica)


def metrics_text(cluster: Cluster, replica: str) -> str:
    return httpx.get(f"{cluster.replicas[replica].http}/metrics", timeout=5).text


def test_a_restarted_replica_comes_up_on_the_published_version(cluster: Cluster) -> None:
    assert cluster.replicas["b"].terminate() == 0
    wait_for("b's row removed", lambda: "b" not in cluster.rows())
    cluster.start("b")  # configured with v0; the registry says v5
    assert cluster.version("b") == "v5"
    np.testing.assert_array_equal(cluster.lookup("b"), cluster.expected["v5"])


def test_a_replica_started_while_redis_is_down_serves_its_configured_table(cluster: Cluster) -> None:
    assert cluster.replicas["b"].terminate() == 0
    cluster.redis.kill()
    cluster.start("b")
    ready = cluster.ready("b")
    assert ready["degraded"] is True and ready["ready"] is True
    assert cluster.version("b") == "v0"
    cluster.redis.start()
    cluster.publish("items/v5")
    wait_for("b catches up on v5", lambda: cluster.version("b") == "v5")
    assert cluster.ready("b")["degraded"] is False
