"""Admin: authenticated hot swap of a table version, confinement to the artifact root, delete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np

from tests.service.conftest import ADMIN_TOKEN, Served

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_admin_needs_the_token(served: Served) -> None:
    url = f"{served.server.http}/v1/tables/swap"
    assert httpx.put(url, json={"path": "swap/v2"}).status_code == 401
    r = httpx.put(url, json={"path": "swap/v2"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "not the admin token" in r.json()["error"]
    r = httpx.put(url, json={"path": "swap/v2"}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "'Authorization: Bearer <token>'" in r.json()["error"]
    assert httpx.delete(url).status_code == 401


def test_paths_are_confined_to_the_artifact_root(served: Served, tmp_path: Path) -> None:
    url = f"{served.server.http}/v1/tables/swap"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (served.root / "escape").symlink_to(outside)
    # found by a review: a directory inside the root whose files are links to an artifact outside
    # it loaded and served that artifact; and a name too long for the file system was a 500
    linked = served.root / "linked"
    linked.mkdir()
    outside_artifact = tmp_path / "outside-artifact"
    shutil.copytree(served.root / "swap" / "v2", outside_artifact)
    for f in outside_artifact.iterdir():
        (linked / f.name).symlink_to(f)
    cases = [("../x", 403), ("/etc", 403), ("escape", 403), ("linked", 403), ("missing/v9", 404), ("", 400)]
    cases += [("a" * 300, 400), ("/".join(["b"] * 3000), 400)]
    for path, status in cases:
        r = httpx.put(url, json={"path": path}, headers=AUTH)
        assert r.status_code == status, (path[:20], r.text)
    assert "a symbolic link out of the artifact root" in httpx.put(url, json={"path": "linked"}, headers=AUTH).text
    assert httpx.get(url).json()["version"] != "swap-v2"


def test_failed_load_keeps_the_old_version_serving(served: Served) -> None:
    bad = served.root / "broken"
    bad.mkdir()
    for f in (served.root / "swap" / "v2").iterdir():
        os.link(f, bad / f.name) if f.name == "manifest.json" else (bad / f.name).write_bytes(f.read_bytes()[:-3])
    before = httpx.get(f"{served.server.http}/v1/tables/swap").json()
    r = httpx.put(f"{served.server.http}/v1/tables/swap", json={"path": "broken"}, headers=AUTH)
    assert r.status_code == 422 and "sha256" in r.json()["error"]
    after = httpx.get(f"{served.server.http}/v1/tables/swap").json()
    assert after["version"] == before["version"] and after["loaded_at"] == before["loaded_at"]
    assert httpx.post(f"{served.server.http}/v1/tables/swap/lookup", json={"ids": [3999]}).status_code == 200


def test_swap_then_delete(served: Served) -> None:
    base = f"{served.server.http}/v1/tables/swap"
    r = httpx.put(base, json={"path": "swap/v2"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "swap-v2" and r.json()["rows"] == 500 and r.json()["codec"] == "int4"
    assert httpx.post(f"{base}/lookup", json={"ids": [499]}).status_code == 200
    assert httpx.post(f"{base}/lookup", json={"ids": [500]}).status_code == 400
    rows = np.array(httpx.post(f"{base}/lookup", json={"ids": [1]}).json()["embeddings"])
    assert rows.shape == (1, 32)
    assert httpx.delete(base, headers=AUTH).json()["deleted"] == "swap"
    assert httpx.get(base).status_code == 404
    assert httpx.delete(base, headers=AUTH).status_code == 404
    assert httpx.post(f"{served.server.http}/v1/tables/items/lookup", json={"ids": [1]}).status_code == 200
