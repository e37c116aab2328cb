"""The update log and the registry on a real three-node Redis Cluster (loopback, no replicas).

Three keyed tables whose keys hash to slots served by three different nodes, one `embserve
serve --redis-cluster` replica, the operator commands with `--redis-cluster`: publishes reach the
replica (a publish hint included: the registry poll is set far longer than the test waits),
pushed upserts and deletes of every table are applied (lookups equal a local reference that
applied the same updates), a replica killed with SIGKILL replays every table's stream from the
cluster, and `embserve status` / `embserve compact` work against the cluster. A replica started
before its cluster is up serves degraded and follows the cluster once it answers."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis as redis_py
from redis.cluster import RedisCluster

import runtime
from runtime.table import Table
from service.cli import main
from service.sync import connection, keys, updates
from tests.conftest import low_rank_table
from tests.service.conftest import require_binary
from tests.service.live import LiveServer, free_port, start_server
from tests.service.sync.conftest import RedisClusterNodes, start_redis_cluster
from tests.service.sync.test_rollout import SYNC_ENV, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.external]
TABLES = {"items": 16, "queries": 8, "ads": 12}
"""table -> dim; with redis-cli's even slot split the three hash tags land on three nodes"""
ROWS = 600
KEYS = np.arange(ROWS, dtype=np.int64) * 13 + 5
HINT_WAIT_SECONDS = 15.0
POLL_SECONDS = "120"
"""the replica reads the registry this rarely: a publish it applies within HINT_WAIT_SECONDS came
through the pub/sub hint"""


@dataclass
class ClusterDeployment:
    cluster: RedisClusterNodes
    root: Path
    workdir: Path
    references: dict[str, Table] = field(default_factory=dict)
    replica: LiveServer | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(11))

    def flags(self) -> list[str]:
        return ["--redis-url", self.cluster.url, "--redis-cluster"]

    def start_replica(self) -> LiveServer:
        args = ["--artifact-root", str(self.root), "--replica-id", "cluster-a", *self.flags()]
        env = {**SYNC_ENV, "EMBSERVE_SYNC_POLL_SECONDS": POLL_SECONDS, "EMBSERVE_UPDATE_APPLY_INTERVAL_SECONDS": "0.05"}
        self.replica = start_server(self.workdir, args, env=env)
        return self.replica

    def save_version(self, table: str, version: str, seed: int) -> Path:
        path = self.root / table / version
        low = low_rank_table(ROWS, TABLES[table], seed=seed)
        runtime.compress(low, "int8", keys=KEYS, missing="zeros", version=f"{table}-{version}").save(path)
        return path

    def publish(self, table: str, version: str) -> dict[str, Any]:
        path = self.root / table / version
        argv = ["publish", table, str(path), "--artifact-root", str(self.root), *self.flags()]
        code, out = run_cli(argv)
        assert code == 0, out
        self.references[table] = runtime.load_table(path)
        return dict(json.loads(out))

    def push(self, table: str, entry_keys: np.ndarray, rows: np.ndarray | None, batch_rows: int = 50) -> str:
        """Push through a redis-py cluster client, and apply the same batches to the reference."""
        client = connection.sync_client(self.cluster.url, cluster=True)
        try:
            assert isinstance(client, RedisCluster)
            ids = updates.push(client, table, entry_keys, rows, batch_rows=batch_rows)
        finally:
            client.close()
        for start in range(0, entry_keys.size, batch_rows):
            part = slice(start, start + batch_rows)
            if rows is None:
                self.references[table].delete(entry_keys[part])
            else:
                self.references[table].upsert(entry_keys[part], rows[part].astype(np.float32))
        return ids[-1]

    def describe(self, table: str) -> dict[str, Any]:
        assert self.replica is not None
        return dict(httpx.get(f"{self.replica.http}/v1/tables/{table}", timeout=5).json())

    def lookup(self, table: str, entry_keys: np.ndarray) -> np.ndarray:
        assert self.replica is not None
        body = {"ids": entry_keys.tolist()}
        r = httpx.post(f"{self.replica.http}/v1/tables/{table}/lookup", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["embeddings"], dtype=np.float32)

    def wait_applied(self, table: str, last_id: str) -> None:
        target = updates.id_to_sequence(last_id)

        def caught_up() -> bool:
            return updates.id_to_sequence(self.describe(table)["last_update_id"] or "0-0") >= target

        wait_for(f"{table} to apply {last_id}", caught_up, timeout=20)

    def assert_matches_references(self, extra: dict[str, np.ndarray]) -> None:
        for table, reference in self.references.items():
            every = np.concatenate([KEYS, extra.get(table, np.empty(0, np.int64))])
            np.testing.assert_array_equal(self.lookup(table, every), reference.lookup(every), err_msg=table)


