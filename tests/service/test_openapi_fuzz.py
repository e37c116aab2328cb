"""schemathesis against the service's own OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import Served


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(served: Served, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(exe).exists():
        pytest.fail("schemathesis is a test dependency: pip install -e '.[test]'")
    run = subprocess.run(
        [
            exe,
            "run",
            f"{served.server.http}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "20",
            "--exclude-checks",
            "unsupported_method",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
