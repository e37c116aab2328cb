"""The suite's long compiles for targets other than its own CPU's (the other register width, a
container's cache level) run side by side.

Each is a subprocess that spends minutes in numba's single-threaded compiler (~3 minutes a build
alone here). The session starts every build it selected before its first test, at the idle
scheduling class, so they take only the CPU the other tests leave (the suite mostly runs one
thread on a two-core machine) and never slow a server test down; the tests that need a build run
last (tests/conftest.py) and wait for whatever is left of it. Waited for at the first such test,
one a core, the builds held the whole suite for 3 minutes.

A test takes part with `@pytest.mark.side_build(command=...)` and the `side_build` fixture, where
`command(directory)` returns the argv and environment of its subprocess, given a fresh directory
of its own (for its numba cache and whatever else it writes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BuildCommand = Callable[[Path], tuple[list[str], dict[str, str]]]

# a build still running this long after a test began to wait for it is stuck, not slow (the
# longest takes ~4 minutes alone; before the wait it may have had little CPU)
BUILD_TIMEOUT_SECONDS = 900.0

# runs argv[1:] at the idle scheduling class (inherited by its own subprocesses): it gets a core
# only when no other process wants it; nice 19 where the class cannot be set
AT_IDLE_PRIORITY = """
import os, sys
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    os.nice(19)
os.execvpe(sys.argv[1], sys.argv[1:], os.environ)
"""


@dataclass(frozen=True)
class Finished:
    """A build's outcome: its directory and its exit status and output (text)."""

    directory: Path
    returncode: int
    stdout: str
    stderr: str


@dataclass
class _Running:
    directory: Path
    process: subprocess.Popen[bytes]


class SideBuilds:
    """Runs `commands` (started all at once on the first `result`) in `cwd`; output goes to files
    in each build's directory, so a chatty build never blocks on a full pipe while another is
    waited for."""

    def __init__(self, commands: list[BuildCommand], make_directory: Callable[[str], Path], cwd: Path) -> None:
        self.commands = commands
        self.make_directory = make_directory
        self.cwd = cwd
        self.running: dict[BuildCommand, _Running] = {}
        self.finished: dict[BuildCommand, Finished] = {}

    def start_all(self) -> None:
        """Starts every build not started yet (each at the idle scheduling class)."""
        for command in self.commands:
            if command in self.running or command in self.finished:
                continue
            directory = self.make_directory(getattr(command, "__name__", "build"))
            try:
                argv, env = command(directory)
                with open(directory / "stdout", "wb") as stdout, open(directory / "stderr", "wb") as stderr:
                    # a process group of its own: a build's own subprocesses (runtime.warm --levels
                    # runs one a level) are killed with it. Not a session of its own: with the
                    # kernel's autogroups a new session is scheduled as a peer of the suite's, which
                    # would undo the idle class
                    process = subprocess.Popen(
                        [sys.executable, "-c", AT_IDLE_PRIORITY, *argv],
                        env=env,
                        cwd=self.cwd,
                        stdout=stdout,
                        stderr=stderr,
                        process_group=0,
                    )
            except Exception as error:  # reported as the build's outcome, to its own test
                self.finished[command] = Finished(directory, -1, "", f"could not start: {error!r}")
                continue
            self.running[command] = _Running(directory, process)

    def result(self, command: BuildCommand) -> Finished:
        """Waits for every build started (starting them first if none is) and returns `command`'s.
        A build still running BUILD_TIMEOUT_SECONDS after the wait began is killed, with every
        process it started, and reported with returncode -9 and a note."""
        if command not in self.finished:
            if command not in self.commands:
                self.commands.append(command)
            self.start_all()
            deadline = time.monotonic() + BUILD_TIMEOUT_SECONDS
            for started, run in list(self.running.items()):
                note = ""
                try:
                    returncode = run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    returncode = _kill(run.process)
                    note = f"\n(killed after {BUILD_TIMEOUT_SECONDS:g} s)"
                self.finished[started] = Finished(
                    run.directory,
                    returncode,
                    (run.directory / "stdout").read_text(errors="replace"),
                    (run.directory / "stderr").read_text(errors="replace") + note,
                )
                del self.running[started]
        return self.finished[command]

    def stop(self) -> None:
        """Kills builds still running (a session cut short), with every process they started."""
        for run in self.running.values():
            _kill(run.process)
        self.running.clear()


def _kill(process: subprocess.Popen[bytes]) -> int:
    """Kills process and the other processes of its group; -> its return code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()
