"""A live server shared by the service tests, serving two small tables built for the session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import runtime
from tests.conftest import low_rank_table, require_external_marker
from tests.service.live import LiveServer, start_server

ADMIN_TOKEN = "test-admin-token"


@dataclass
class Served:
    server: LiveServer
    root: Path
    tables: dict[str, runtime.Table]


def require_binary(name: str) -> str:
    """Path of a system binary; CI must have it (fail), elsewhere a missing one skips with a note."""
    require_external_marker(name)
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} not installed (apt-get install it, or run .ci/run)")
    return path


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    runtime.compress(low_rank_table(4000, 32, seed=11), "pq", subspaces=8, bits=8, iterations=6, rerank="int8").save(
        root / "items" / "v1"
    )
    runtime.compress(low_rank_table(2000, 128, seed=12), "binary", rotate=True).save(root / "bits" / "v1")
    runtime.compress(low_rank_table(500, 32, seed=13), "int4", version="swap-v2").save(root / "swap" / "v2")
    return root


@pytest.fixture(scope="session")
def served(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("server")
    server = start_server(
        workdir,
        [
            "--table",
            f"items={artifact_root / 'items' / 'v1'}",
            "--table",
            f"bits={artifact_root / 'bits' / 'v1'}",
            "--table",
            f"swap={artifact_root / 'items' / 'v1'}",
            "--artifact-root",
            str(artifact_root),
        ],
        env={
            "EMBSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
            "EMBSERVE_MAX_IDS": "5000",
            "EMBSERVE_MAX_BODY_BYTES": "2000000",
            "EMBSERVE_MAX_JSON_VALUES": "200000",
            "EMBSERVE_MAX_K": "1000",
        },
    )
    tables = {name: runtime.load_table(artifact_root / name / "v1") for name in ("items", "bits")}
    yield Served(server, artifact_root, tables)
    assert server.terminate() == 0, server.log()
