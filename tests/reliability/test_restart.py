"""What survives a restart: an admin swap (recorded in the state file under the artifact root
when there is no Redis); and artifacts are readable by other users (mode 0644)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

import runtime
from service.core import EmbeddingService
from service.settings import Settings
from tests.conftest import low_rank_table
from tests.reliability.conftest import ADMIN_TOKEN, build_root, server_env
from tests.service.live import start_server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.slow  # two server starts
def test_admin_swap_is_served_again_after_a_restart(tmp_path: Path) -> None:
    root = build_root(tmp_path / "root")
    args = ["--table", f"t={root / 't' / 'v1'}", "--artifact-root", str(root)]
    first = start_server(tmp_path, args, env=server_env())
    try:
        assert httpx.get(f"{first.http}/v1/tables/t").json()["version"] == "t-v1"
        r = httpx.put(f"{first.http}/v1/tables/t", json={"path": "t/v2"}, headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["version"] == "t-v2", r.text
        r = httpx.put(f"{first.http}/v1/tables/extra", json={"path": "t/v1"}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        assert first.terminate() == 0, first.log()
    state = json.loads((root / ".embserve-state.json").read_text())
    assert state["tables"]["t"]["path"] == "t/v2" and state["tables"]["extra"]["path"] == "t/v1"
    second = start_server(tmp_path, args, env=server_env())
    try:
        assert httpx.get(f"{second.http}/v1/tables/t").json()["version"] == "t-v2"
        assert httpx.get(f"{second.http}/v1/tables/extra").json()["version"] == "t-v1"
        assert httpx.delete(f"{second.http}/v1/tables/extra", headers=AUTH).status_code == 200
    finally:
        assert second.terminate() == 0, second.log()
    assert "extra" not in json.loads((root / ".embserve-state.json").read_text())["tables"]


def test_artifact_files_are_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = runtime.compress(low_rank_table(300, 16), "pq", subspaces=4, bits=4, iterations=2).save(tmp_path / "v1")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in Path(out).iterdir()}
    assert modes and all(mode == 0o644 for mode in modes.values()), modes


def test_a_recorded_version_that_no_longer_loads_falls_back_to_the_configured_one(tmp_path: Path) -> None:
    root = build_root(tmp_path / "root")
    broken = root / "t" / "v3"
    broken.mkdir()
    for f in (root / "t" / "v2").iterdir():
        (broken / f.name).write_bytes(f.read_bytes()[:-1] if f.suffix == ".npy" else f.read_bytes())
    (root / ".embserve-state.json").write_text(
        json.dumps({"format": 1, "tables": {"t": {"path": "t/v3"}, "gone": {"path": "../outside"}}})
    )
    settings = Settings(tables=[f"t={root / 't' / 'v1'}"], artifact_root=root, warmup=False, demo=False)
    service = EmbeddingService(settings)
    try:
        service.load_configured()
        assert service.store.names() == ["t"] and service.get("t").table.version == "t-v1"
    finally:
        service.close()