def run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    found = ClusterDeployment(cluster, tmp_path_factory.mktemp("cluster-artifacts"), tmp_path_factory.mktemp("cr"))
    try:
        yield found
    finally:
        if found.replica is not None:
            found.replica.terminate()
        cluster.kill()


def test_cluster_updates_publishes_and_status(deployment: ClusterDeployment) -> None:
    cluster = deployment.cluster
    # the three tables' streams are served by three different nodes (the cluster's own slot map)
    nodes = {table: cluster.node_of(keys.updates_key(table)) for table in TABLES}
    assert len(set(nodes.values())) == 3, nodes
    for table in TABLES:  # and every key of a table sits in its stream's slot
        assert {cluster.node_of(keys.version_key(table)), cluster.node_of(keys.deadletter_key(table))} == {nodes[table]}
        deployment.save_version(table, "v0", seed=len(table))
        assert deployment.publish(table, "v0")["generation"] == 1

    deployment.start_replica()
    for table in TABLES:
        assert deployment.describe(table)["version"] == f"{table}-v0"

    # a publish reaches the replica through the cluster pub/sub hint (the poll is 120 s away)
    deployment.save_version("items", "v1", seed=99)
    deployment.publish("items", "v1")
    wait_for(
        "items v1 through the publish hint",
        lambda: deployment.describe("items")["version"] == "items-v1",
        timeout=HINT_WAIT_SECONDS,
    )

    # upserts (existing and new keys) and deletes in every table's stream, on its own node
    added: dict[str, np.ndarray] = {}
    last: dict[str, str] = {}
    for n, (table, dim) in enumerate(TABLES.items()):
        added[table] = -np.arange(1, 21, dtype=np.int64) * (n + 2)
        changed = np.concatenate([KEYS[n * 40 : n * 40 + 60], added[table]])
        deployment.push(table, changed, deployment.rng.standard_normal((changed.size, dim)))
        last[table] = deployment.push(table, KEYS[300 + n * 10 : 310 + n * 10], None)
    for table, node_port in nodes.items():
        node = redis_py.Redis(port=node_port)
        assert node.xlen(keys.updates_key(table)) == 3  # 80 upserted keys in two entries, one delete
        node.close()
    for table in TABLES:
        deployment.wait_applied(table, last[table])
    deployment.assert_matches_references(added)
    for n, table in enumerate(TABLES):
        deleted = KEYS[300 + n * 10 : 310 + n * 10]
        assert not deployment.lookup(table, deleted).any(), table  # gone: zero rows under missing="zeros"
        assert deployment.lookup(table, added[table]).any(axis=1).all(), table

    # embserve status against the cluster: the replica's row, every table in sync and caught up
    code, out = run_cli(["status", "--json", *deployment.flags()])
    assert code == 0, out
    report = json.loads(out)
    assert set(report["published"]) == set(TABLES) and report["published"]["items"]["generation"] == 2
    (row,) = report["replicas"]
    assert row["replica"] == "cluster-a" and row["state"] == "ready"
    for table in TABLES:
        assert row["lag"][table] == "in sync", row
    wait_for(
        "status rows to show the last applied ids",
        lambda: all(status_row_ids(deployment)[table] == last[table] for table in TABLES),
        timeout=10,
    )

    # SIGKILL: the restarted replica loads the published versions and replays all three streams
    assert deployment.replica is not None
    os.kill(deployment.replica.proc.pid, signal.SIGKILL)
    deployment.replica.proc.wait(10)
    deployment.start_replica()
    for table in TABLES:
        assert deployment.describe(table)["last_update_id"] == last[table]  # replayed before ready
    deployment.assert_matches_references(added)

    # compaction against the cluster: fold, publish, trim the stream on its node (XTRIM trims
    # whole stream nodes of 100 entries: push a few hundred one-key entries first)
    many = deployment.rng.standard_normal((250, TABLES["queries"]))
    last["queries"] = deployment.push("queries", KEYS[:250], many, batch_rows=1)
    deployment.wait_applied("queries", last["queries"])
    # compaction trims only below what every live replica reports applied: wait for its heartbeat
    wait_for(
        "the status row to show the last applied id",
        lambda: status_row_ids(deployment)["queries"] == last["queries"],
        timeout=10,
    )
    out_dir = deployment.root / "queries" / "v1"
    argv = ["compact", "queries", "--out", str(out_dir), "--artifact-root", str(deployment.root), *deployment.flags()]
    code, out = run_cli(argv)
    assert code == 0, out
    done = json.loads(out)
    assert done["entries"] == 253 and done["last_id"] == last["queries"] and done["refused"] == 0
    node = redis_py.Redis(port=nodes["queries"])
    assert done["trimmed"] >= 100 and node.xlen(keys.updates_key("queries")) == 253 - done["trimmed"]
    node.close()
    wait_for(
        "queries on the compacted version",
        lambda: deployment.describe("queries")["version"] == done["version"],
        timeout=HINT_WAIT_SECONDS,
    )
    deployment.assert_matches_references(added)


