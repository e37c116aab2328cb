"""`embserve serve` on the command line: a flag for every setting, --tables-file, and one-line
errors for a busy port and a table path that is not an artifact directory."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import runtime
from service.cli import build_parser, main, settings_flag
from service.settings import Settings
from tests.conftest import low_rank_table
from tests.service.live import free_port, start_server

ROOT = Path(__file__).resolve().parents[2]


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_every_setting_has_a_flag_with_its_description_as_help() -> None:
    parser = _serve_parser()
    actions = {a.dest: a for a in parser._actions}
    for name, field in Settings.model_fields.items():
        assert name in actions, f"setting {name} has no flag"
        action = actions[name]
        assert settings_flag(name) in action.option_strings
        help_text = action.help or ""
        assert field.description and field.description in help_text, name
        assert f"EMBSERVE_{name.upper()}" in help_text


def test_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr("service.server.serve", seen.append)
    monkeypatch.setenv("EMBSERVE_MAX_IDS", "77")
    monkeypatch.setenv("EMBSERVE_WARMUP", "true")
    argv = [
        "serve",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--max-queries",
        "9",
        "--parallel-min-ids",
        "64",
        "--no-warmup",
        "--no-demo",
        "--demo-dir",
        str(tmp_path),
        "--grace-seconds",
        "1.5",
        "--admin-token",
        "secret",
    ]
    assert main(argv) == 0
    (s,) = seen
    assert (s.max_queries, s.parallel_min_ids, s.warmup, s.demo, s.demo_dir) == (9, 64, False, False, tmp_path)
    assert (s.grace_seconds, s.admin_token) == (1.5, "secret")
    assert s.max_ids == 77  # no flag given: the environment variable stays in force


def test_a_table_path_that_is_a_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "items.npy", low_rank_table(10, 4))
    assert main(["serve", "--table", f"x={tmp_path / 'items.npy'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "items.npy' is a file; an artifact directory is expected" in err


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["HTTP", "gRPC"])
def test_a_busy_port_is_one_line_and_exit_status_1(listening: int, transport: str) -> None:
    ports = {"HTTP": str(listening), "gRPC": str(free_port())}
    if transport == "gRPC":
        ports = {"HTTP": str(free_port()), "gRPC": str(listening)}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--http-port", ports["HTTP"], "--grpc-port", ports["gRPC"]]
    env = {**os.environ, "EMBSERVE_DEMO": "false"}
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert run.returncode == 1
    busy = f"{transport} port {listening} on 127.0.0.1 is already in use (another server running?)"
    assert run.stderr == f"embserve serve: error: {busy}\n"


def test_a_port_taken_between_the_check_and_the_bind_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    taken: list[int] = []

    def bind_fails(settings: Settings) -> None:
        taken.append(settings.grpc_port)  # another process wins the port now
        raise RuntimeError(f"Failed to bind to address 127.0.0.1:{settings.grpc_port}")

    monkeypatch.setattr("service.server.serve", bind_fails)
    monkeypatch.setattr("service.cli.port_in_use", lambda host, port: port in taken)
    assert main(["serve", "--http-port", "1234", "--grpc-port", "1235", "--no-demo"]) == 1
    assert (
        capsys.readouterr().err
        == "embserve serve: error: gRPC port 1235 on 127.0.0.1 is already in use (another server running?)\n"
    )

    def crashes(settings: Settings) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr("service.server.serve", crashes)
    with pytest.raises(RuntimeError, match="something else"):  # not mistaken for a busy port
        main(["serve", "--http-port", "1234", "--grpc-port", "1236", "--no-demo"])


def test_tables_file_setting_reads_import_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    index = tmp_path / "t" / "tables.json"
    index.parent.mkdir()
    index.write_text('{"tables": [{"name": "a", "path": "a"}, {"name": "b", "path": "/abs/b"}]}')
    monkeypatch.setenv("EMBSERVE_TABLES_FILE", str(index))
    assert Settings(tables=["c=/c"]).table_specs() == [
        ("c", Path("/c")),
        ("a", index.parent / "a"),
        ("b", Path("/abs/b")),
    ]
    with pytest.raises(ValueError, match=r"table 'a' is configured twice"):
        Settings(tables=["a=/x"]).table_specs()
    with pytest.raises(ValueError, match=r"tables file .* does not exist"):
        Settings(tables_file=tmp_path / "missing.json").table_specs()
    # found by a review: a tables file served names that --table and an admin load refuse
    for bad in ("", "a/b", "x" * 129):
        index.write_text(json.dumps({"tables": [{"name": bad, "path": "a"}]}))
        with pytest.raises(
            ValueError, match=r"tables\[0\]: table name .* must be 1-128 printable characters without '/'"
        ):
            Settings().table_specs()
        monkeypatch.delenv("EMBSERVE_TABLES_FILE")
        with pytest.raises(
            ValueError, match=r"table spec .*: table name .* must be 1-128 printable characters without '/'"
        ):
            Settings(tables=[f"{bad or 'a/b'}=/c"]).table_specs()
        monkeypatch.setenv("EMBSERVE_TABLES_FILE", str(index))


@pytest.mark.slow
def test_serve_tables_file_from_import(tmp_path: Path) -> None:
    users, items = low_rank_table(500, 16, seed=1), low_rank_table(300, 8, seed=2)
    from safetensors.numpy import save_file

    save_file(
        {
            "sparse_arch.embedding_bag_collection.embedding_bags.t_user.weight": users,
            "sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight": items,
        },
        str(tmp_path / "model.safetensors"),
    )
    out = tmp_path / "tables"
    assert main(["import", str(tmp_path / "model.safetensors"), "--out", str(out), "--codec", "fp16"]) == 0
    server = start_server(tmp_path, ["--tables-file", str(out / "tables.json"), "--no-demo"])
    try:
        names = sorted(t["name"] for t in httpx.get(f"{server.http}/v1/tables").json()["tables"])
        assert names == ["t_item", "t_user"]
        got = httpx.post(f"{server.http}/v1/tables/t_user/lookup", json={"ids": [0, 499]}).json()
        np.testing.assert_allclose(np.array(got["embeddings"]), users[[0, 499]], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(
            np.array(httpx.post(f"{server.http}/v1/tables/t_item/lookup", json={"ids": [7]}).json()["embeddings"]),
            runtime.load_table(out / "t_item").lookup([7]),
        )
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--max-k", "-1"], {}, "embserve serve: invalid settings: --max-k / EMBSERVE_MAX_K: Input should be"),
        ([], {"EMBSERVE_MAX_K": "abc"}, "--max-k / EMBSERVE_MAX_K: Input should be a valid integer"),
        (["--http-port", "8000x"], {}, "embserve serve: error: argument --http-port: invalid int value: '8000x'"),
        (["--no-such-flag"], {}, "embserve serve: error: unrecognized arguments: --no-such-flag (see embserve serve"),
        # found by a probe: the first two printed tracebacks, the third served with a file as its root
        (["--log-level", "loud"], {}, "--log-level / EMBSERVE_LOG_LEVEL: must be one of critical, error, warning"),
        (["--host", "999.1.1.1"], {}, "embserve serve: invalid settings: host '999.1.1.1' cannot be bound here"),
        (["--artifact-root", "/etc/passwd"], {}, "is a file; the artifact root is a directory (got '/etc/passwd')"),
        (["--max-arriving-body-bytes", "2048", "--max-body-bytes", "4096"], {}, "must be at least max_body_bytes"),
        # found by a review: each of these crashed at start with a traceback (int(inf), gRPC's
        # int32 milliseconds and sizes), or was taken for another flag
        ([], {"EMBSERVE_GRACE_SECONDS": "inf"}, "--grace-seconds / EMBSERVE_GRACE_SECONDS: Input should be a finite"),
        ([], {"EMBSERVE_HEADER_TIMEOUT_SECONDS": "1e300"}, "EMBSERVE_HEADER_TIMEOUT_SECONDS: Input should be less"),
        ([], {"EMBSERVE_GRPC_MAX_CONNECTION_IDLE_SECONDS": "3000000"}, "Input should be less than or equal to 2000000"),
        ([], {"EMBSERVE_MAX_CONNECTIONS": "3000000000"}, "EMBSERVE_MAX_CONNECTIONS: Input should be less"),
        (["--http-port", "18999", "--grpc-port", "18999"], {}, "http_port and grpc_port are both 18999"),
        (["--tables", "t=/nowhere"], {}, "unrecognized arguments: --tables"),
    ],
)
def test_a_bad_setting_or_flag_is_one_line_and_exit_status_2(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status: int | str | None
    try:
        status = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own refusal
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


def test_trace_logging_and_an_ipv6_host_start(tmp_path: Path) -> None:
    # found by a review: --log-level trace, which the settings take, crashed logging's set-up, and
    # gRPC could not bind an IPv6 literal (`:::8001`)
    table = tmp_path / "t" / "v1"
    runtime.compress(low_rank_table(100, 8, seed=1), "int8").save(table)
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--table", f"t={table}", "--log-level", "trace"]
    cmd += ["--host", "::1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://[::1]:{http_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        with grpc.insecure_channel(f"[::1]:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert " DEBUG " in log_path.read_text()  # below debug, trace shows debug too
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]


def test_an_environment_variable_no_setting_reads_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: EMBSERVE_TABLE (for EMBSERVE_TABLES) served the demo table without a word
    from service.settings import unread_variables

    environ = {
        "EMBSERVE_TABLE": "t=/x",
        "EMBSERVE_MAX_CONCURENCY": "2",
        "EMBSERVE_TABLES": "t=/x",
        "EMBSERVE_NUMBA_CACHES": "/c",
        "EMBSERVE_LOAD_TABLE": "t",
        "EMBSERVE_SERVICE_HOST": "10.0.0.1",
        "EMBSERVE_PORT_8000_TCP": "tcp://10.0.0.1:8000",
        "PATH": "/bin",
    }
    assert unread_variables(environ) == ["EMBSERVE_MAX_CONCURENCY", "EMBSERVE_TABLE"]
    monkeypatch.setenv("EMBSERVE_TABLE", "t=/x")
    assert main(["serve", "--host", "999.1.1.1"]) == 2  # named before the host is refused
    assert "warning: EMBSERVE_TABLE is no setting, ignored" in capsys.readouterr().err
