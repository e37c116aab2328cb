"""The update log end to end: one real redis-server (AOF on, as deployed), two real `embserve
serve` replicas of one keyed table, updates pushed through `service.sync.updates.push`.

The tests run in order on one pair of replicas; every test compares both replicas with a local
reference table that applied the same updates, so nothing lost and nothing applied twice shows
as a difference in some row."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import redis as redis_py

import runtime
from runtime.table import Table
from service.cli import main
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.sync import keys, updates
from tests.conftest import low_rank_table
from tests.service.live import LiveServer, start_server
from tests.service.sync.conftest import RedisServer, start_redis
from tests.service.sync.test_rollout import SYNC_ENV, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.external]
ROWS, DIM = 2000, 16
KEYS = np.arange(ROWS, dtype=np.int64) * 7 + 3


@dataclass
class Replicas:
    redis: RedisServer
    root: Path
    workdir: Path
    reference: Table
    servers: dict[str, LiveServer] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(5))
    added: list[int] = field(default_factory=list)

    def start(self, replica: str, **extra_env: str) -> LiveServer:
        args = ["--table", f"items={self.root / 'items' / 'v0'}", "--artifact-root", str(self.root)]
        args += ["--redis-url", self.redis.url, "--replica-id", replica]
        env = {**SYNC_ENV, "EMBSERVE_UPDATE_APPLY_INTERVAL_SECONDS": "0.05", **extra_env}
        self.servers[replica] = start_server(self.workdir, args, env=env)
        return self.servers[replica]

    def client(self) -> Any:  # redis-py types every reply as a union; these tests know the shapes
        return redis_py.Redis(port=self.redis.port)

    def push(self, entry_keys: np.ndarray, rows: np.ndarray | None, batch_rows: int = 1000) -> str:
        """Push to Redis and apply to the local reference the same way a replica does."""
        client = self.client()
        try:
            ids = updates.push(client, "items", entry_keys, rows, batch_rows=batch_rows)
        finally:
            client.close()
        for start in range(0, entry_keys.size, batch_rows):
            part = slice(start, start + batch_rows)
            if rows is None:
                self.reference.delete(entry_keys[part])
            else:
                self.reference.upsert(entry_keys[part], rows[part].astype(np.float32))
        return ids[-1]

    def every_key(self) -> np.ndarray:
        return np.concatenate([KEYS, np.array(self.added, np.int64)])

    def lookup(self, replica: str, entry_keys: np.ndarray) -> np.ndarray:
        r = httpx.post(
            f"{self.servers[replica].http}/v1/tables/items/lookup", json={"ids": entry_keys.tolist()}, timeout=10
        )
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["embeddings"], dtype=np.float32)

    def describe(self, replica: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.servers[replica].http}/v1/tables/items", timeout=5).json())

    def wait_applied(self, last_id: str, replicas: tuple[str, ...] = ("a", "b")) -> None:
        target = updates.stream_order(last_id)
        for replica in replicas:

            def caught_up(r: str = replica) -> bool:
                # a replica's position may be an entry it refused, such as an id with no table
                # sequence: compared as Redis orders ids, not as sequences
                return updates.stream_order(self.describe(r)["last_update_id"] or "0-0") >= target

            wait_for(f"replica {replica} to apply {last_id}", caught_up)

    def assert_both_match_reference(self) -> None:
        every = self.every_key()
        want = self.reference.lookup(every)
        for replica in self.servers:
            np.testing.assert_array_equal(self.lookup(replica, every), want, err_msg=f"replica {replica}")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("update-artifacts")
    runtime.compress(low_rank_table(ROWS, DIM, seed=3), "int8", keys=KEYS, missing="zeros", version="v0").save(
        root / "items" / "v0"
    )
    server = start_redis(tmp_path_factory.mktemp("redis-aof"), appendonly=True)
    found = Replicas(server, root, tmp_path_factory.mktemp("replicas"), runtime.load_table(root / "items" / "v0"))
    try:
        found.start("a")
        found.start("b")
        yield found
    finally:
        for live in found.servers.values():
            live.terminate()
        server.kill()


def test_pushed_upserts_and_deletes_reach_both_replicas(replicas: Replicas) -> None:
    new_keys = np.arange(50, dtype=np.int64) * -11 - 1  # keys the table does not hold yet
    replicas.added += new_keys.tolist()
    changed = np.concatenate([KEYS[:50], new_keys])
    replicas.push(changed, replicas.rng.standard_normal((100, DIM)), batch_rows=30)
    last = replicas.push(KEYS[100:110], None)
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()
    assert not replicas.lookup("a", KEYS[100:110]).any()  # deleted: zero rows under missing="zeros"
    described = replicas.describe("b")
    assert described["last_update_id"] == last and described["delta_rows"] > 0
    with grpc.insecure_channel(replicas.servers["b"].grpc) as channel:
        info = pb_grpc.EmbeddingServiceStub(channel).DescribeTable(pb.DescribeTableRequest(table="items"), timeout=5)
    assert info.last_update_id == last and info.delta_rows == described["delta_rows"]
    metrics = httpx.get(f"{replicas.servers['a'].http}/metrics", timeout=5).text
    assert 'embserve_updates_applied_total{table="items"} 110.0' in metrics
    assert 'embserve_update_lag_seconds{table="items"}' in metrics


def test_bad_entries_are_dead_lettered_and_the_good_ones_around_them_apply(replicas: Replicas) -> None:
    before = replicas.push(KEYS[200:210], replicas.rng.standard_normal((10, DIM)))
    client = replicas.client()
    stream = keys.updates_key("items")
    bad = [
        updates.encode_entry("upsert", KEYS[:2], np.ones((2, DIM + 1), np.float32)),  # wrong dimension
        updates.encode_entry("upsert", KEYS[:2], np.full((2, DIM), np.nan, np.float32)),  # NaN
        {**updates.encode_entry("upsert", KEYS[:2], np.ones((2, DIM), np.float32)), "keys": b"\x01\x02\x03"},
        updates.encode_entry("delete", np.array([123456789], np.int64), None),  # not in the table
    ]
    bad_ids = [client.xadd(stream, fields).decode() for fields in bad]
    # a key twice in one entry: refused by a replica that reads it alone or beside others
    bad_ids.append(client.xadd(stream, updates.encode_entry("upsert", KEYS[[3, 3]], np.ones((2, DIM)))).decode())
    # an id with no int64 sequence (2**20 entries in one millisecond) stopped the log for good
    no_sequence = f"{int(time.time() * 1000) + 1}-{1 << updates.SEQ_BITS}"
    bad_ids.append(
        client.xadd(stream, updates.encode_entry("upsert", KEYS[:1], np.ones((1, DIM))), id=no_sequence).decode()
    )
    client.close()
    time.sleep(0.01)  # the next push's id starts a later millisecond
    after = replicas.push(KEYS[210:220], replicas.rng.standard_normal((10, DIM)))
    replicas.wait_applied(after)
    replicas.assert_both_match_reference()
    assert before < bad_ids[0]
    client = replicas.client()
    dead = client.xrange(keys.deadletter_key("items"))
    client.close()
    # each replica dead-letters what it refused, with the original id and the reason
    reasons = {(f[b"id"].decode(), f[b"reason"].decode()) for _, f in dead}
    assert {i for i, _ in reasons} == set(bad_ids) and len(dead) == 2 * len(bad_ids)
    by_id = dict(reasons)
    assert "dim must be the table's 16" in by_id[bad_ids[0]]
    assert "NaN" in by_id[bad_ids[1]] or "finite" in by_id[bad_ids[1]]
    assert "int64" in by_id[bad_ids[2]] and "123456789" in by_id[bad_ids[3]]
    assert "keys repeat" in by_id[bad_ids[4]] and "has no table sequence" in by_id[bad_ids[5]]
    metrics = httpx.get(f"{replicas.servers['b'].http}/metrics", timeout=5).text
    assert 'embserve_updates_refused_total{table="items"} 6.0' in metrics
    # a dead-letter copy Redis cannot write (its key of the wrong type) loses the copy only: it
    # marked the replica degraded and its log said "dead-lettered"
    client = replicas.client()
    client.delete(keys.deadletter_key("items"))
    client.set(keys.deadletter_key("items"), "not a stream")
    client.xadd(stream, updates.encode_entry("delete", np.array([987654321], np.int64), None))
    client.close()
    after = replicas.push(KEYS[220:222], replicas.rng.standard_normal((2, DIM)))
    replicas.wait_applied(after)
    replicas.assert_both_match_reference()
    for live in replicas.servers.values():
        assert httpx.get(f"{live.http}/readyz", timeout=5).json()["degraded"] is False
        assert "its dead-letter copy could not be written: WRONGTYPE" in live.log()
    client = replicas.client()
    client.delete(keys.deadletter_key("items"))
    client.close()


def test_a_replica_killed_mid_stream_replays_to_the_same_rows(replicas: Replicas) -> None:
    rows = replicas.rng.standard_normal((20_000, DIM)).astype(np.float32)
    # 20,000 row updates over the table's keys (each key several times), 25 rows an entry
    targets = KEYS[replicas.rng.integers(0, ROWS, 20_000)]
    last = ""
    for start in range(0, 20_000, 2_000):
        part = slice(start, start + 2_000)
        block_keys, block_rows = targets[part], rows[part]
        for lo in range(0, 2_000, 25):
            sub = slice(lo, lo + 25)
            uniq, first = np.unique(block_keys[sub], return_index=True)
            last = replicas.push(uniq, block_rows[sub][first], batch_rows=25)
        if start == 8_000:
            # SIGKILL in the middle of the stream: nothing of its in-memory delta survives
            os.kill(replicas.servers["b"].proc.pid, signal.SIGKILL)
            replicas.servers["b"].proc.wait(10)
    # loads v0 (sequence 0) and replays the stream (800 entries) before it is ready, for at most
    # the catch-up time: its first batch alone takes longer, so its follower replays the rest.
    # Found by a review: the replay was cut by cancelling a batch its thread went on to apply,
    # the batch's position was lost, and the follower applied it twice
    replicas.start("b", EMBSERVE_CATCH_UP_SECONDS="0.001")
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()
    assert "replaying the update log took over" in replicas.servers["b"].log()
    # b read the stream in whole batches, from its start: once each, its delta takes exactly the
    # slots of those batches applied once each
    client = replicas.client()
    stream = [(sid.decode(), fields) for sid, fields in client.xrange(keys.updates_key("items"))]
    client.close()
    fresh = runtime.load_table(replicas.root / "items" / "v0")
    for start in range(0, len(stream), updates.READ_COUNT):
        updates.apply_batch(fresh, stream[start : start + updates.READ_COUNT])
    assert replicas.describe("b")["delta_slots"] == fresh.delta_slots


def test_redis_restarted_mid_stream_loses_nothing(replicas: Replicas) -> None:
    replicas.push(KEYS[300:400], replicas.rng.standard_normal((100, DIM)), batch_rows=10)
    replicas.redis.kill()  # SIGKILL: only what AOF (fsync always) wrote survives
    time.sleep(0.5)
    replicas.redis.start()
    last = replicas.push(KEYS[400:500], replicas.rng.standard_normal((100, DIM)), batch_rows=10)
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()
    for replica in replicas.servers:

        def reconnected(r: str = replica) -> bool:
            return not replicas_ready(replicas, r)["degraded"]

        wait_for("redis reconnected", reconnected)


def replicas_ready(replicas: Replicas, replica: str) -> dict[str, Any]:
    r = httpx.get(f"{replicas.servers[replica].http}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    body = dict(r.json())
    return dict(body.get("sync", body))


def test_push_command_appends_entries(replicas: Replicas, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "k.npy", KEYS[600:605])
    rows = replicas.rng.standard_normal((5, DIM)).astype(np.float32)
    np.save(tmp_path / "r.npy", rows)
    url = replicas.redis.url
    code = main(
        ["push", "items", "--redis-url", url, "--keys", str(tmp_path / "k.npy"), "--rows", str(tmp_path / "r.npy")]
    )
    assert code == 0
    out = capsys.readouterr().out
    replicas.reference.upsert(KEYS[600:605], rows)
    last = out.split('"last_id": "')[1].split('"')[0]
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()
    assert main(["push", "items", "--redis-url", url, "--keys", str(tmp_path / "k.npy")]) == 2


def pod_counter(live: LiveServer, name: str) -> float:
    text = httpx.get(f"{live.http}/metrics", timeout=5).text
    prefix = f'{name}{{table="items"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_pod_of_two_workers_counts_and_dead_letters_each_entry_once(replicas: Replicas) -> None:
    # found by a review: every worker applies every entry, and each counted it and wrote its own
    # dead-letter copy: a pod of N workers reported N times the updates and refusals
    args = ["--table", f"items={replicas.root / 'items' / 'v0'}", "--artifact-root", str(replicas.root)]
    args += ["--redis-url", replicas.redis.url, "--replica-id", "pod", "--workers", "2"]
    env = {**SYNC_ENV, "EMBSERVE_UPDATE_APPLY_INTERVAL_SECONDS": "0.05"}
    pod = start_server(replicas.workdir, args, env=env)
    client = replicas.client()
    try:
        replicas.servers["pod"] = pod  # waited for and compared like the others
        replicas.wait_applied(replicas.describe("a")["last_update_id"], ("pod",))
        time.sleep(1.0)  # both workers: every lookup below may land on either
        applied, refused = (
            pod_counter(pod, "embserve_updates_applied_total"),
            pod_counter(pod, "embserve_updates_refused_total"),
        )
        dead = client.xlen(keys.deadletter_key("items"))
        client.xadd(
            keys.updates_key("items"), {**updates.encode_entry("upsert", KEYS[:1], np.ones((1, 3))), "dim": b"3"}
        )
        last = replicas.push(KEYS[620:625], replicas.rng.standard_normal((5, DIM)))
        replicas.wait_applied(last, ("a", "b", "pod"))
        wait_for("both workers", lambda: pod_counter(pod, "embserve_updates_applied_total") >= applied + 5)
        time.sleep(1.0)  # the second worker's counts, if it counted, would show by now
        assert pod_counter(pod, "embserve_updates_applied_total") == applied + 5
        assert pod_counter(pod, "embserve_updates_refused_total") == refused + 1
        assert client.xlen(keys.deadletter_key("items")) == dead + 3  # a, b and the pod, once each
        for _ in range(8):  # whichever worker answers, the same rows
            replicas.assert_both_match_reference()
    finally:
        client.close()
        replicas.servers.pop("pod", None)
        pod.terminate()


def test_admin_updates_leave_the_sequence_to_the_log(replicas: Replicas) -> None:
    # found by a review: an admin upsert's sequence (the README's example gives 42) moved the
    # table's sequence, a replica read the log on from there after its next swap, and applied
    # (or dead-lettered) entries again; with Redis the log alone moves it
    from tests.service.conftest import ADMIN_TOKEN

    http = replicas.servers["a"].http
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    before = replicas.describe("a")["sequence"]
    body = {"keys": [int(KEYS[0])], "rows": [[0.5] * DIM], "sequence": 42}
    r = httpx.post(f"{http}/v1/tables/items/upsert", json=body, headers=auth, timeout=10)
    assert r.status_code == 400 and "update log position" in r.json()["error"], r.text
    row = replicas.lookup("a", KEYS[:1])
    del body["sequence"]
    r = httpx.post(f"{http}/v1/tables/items/upsert", json=body, headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["sequence"] == before, r.text
    assert replicas.describe("a")["sequence"] == before
    # the next entry of the log puts the key back where the reference has it, on both replicas
    last = replicas.push(KEYS[:1], row)
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()


def test_compact_folds_the_log_publishes_and_trims(replicas: Replicas, capsys: pytest.CaptureFixture[str]) -> None:
    from service.sync import registry

    checksum, label = registry.describe_artifact(replicas.root / "items" / "v0")

    async def publish_v0() -> None:
        client = registry.connect(replicas.redis.url)
        try:
            await registry.publish(client, "items", "items/v0", checksum, label)
        finally:
            await client.aclose()

    asyncio.run(publish_v0())  # the replicas already serve exactly v0: they keep their deltas
    client = replicas.client()
    length = client.xlen(keys.updates_key("items"))
    client.close()
    url, root = replicas.redis.url, str(replicas.root)
    assert main(["compact", "items", "--redis-url", url, "--artifact-root", root, "--out", "items/v1"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (
        done["path"] == "items/v1" and done["entries"] == length and done["refused"] == 8
    )  # the seven bad entries, and the two-worker pod's
    assert runtime.load_table(replicas.root / "items" / "v1").sequence == updates.id_to_sequence(done["last_id"])
    for replica in replicas.servers:

        def on_v1(r: str = replica) -> bool:
            return bool(replicas.describe(r)["version"] == done["version"])

        wait_for(f"replica {replica} on the compacted version", on_v1)
    replicas.assert_both_match_reference()
    client = replicas.client()
    # nothing a replica still needs is trimmed (the status rows compaction read may be a
    # heartbeat older than describe, so what is left may start earlier, never later)
    oldest_needed = min(updates.id_to_sequence(replicas.describe(r)["last_update_id"]) for r in replicas.servers)
    left = client.xrange(keys.updates_key("items"))
    assert done["trimmed"] > 0 and done["trimmed"] == length - len(left)
    assert updates.id_to_sequence(left[0][0]) <= oldest_needed
    client.close()
    # updates after the compaction still apply, and a restarted replica (published v1 plus the
    # rest of the log) ends on the same rows
    last = replicas.push(KEYS[700:720], replicas.rng.standard_normal((20, DIM)))
    replicas.servers["a"].terminate()
    replicas.start("a")
    replicas.wait_applied(last)
    replicas.assert_both_match_reference()
    assert main(["compact", "items", "--redis-url", url, "--artifact-root", root, "--out", "items/v1"]) == 2
    capsys.readouterr()
    # a replica row whose position cannot be read (written by hand): compaction publishes and
    # trims nothing; it published, then failed with exit status 2 and left the log untrimmed
    client = replicas.client()
    ghost = {"state": "ready", "heartbeat": repr(time.time()), "table:items": '{"last_update_id": "garbage"}'}
    client.hset(keys.replica_key("ghost"), mapping=ghost)
    client.zadd(keys.REPLICAS, {"ghost": time.time()})
    client.close()
    assert main(["compact", "items", "--redis-url", url, "--artifact-root", root, "--out", "items/v2"]) == 0
    assert json.loads(capsys.readouterr().out)["trimmed"] == 0


def test_a_compaction_overtaken_by_a_publish_publishes_and_trims_nothing(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by an adversarial probe: a publish (or a second compaction) that came while a
    # compaction ran was undone by it, and its trim dropped entries the version left needed
    from service.sync import compaction

    keys_ = np.arange(50, dtype=np.int64)
    for version in ("v1", "v2"):
        runtime.compress(low_rank_table(50, 4, seed=1), "int8", keys=keys_, version=version).save(
            tmp_path / "t" / version
        )
    url, root = redis_server.url, str(tmp_path)
    assert main(["publish", "t", "t/v1", "--redis-url", url, "--artifact-root", root]) == 0
    client = redis_server.client()
    for start in range(0, 6, 2):
        updates.push(client, "t", keys_[start : start + 2], np.ones((2, 4), np.float32))
    real_load = compaction.load_table

    def load_then_someone_publishes(path: Path) -> Table:
        table = real_load(path)
        assert main(["publish", "t", "t/v2", "--redis-url", url, "--artifact-root", root]) == 0
        return table

    monkeypatch.setattr(compaction, "load_table", load_then_someone_publishes)
    capsys.readouterr()
    assert main(["compact", "t", "--redis-url", url, "--artifact-root", root, "--out", "t/v3"]) == 2
    err = capsys.readouterr().err
    assert "changed meanwhile (generation 1 was read, 2 is published now)" in err and "nothing published" in err
    assert client.hget(keys.version_key("t"), "path") == "t/v2" and client.xlen(keys.updates_key("t")) == 3
    client.close()


def test_a_short_log_of_small_entries_is_trimmed_exactly(redis_server: RedisServer) -> None:
    from service.sync.compaction import trim_log_below

    client = redis_server.client()
    try:
        ids = [client.xadd(keys.updates_key("t"), {"op": "delete", "n": str(i)}) for i in range(5)]
        keep_from = updates.id_to_sequence(ids[3])
        assert trim_log_below(client, "t", keep_from) == 3
        left = client.xrange(keys.updates_key("t"))
        assert left is not None and [entry_id for entry_id, _ in left] == ids[3:]
    finally:
        client.close()


def gaps_counted(live: LiveServer) -> float:
    text = httpx.get(f"{live.http}/metrics", timeout=5).text
    line = next(
        (line for line in text.splitlines() if line.startswith('embserve_update_gaps_total{table="items"}')), ""
    )
    return float(line.split()[-1]) if line else 0.0


def status_row_errors(url: str, table: str = "items") -> dict[str, str]:
    """replica id -> its row's error for `table` (the ERROR column of `embserve status`)."""
    from service.sync import registry, status

    async def read() -> list[status.ReplicaRow]:
        client = registry.connect(url)
        try:
            return await status.read_all(client)
        finally:
            await client.aclose()

    return {row.replica: row.tables[table].error for row in asyncio.run(read()) if table in row.tables}


