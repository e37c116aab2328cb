"""Redis settings: validated at start; without a URL, nothing imports Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.settings import Settings


def test_redis_needs_an_artifact_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="artifact_root"):
        Settings(redis_url="redis://127.0.0.1:6379/0").check_redis()
    settings = Settings(redis_url="rediss://:pw@host:6380/0", artifact_root=tmp_path, replica_id="pod-7")
    assert settings.resolved_replica_id() == "pod-7"
    assert Settings().resolved_replica_id().endswith(f"-{os.getpid()}")


def test_serve_refuses_redis_without_artifact_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--redis-url", "redis://:s3cret@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "artifact_root" in err and "s3cret" not in err


def test_the_server_without_redis_never_imports_it() -> None:
    code = (
        "import sys, service.cli, service.server, service.rest\n"
        "print(sorted(m for m in sys.modules if m.startswith('redis')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