def status_row_ids(deployment: ClusterDeployment) -> dict[str, str]:
    code, out = run_cli(["status", "--json", *deployment.flags()])
    assert code == 0, out
    (row,) = json.loads(out)["replicas"]
    return {table: served["last_update_id"] for table, served in row["tables"].items()}


def test_a_replica_started_before_the_cluster_is_up_serves_degraded_then_follows_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The cluster client's own errors (no reachable node) count as Redis being down: the replica
    serves its configured table, degraded, and once the cluster answers it reconnects and applies
    the update log."""
    workdir = tmp_path_factory.mktemp("cluster-late")
    cluster = RedisClusterNodes(workdir, [free_port() for _ in range(3)])
    deployment = ClusterDeployment(cluster, tmp_path_factory.mktemp("late-artifacts"), workdir)
    path = deployment.save_version("ads", "v0", seed=4)
    deployment.references["ads"] = runtime.load_table(path)
    try:
        replica = start_server(
            workdir,
            ["--table", f"ads={path}", "--artifact-root", str(deployment.root), *deployment.flags()],
            env={**SYNC_ENV, "EMBSERVE_UPDATE_APPLY_INTERVAL_SECONDS": "0.05"},
        )
        deployment.replica = replica
        ready = httpx.get(f"{replica.http}/readyz", timeout=5).json()
        assert ready["ready"] is True and ready["degraded"] is True and "Redis Cluster" in ready["redis_error"]
        assert deployment.describe("ads")["version"] == "ads-v0"
        cluster.start(require_binary("redis-server"), require_binary("redis-cli"))
        wait_for(
            "the replica to reconnect",
            lambda: httpx.get(f"{replica.http}/readyz", timeout=5).json()["degraded"] is False,
            timeout=20,
        )
        last = deployment.push("ads", KEYS[:30], deployment.rng.standard_normal((30, TABLES["ads"])))
        deployment.wait_applied("ads", last)
        deployment.assert_matches_references({})
    finally:
        if deployment.replica is not None:
            deployment.replica.terminate()
        cluster.kill()
