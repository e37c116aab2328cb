"""A server whose stopping hangs still exits: the watchdog armed after the drain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

# a non-daemon thread blocked far longer than the watchdog: without it the interpreter would wait
# for the thread at exit (as it waits for a pool's worker blocked on a socket)
STUCK = textwrap.dedent(
    """
    import threading, time
    from service.server import arm_exit_watchdog

    def blocked_on_a_socket_for_a_minute():
        time.sleep(60)

    threading.Thread(target=blocked_on_a_socket_for_a_minute, name="stuck-reader").start()
    arm_exit_watchdog(1.0)
    print("armed", flush=True)
    """
)


def test_a_thread_stuck_at_exit_cannot_keep_the_process_alive() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert done.stdout.strip() == "armed"
    assert done.returncode == 1
    assert elapsed < 20, elapsed
    # the stack of the thread that held the exit is in the log, by its function
    assert "blocked_on_a_socket_for_a_minute" in done.stderr


def test_a_clean_exit_is_not_held_by_the_watchdog() -> None:
    quick = "from service.server import arm_exit_watchdog\narm_exit_watchdog(30.0)\nprint('bye')"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", quick], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "bye")
    assert time.monotonic() - started < 20
