"""The runner of the suite's long side-by-side compiles (tests/side_builds.py), with small Python
subprocesses in their place."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import side_builds
from tests.side_builds import SideBuilds

# waits for the partner build's file, so it finishes only if both run at once
WAIT_FOR_PARTNER = """
import pathlib, sys, time
mine, partner = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mine.write_text("here")
while not partner.exists():
    time.sleep(0.01)
print("met", partner.name)
"""


def make_directories(root: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        directory = root / name
        directory.mkdir()
        return directory

    return make


def test_builds_run_at_once_and_each_test_gets_its_own_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run one after the other, the first would wait for its partner until killed
    monkeypatch.setattr(side_builds, "BUILD_TIMEOUT_SECONDS", 30.0)
    meeting = tmp_path / "meeting"
    meeting.mkdir()

    def first(directory: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", WAIT_FOR_PARTNER, str(meeting / "first"), str(meeting / "second")], dict(
            os.environ
        )

    def second(directory: Path) -> tuple[list[str], dict[str, str]]:
        code = WAIT_FOR_PARTNER + "\nsys.stderr.write('to stderr'); sys.exit(3)"
        return [sys.executable, "-c", code, str(meeting / "second"), str(meeting / "first")], dict(os.environ)

    builds = SideBuilds([first, second], make_directories(tmp_path), tmp_path)
    done = builds.result(second)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (3, "met first", "to stderr")
    assert done.directory == tmp_path / "second"
    # the first finished too, while the second was waited for
    assert builds.running == {}
    assert builds.result(first).stdout.strip() == "met second" and builds.result(first).returncode == 0


def test_a_build_past_its_deadline_is_killed_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(side_builds, "BUILD_TIMEOUT_SECONDS", 0.5)

    def stuck(directory: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ)

    builds = SideBuilds([], make_directories(tmp_path), tmp_path)
    done = builds.result(stuck)  # a command no marker declared is started when asked for
    assert done.returncode == -9 and "killed after 0.5 s" in done.stderr


STARTS_A_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


def gone(pid: int) -> bool:
    """Whether process pid has exited (absent, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stop_kills_a_running_build_and_the_processes_it_started(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"

    def parent(directory: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", STARTS_A_CHILD, str(child_pid)], dict(os.environ)

    builds = SideBuilds([parent], make_directories(tmp_path), tmp_path)
    builds.start_all()
    process = builds.running[parent].process
    deadline = time.monotonic() + 30
    while not (child_pid.exists() and child_pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    child = int(child_pid.read_text())
    builds.stop()
    assert process.poll() is not None and builds.running == {}
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(child)


def test_a_build_that_cannot_start_fails_its_own_test_only(tmp_path: Path) -> None:
    def broken(directory: Path) -> tuple[list[str], dict[str, str]]:
        raise FileNotFoundError("no such compiler")

    def fine(directory: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "print('built')"], dict(os.environ)

    builds = SideBuilds([broken, fine], make_directories(tmp_path), tmp_path)
    failed = builds.result(broken)
    assert failed.returncode == -1 and "could not start: FileNotFoundError('no such compiler')" in failed.stderr
    assert builds.result(fine).returncode == 0 and builds.result(fine).stdout == "built\n"


def test_a_build_runs_at_the_idle_class_in_a_group_of_its_own_within_the_suites_session(tmp_path: Path) -> None:
    # a session of its own would be an autogroup of its own, scheduled as a peer of the suite's
    # whatever its class; the group is what stop() kills
    report = "import os; print(os.sched_getscheduler(0), os.getpgid(0) == os.getpid(), os.getsid(0))"

    def probe(directory: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", report], dict(os.environ)

    done = SideBuilds([probe], make_directories(tmp_path), tmp_path).result(probe)
    policy, own_group, session = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert (int(policy), own_group, int(session)) == (os.SCHED_IDLE, "True", os.getsid(0))
