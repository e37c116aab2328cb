"""The registry and replica rows against a real redis-server; the publish and status commands."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from service.cli import main
from service.sync import keys, registry, status
from service.sync.status import ReplicaRow, TableStatus
from tests.conftest import low_rank_table
from tests.service.sync.conftest import RedisServer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    runtime.compress(low_rank_table(300, 16, seed=3), "int8", version="t-v1").save(root / "t" / "v1")
    return root


@pytest.mark.external
async def test_publish_read_and_withdraw(redis_server: RedisServer, root: Path) -> None:
    client = registry.connect(redis_server.url)
    try:
        checksum, version = registry.describe_artifact(root / "t" / "v1")
        assert version == "t-v1" and checksum == registry.manifest_checksum(root / "t" / "v1")
        first = await registry.publish(client, "t", "t/v1", checksum, version)
        again = await registry.publish(client, "t", "t/v1", checksum, version)
        assert (first.generation, again.generation) == (1, 2)
        found = await registry.read_published(client)
        assert found == {"t": again}
        assert await client.hget(keys.version_key("t"), "path") == "t/v1"
        gone = await registry.unpublish(client, "t")
        found = await registry.read_published(client)
        assert found["t"].withdrawn and gone.generation == 3
    finally:
        await client.aclose()


@pytest.mark.external
async def test_replica_rows_expire(redis_server: RedisServer) -> None:
    client = registry.connect(redis_server.url)
    try:
        now = time.time()
        row = ReplicaRow("r1", "ready", now, now - 5, tables={"t": TableStatus("t-v1", "t/v1", "ab", 1)})
        await status.write(client, row, ttl=0.3)
        await status.write(client, ReplicaRow("r2", "degraded", now, now, "ConnectionError: x"), ttl=30)
        rows = await status.read_all(client)
        assert [r.replica for r in rows] == ["r1", "r2"]
        assert rows[0].tables["t"] == TableStatus("t-v1", "t/v1", "ab", 1) and rows[1].redis_error
        await asyncio.sleep(0.5)
        assert [r.replica for r in await status.read_all(client)] == ["r2"]
    finally:
        await client.aclose()


def test_lag_compares_with_the_registry() -> None:
    pub = registry.Published("t", "t/v2", "cc", "t-v2", 0.0, 4)
    assert status.lag(TableStatus("t-v2", "t/v2", "cc", 4), pub) == "in sync"
    assert status.lag(TableStatus("t-v1", "t/v1", "ab", 3), pub) == "behind: published t-v2"
    assert status.lag(TableStatus("t-v1", "t/v1", "ab", 3, state="loading"), pub) == "loading t-v2"
    assert status.lag(TableStatus("t-v1", "t/v1", "ab", 0), None) == "-"
    # serving the published manifest is in sync; a failed rollout of it is not
    assert status.lag(TableStatus("t-v2", "t/v2", "cc", 4, state="failed"), pub) == "behind: published t-v2"
    text = status.format_table(
        [
            ReplicaRow(
                "r1",
                "ready",
                100.0,
                0.0,
                tables={"t": TableStatus("t-v1", "t/v1", "ab", 3, state="failed", error="bad", last_update_id="17-2")},
            )
        ],
        {"t": pub},
        now=102.5,
    )
    line = text.splitlines()[1].split()
    assert line == ["r1", "ready", "t", "t-v1", "failed", "behind:", "published", "t-v2", "17-2", "2.5s", "bad"]


@pytest.mark.external
def test_publish_and_status_commands(redis_server: RedisServer, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--redis-url", redis_server.url]
    assert main(["publish", "t", str(root / "t" / "v1"), *url, "--artifact-root", str(root)]) == 0
    published = json.loads(capsys.readouterr().out)
    assert published["path"] == "t/v1" and published["version"] == "t-v1" and published["generation"] == 1
    # relative to the artifact root, as the admin API takes paths
    assert main(["publish", "t", "t/v1", *url, "--artifact-root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == 2
    # a corrupt artifact is refused before anything is published
    bad = root / "t" / "bad"
    runtime.compress(low_rank_table(300, 16, seed=4), "int8").save(bad)
    codes = next(p for p in bad.glob("*.npy") if p.stat().st_size > 1000)
    codes.write_bytes(codes.read_bytes()[:-7])
    assert main(["publish", "t", str(bad), *url, "--artifact-root", str(root)]) == 2
    assert "sha256" in capsys.readouterr().err
    # outside the artifact root: refused
    assert main(["publish", "t", str(root.parent), *url, "--artifact-root", str(root)]) == 2
    assert "outside the artifact root" in capsys.readouterr().err
    other = ReplicaRow("r9", "ready", time.time(), 0.0, tables={"t": TableStatus("old", "t/v0", "x", 1)})

    async def write_other() -> None:
        client = registry.connect(redis_server.url)
        await status.write(client, other, ttl=30)
        await client.aclose()

    asyncio.run(write_other())
    assert main(["status", *url]) == 0
    out = capsys.readouterr().out
    assert "r9" in out and "behind: published t-v1" in out
    assert main(["status", *url, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["replicas"][0]["lag"] == {"t": "behind: published t-v1"}
    assert payload["published"]["t"]["generation"] == 2
    assert main(["status"]) == 2
    assert "EMBSERVE_REDIS_URL" in capsys.readouterr().err


@pytest.mark.external
def test_registry_entries_written_by_hand_are_skipped_and_the_good_ones_read(
    redis_server: RedisServer, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by an adversarial probe: one key of the wrong type stopped the registry's sync for
    # every table, and `embserve status` failed; a replica row of the wrong shape crashed status
    url = ["--redis-url", redis_server.url]
    assert main(["publish", "t", "t/v1", *url, "--artifact-root", str(root)]) == 0
    capsys.readouterr()
    good = {"path": "t/v1", "checksum": "ab", "generation": "1", "published_at": "1.0"}

    async def write_by_hand() -> dict[str, registry.Published]:
        client = registry.connect(redis_server.url)
        try:
            await client.sadd(keys.TABLES, "bogus", "a/b", "nan", "gen")
            await client.rpush(keys.version_key("bogus"), "a")
            await client.hset(keys.version_key("a/b"), mapping=good)
            await client.hset(keys.version_key("nan"), mapping={**good, "published_at": "nan"})
            await client.hset(keys.version_key("gen"), mapping={**good, "generation": "abc"})
            hand_rows = {
                "r7": {"state": "ready", "heartbeat": repr(time.time()), "table:t": '{"last_update_id": 12345}'},
                "r8": {"state": "ready", "heartbeat": "nan", "table:t": "[1, 2]"},
            }
            for replica, fields in hand_rows.items():
                await client.hset(keys.replica_key(replica), mapping=fields)
                await client.zadd(keys.REPLICAS, {replica: time.time()})
            return await registry.read_published(client)
        finally:
            await client.aclose()

    assert list(asyncio.run(write_by_hand())) == ["t"]
    assert main(["status", *url]) == 0
    lines = capsys.readouterr().out.splitlines()
    unreadable = [[replica, "ready", "t", "-", "unreadable"] for replica in ("r7", "r8")]
    assert [line.split()[:5] for line in lines[1:]] == unreadable
    # r8's heartbeat is NaN: no age, where it showed ~56 years in seconds
    assert lines[2].split()[-1] == "-" and lines[1].split()[-1].endswith("s")
    # a generation that is not an integer: publish fails and changes nothing (the path was written)
    runtime.compress(low_rank_table(300, 16, seed=5), "int8", version="t-v2").save(root / "t" / "v2")

    async def version_hash(change: dict[str, str]) -> dict[str, str]:
        client = registry.connect(redis_server.url)
        try:
            if change:
                await client.hset(keys.version_key("t"), mapping=change)
            return dict(await client.hgetall(keys.version_key("t")))
        finally:
            await client.aclose()

    before = asyncio.run(version_hash({"generation": "abc"}))
    assert main(["publish", "t", "t/v2", *url, "--artifact-root", str(root)]) == 2
    assert "generation 'abc'" in capsys.readouterr().err
    assert asyncio.run(version_hash({})) == before
    asyncio.run(version_hash({"generation": "4"}))
    assert main(["publish", "t", "t/v2", *url, "--artifact-root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == 5


def test_status_reports_an_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.service.live import free_port

    assert main(["status", "--redis-url", f"redis://127.0.0.1:{free_port()}"]) == 1
    assert "failed" in capsys.readouterr().err


@pytest.mark.external
def test_push_refuses_what_every_replica_would_refuse(
    redis_server: RedisServer, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the published version at hand, push checks its entries against the table (dense,
    300 × 16 here) instead of leaving every replica to dead-letter them."""
    import numpy as np

    url = ["--redis-url", redis_server.url]
    ids, wide, rows = tmp_path / "ids.npy", tmp_path / "wide.npy", tmp_path / "rows.npy"
    np.save(ids, np.array([1, 2], np.int64))
    np.save(wide, np.ones((2, 32), np.float32))
    np.save(rows, np.ones((2, 16), np.float32))
    # nothing published, served or pushed yet: a misspelt name, unless forced (found by a review:
    # entries to a table no one serves were pushed with exit 0 and never refused by anyone)
    assert main(["push", "t", *url, "--keys", str(ids), "--rows", str(wide)]) == 2
    assert "table 't' is not published, no live replica serves it" in capsys.readouterr().err
    assert not redis_server.client().exists(keys.updates_key("t"))
    # forced: pushed unchecked, with a note; once its log exists, later pushes need no --force
    assert main(["push", "t", *url, "--keys", str(ids), "--rows", str(wide), "--force"]) == 0
    assert "no published version" in capsys.readouterr().err
    assert main(["push", "t", *url, "--keys", str(ids), "--rows", str(wide)]) == 0
    assert "no published version" in capsys.readouterr().err
    assert main(["publish", "t", "t/v1", *url, "--artifact-root", str(root)]) == 0
    capsys.readouterr()
    length = redis_server.client().xlen(keys.updates_key("t"))
    refused = [
        (["--keys", str(ids), "--rows", str(wide)], "--rows have dimension 32; table 't' has dimension 16"),
        (["--delete", str(ids)], "table 't' is dense (ids 0..299): its rows cannot be deleted"),
    ]
    np.save(tmp_path / "far.npy", np.array([5, 300], np.int64))
    refused.append((["--keys", str(tmp_path / "far.npy"), "--rows", str(rows)], "--keys[1] = 300 is out of range"))
    for argv, message in refused:
        assert main(["push", "t", *url, "--artifact-root", str(root), *argv]) == 2
        assert message in capsys.readouterr().err
    assert redis_server.client().xlen(keys.updates_key("t")) == length  # nothing of them was pushed
    assert main(["push", "t", *url, "--artifact-root", str(root), "--keys", str(ids), "--rows", str(rows)]) == 0
    assert "note" not in capsys.readouterr().err
    assert redis_server.client().xlen(keys.updates_key("t")) == length + 1
    # a published path written by hand that leaves the root is not read: pushed unchecked, with a note
    outside = root.parent / "outside"
    runtime.compress(low_rank_table(50, 3, seed=6), "int8").save(outside)
    redis_server.client().hset(keys.version_key("t"), "path", "../outside")
    assert main(["push", "t", *url, "--artifact-root", str(root), "--keys", str(ids), "--rows", str(rows)]) == 0
    assert "the published path '../outside' is outside the artifact root" in capsys.readouterr().err
    # found by a probe: a uint64 key past int64 was pushed as key -1 (and compacted into the
    # table), and a table name publish refuses made a stream no replica reads
    length = redis_server.client().xlen(keys.updates_key("t"))
    np.save(tmp_path / "u64.npy", np.array([2**64 - 1, 6], np.uint64))
    assert main(["push", "t", *url, "--keys", str(tmp_path / "u64.npy"), "--rows", str(rows)]) == 2
    assert "keys[0] = 18446744073709551615 is out of the int64 range" in capsys.readouterr().err
    assert main(["push", "a/b", *url, "--keys", str(ids), "--rows", str(rows)]) == 2
    assert "'a/b'" in capsys.readouterr().err
    assert redis_server.client().xlen(keys.updates_key("t")) == length
    assert not redis_server.client().exists(keys.updates_key("a/b"))


