"""The README's native HTTP examples run as written against a live demo server, answer without
an error, and leave no file behind."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import require_binary
from tests.service.live import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[2]


def readme_commands(section: str) -> list[str]:
    """The shell commands of the first bash block after `section`, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(section) :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        code = re.split(r"\s{2,}#", line, maxsplit=1)[0].rstrip()  # drop trailing "   # comment"
        if not code or code.startswith("#"):
            continue
        pending = f"{pending} {code.strip()}" if pending else code
        if not pending.endswith("|"):
            commands.append(pending)
            pending = ""
    assert not pending, pending
    return commands


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("demo"), [], env={"EMBSERVE_DEMO_ROWS": "2000"})
    yield server
    server.terminate()


@pytest.mark.slow
@pytest.mark.external
def test_native_http_examples_run_as_written(demo_server: LiveServer, tmp_path: Path) -> None:
    require_binary("curl")
    commands = readme_commands("### Native HTTP API")
    assert len(commands) == 10
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for command in commands:
        assert "..." not in command, f"placeholder in {command!r}"
        runnable = command.replace("localhost:8000", f"127.0.0.1:{demo_server.http_port}")
        run = subprocess.run(
            ["bash", "-o", "pipefail", "-c", runnable], cwd=workdir, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, (command, run.stderr)
        if run.stdout.lstrip().startswith("{"):
            body = json.loads(run.stdout)
            assert "error" not in body, (command, body)
        if "search" in command:
            assert len(json.loads(run.stdout)["ids"][0]) == 10
        if "exclude_ids" in command:
            found = json.loads(run.stdout)["ids"]
            assert not {3, 9} & set(found[0]) and 4 not in found[1], found
        if "octet-stream" in command:
            assert "x-embserve-shape: 3,64" in run.stderr.lower()
            assert run.stdout.count("[") == 4  # numpy's print of a (3, 64) array: [[...] [...] [...]]
    assert list(workdir.iterdir()) == []  # nothing left in the checkout


@pytest.mark.slow
@pytest.mark.external
def test_multi_table_examples_run_as_written(demo_server: LiveServer, tmp_path: Path) -> None:
    require_binary("curl")
    commands = readme_commands("### Multi-table lookups")
    assert len(commands) == 4
    for command in commands:
        runnable = command.replace("localhost:8000", f"127.0.0.1:{demo_server.http_port}")
        run = subprocess.run(
            ["bash", "-o", "pipefail", "-c", runnable], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, (command, run.stderr)
        if "octet-stream" in command:
            assert '"shape":[2,64]' in run.stderr and run.stdout.count("[") == 3
            continue
        body = json.loads(run.stdout)
        assert "error" not in body, (command, body)
        shapes = [r["shape"] for r in body["results"]] if "results" in body else [body["shape"]]
        assert shapes in ([[2, 64], [2, 64]], [[2, 128]]), (command, shapes)
    grpcurl = require_binary("grpcurl")
    run = subprocess.run(
        readme_commands("Over gRPC, `embserve.v1.EmbeddingService/MultiLookup`")[0]
        .replace("grpcurl", grpcurl, 1)
        .replace("localhost:8001", f"127.0.0.1:{demo_server.grpc_port}"),
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["results"][0]["embeddings"]["shape"] == ["1", "64"]
