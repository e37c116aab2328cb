"""The repository's static checks (scripts/check: ruff format, ruff lint, mypy) are part of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_static_checks_pass() -> None:
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
