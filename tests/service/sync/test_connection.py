"""The one place Redis clients are made: the cluster flag picks redis-py's cluster clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from runtime.errors import InvalidRequest
from service.cli import main
from service.settings import Settings
from service.sync import connection, registry, updates


def test_the_cluster_flag_picks_the_cluster_client() -> None:
    async def classes() -> list[type]:
        made = [
            registry.connect("redis://127.0.0.1:1/0", cluster=True),
            updates.connect("redis://127.0.0.1:1", cluster=True),
            registry.connect("redis://127.0.0.1:1/0"),
            updates.connect("redis://127.0.0.1:1/3"),
        ]
        for client in made:
            await client.aclose()
        return [type(client) for client in made]

    cluster_reg, cluster_upd, node_reg, node_upd = asyncio.run(classes())
    assert cluster_reg is redis.asyncio.cluster.RedisCluster and cluster_upd is redis.asyncio.cluster.RedisCluster
    assert node_reg is redis.asyncio.Redis and node_upd is redis.asyncio.Redis
    assert type(connection.sync_client("redis://127.0.0.1:1/0", cluster=False)) is redis.Redis


def test_the_cluster_clients_decode_as_asked() -> None:
    async def options() -> tuple[bool, bool]:
        text, raw = registry.connect("redis://127.0.0.1:1", True), updates.connect("redis://127.0.0.1:1", True)
        try:
            return text.get_connection_kwargs()["decode_responses"], raw.get_connection_kwargs()["decode_responses"]
        finally:
            await text.aclose()
            await raw.aclose()

    assert asyncio.run(options()) == (True, False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:s3cret@127.0.0.1:7000/2", "database 0 only"),
        ("unix:///tmp/redis.sock", "redis:// or rediss://"),
    ],
)
def test_a_url_a_cluster_cannot_serve_is_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        connection.async_client(url, cluster=True, decode_responses=True)
    assert "s3cret" not in str(caught.value)
    connection.check_url(url, cluster=False)  # one node: redis-py takes these as they are


def test_settings_and_cli_refuse_a_cluster_url_with_a_database(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(redis_url="redis://:pw@h:7000/1", redis_cluster=True, artifact_root=str(tmp_path))
    with pytest.raises(ValueError, match="database 0 only"):
        settings.check_redis()
    Settings(redis_url="redis://:pw@h:7000/1", artifact_root=str(tmp_path)).check_redis()  # one node: fine
    assert main(["status", "--redis-url", "redis://:s3cret@127.0.0.1:1/4", "--redis-cluster"]) == 2
    err = capsys.readouterr().err
    assert "database 0 only" in err and "s3cret" not in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("notaurl", "a Redis URL starts with redis://, rediss:// or unix://"),
        ("localhost:6379", "a Redis URL starts with redis://, rediss:// or unix://"),
        ("http://:s3cret@h:6379/0", "a Redis URL starts with redis://, rediss:// or unix://"),
        ("redis://:s3cret@localhost:abc/0", "port is not a number"),
        # found by a review: both crashed the server's start with a traceback
        ("redis://:s3cret@localhost:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("rediss://:s3cret@localhost:6379/0?ssl_cert_reqs=bogus", "ssl_cert_reqs must be none, optional or required"),
    ],
)
def test_a_url_redis_cannot_take_is_one_line_and_exit_status_2(
    url: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-py raised a ValueError from deep inside (a 25–59-line traceback, exit status 1)."""
    with pytest.raises(ValueError, match=expected):
        Settings(redis_url=url, artifact_root=str(tmp_path)).check_redis()
    keys = tmp_path / "k.npy"
    np.save(keys, np.arange(3))
    for argv in (["status"], ["push", "t", "--delete", str(keys)], ["serve", "--artifact-root", str(tmp_path)]):
        assert main([*argv, "--redis-url", url]) == 2
        err = capsys.readouterr().err
        assert expected in err and "s3cret" not in err and len(err.strip().splitlines()) == 1, err


def test_push_of_a_file_that_is_not_npy_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    assert main(["push", "t", "--redis-url", "redis://127.0.0.1:1", "--delete", str(tmp_path / "empty.npy")]) == 2
    assert "not a readable .npy file" in capsys.readouterr().err


def test_the_cluster_flag_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import build_parser

    monkeypatch.setenv("EMBSERVE_REDIS_CLUSTER", "true")
    assert build_parser().parse_args(["status", "--redis-url", "redis://h:1"]).redis_cluster is True
    assert build_parser().parse_args(["push", "t", "--no-redis-cluster"]).redis_cluster is False
    monkeypatch.setenv("EMBSERVE_REDIS_CLUSTER", "0")
    assert build_parser().parse_args(["compact", "t", "--out", "x"]).redis_cluster is False
    monkeypatch.setenv("EMBSERVE_REDIS_CLUSTER", "1")
    assert Settings().redis_cluster is True