def test_updates_a_replica_will_never_apply_are_reported(replicas: Replicas) -> None:
    def status_error(replica: str) -> str:
        return status_row_errors(replicas.redis.url).get(replica, "")

    # found by an adversarial probe: entries trimmed while a replica lagged, or a stream recreated
    # below its position, were skipped without a trace, every replica still "in sync"
    a, b = replicas.servers["a"], replicas.servers["b"]
    assert gaps_counted(a) == gaps_counted(b) == 0 and "updates lost" not in a.log() + b.log()
    stream = keys.updates_key("items")
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        # two entries: b's pending XREAD may still take the first while it is stopped, never both
        last = replicas.push(KEYS[300:302], replicas.rng.standard_normal((2, DIM)), batch_rows=1)
        replicas.wait_applied(last, ("a",))
        client = replicas.client()
        client.xtrim(stream, maxlen=0, approximate=False)
        client.close()
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    # generous: a replica stopped for a while may first wait out a Redis retry back-off
    try:
        wait_for("replica b to report the trimmed entries", lambda: gaps_counted(b) == 1, timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counted {gaps_counted(b)}; log: {b.log()[-2500:]}") from None
    assert "were trimmed or deleted before this replica" in b.log() and gaps_counted(a) == 0
    # and `embserve status` shows it on b's row (found by a review: every row said "in sync")
    wait_for("b's status row to name the lost updates", lambda: status_error("b").startswith("updates lost: "))
    assert status_error("a") == ""
    client = replicas.client()
    with client.pipeline(transaction=True) as both:  # one step: no check sees the stream missing
        both.delete(stream)
        both.xadd(stream, updates.encode_entry("delete", KEYS[:1], None), id="1000-0")
        both.execute()
    client.close()
    wait_for("replica a to report the recreated stream", lambda: gaps_counted(a) == 1, timeout=120)
    wait_for("replica b to report the recreated stream", lambda: gaps_counted(b) == 2, timeout=120)
    assert "it was recreated" in a.log()
    # a stream deleted (DEL, FLUSHALL, Redis restarted without its data) and recreated by later
    # pushes, whose ids are above every position: the entries a replica had not read were lost
    # without a trace (found by an adversarial probe)
    counted = {name: gaps_counted(live) for name, live in replicas.servers.items()}
    client = replicas.client()
    client.delete(stream)
    client.close()
    for name, live in replicas.servers.items():

        def reported(live: LiveServer = live, name: str = name) -> bool:
            return gaps_counted(live) == counted[name] + 1

        wait_for(f"replica {name} to report the deleted stream", reported, timeout=120)
        assert "the update stream is gone" in live.log()
    last = replicas.push(KEYS[310:312], replicas.rng.standard_normal((2, DIM)), batch_rows=1)
    replicas.wait_applied(last)  # pushes after it apply as before
    np.testing.assert_allclose(replicas.lookup("a", KEYS[310:312]), replicas.lookup("b", KEYS[310:312]))
    assert {name: gaps_counted(live) for name, live in replicas.servers.items()} == {
        name: counted[name] + 1 for name in counted
    }


def test_a_full_delta_stalls_every_replica_alike_shows_in_status_and_compaction_ends_it(
    replicas: Replicas, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: compaction, the way out of a full delta, failed with DeltaFull itself,
    # so a stalled table stayed stalled; and `embserve status` said nothing of the stall
    table_keys = np.arange(40, dtype=np.int64) * 3
    x = low_rank_table(40, DIM, seed=8)
    root = replicas.root
    runtime.compress(x, "int8", keys=table_keys, delta_capacity=30, version="s0").save(root / "small" / "v0")
    url = replicas.redis.url
    assert main(["publish", "small", "small/v0", "--redis-url", url, "--artifact-root", str(root)]) == 0
    capsys.readouterr()
    args = ["--table", f"small={root / 'small' / 'v0'}", "--artifact-root", str(root), "--redis-url", url]
    servers = [start_server(replicas.workdir, [*args, "--replica-id", name], env=SYNC_ENV) for name in ("s1", "s2")]
    reference = runtime.load_table(root / "small" / "v0")
    reference.delta_capacity = 1000
    rows = np.random.default_rng(9).standard_normal((40, DIM)).astype(np.float32)
    client = replicas.client()
    try:
        ids = updates.push(client, "small", table_keys, rows, batch_rows=10)  # 4 entries of 10: 40 > 30
        reference.upsert(table_keys, rows)

        def rows_of(live: LiveServer) -> np.ndarray:
            r = httpx.post(f"{live.http}/v1/tables/small/lookup", json={"ids": table_keys.tolist()}, timeout=10)
            return np.asarray(r.json()["embeddings"], np.float32)

        def errors() -> dict[str, str]:
            found = status_row_errors(url, "small")
            return {name: found.get(name, "?") for name in ("s1", "s2")}

        wait_for("both to stall", lambda: all(e.startswith("updates stalled: ") for e in errors().values()))
        # the same three entries applied on each, whichever way their reads batched them
        for live in servers:
            assert httpx.get(f"{live.http}/v1/tables/small", timeout=5).json()["last_update_id"] == ids[2]
        np.testing.assert_array_equal(rows_of(servers[0]), rows_of(servers[1]))
        out = ["--redis-url", url, "--artifact-root", str(root), "--out", "small/v1"]
        assert main(["compact", "small", *out]) == 0
        done = json.loads(capsys.readouterr().out)
        assert done["entries"] == 4 and done["refused"] == 0
        want = reference.lookup(table_keys)
        wait_for("the compacted rows", lambda: all(np.array_equal(rows_of(live), want) for live in servers))
        wait_for("the stall to leave the status rows", lambda: errors() == {"s1": "", "s2": ""})
    finally:
        client.close()
        for live in servers:
            live.terminate()