@pytest.mark.external
def test_a_push_redis_refuses_in_part_says_which_entries_were_appended(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the pipeline is no transaction: entries before the one Redis refused were appended, and
    # push said only "failed" (a retry pushed them twice)
    client = redis_server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 1_000_000)
    ids, rows = tmp_path / "ids.npy", tmp_path / "rows.npy"
    np.save(ids, np.arange(8000, dtype=np.int64))
    np.save(rows, np.ones((8000, 64), np.float32))  # 8 entries of 1,000 rows, 256 kB each
    argv = [
        "push",
        "t",
        "--redis-url",
        redis_server.url,
        "--keys",
        str(ids),
        "--rows",
        str(rows),
        "--batch-rows",
        "1000",
        "--force",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    appended = client.xlen(keys.updates_key("t"))
    client.close()
    assert 0 < appended < 8, err
    assert f"Redis refused {8 - appended} of 8 entries of table 't'" in err and "maxmemory" in err, err
    assert f"the {appended} other entries were appended" in err and "positions 0..999" not in err


@pytest.mark.external
async def test_a_pass_over_many_unloadable_publishes_writes_the_status_row_a_few_times(
    redis_server: RedisServer, root: Path
) -> None:
    # found by an adversarial probe: every refused rollout rewrote the whole replica row, one
    # field a table, so 3,000 entries naming missing artifacts kept a replica unready for 86 s
    from service.core import EmbeddingService
    from service.settings import Settings
    from service.sync.replica import ReplicaSync

    client = registry.connect(redis_server.url)
    sync = ReplicaSync(
        Settings(demo=False, warmup=False, redis_url=redis_server.url, artifact_root=root, replica_id="r1"),
        EmbeddingService(Settings(demo=False, warmup=False, artifact_root=root)),
    )
    try:
        for i in range(400):
            await registry.publish(client, f"gone{i}", f"gone/{i}", "ab", "v")
        checksum, version = registry.describe_artifact(root / "t" / "v1")
        await registry.publish(client, "t", "t/v1", checksum, version)
        await client.config_resetstat()
        assert await sync.load_published() == {"t"}
        writes = (await client.info("commandstats"))["cmdstat_hset"]["calls"]
        assert writes <= 3, f"{writes} writes of the status row for one pass"
        # the row written at the end of the pass holds every table's outcome
        (row,) = await status.read_all(client)
        assert len(row.tables) == 401 and row.tables["t"].state == "serving"
        assert row.tables["gone7"].state == "failed" and "gone/7" in row.tables["gone7"].error
    finally:
        await sync.stop()
        await client.aclose()
