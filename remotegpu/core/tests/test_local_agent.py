"""``make run``'s local agent keeper stops at once on SIGTERM, and stops its agent too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# Stands in for remotegpu-agent: prints its pid, then runs until a signal ends it.
AGENT = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
KEEPER = (
    "import sys; from remotegpu.core.local_agent import keep_running; "
    f"sys.exit(keep_running([sys.executable, '-c', {AGENT!r}]))"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("to", ["keeper", "process group"])
def test_sigterm_stops_the_keeper_and_its_agent_within_seconds(to):
    """A process manager (honcho under ``make run``, systemd) signals the keeper alone or its
    whole process group; either way both are gone well before it would resort to SIGKILL."""
    keeper = subprocess.Popen(
        [sys.executable, "-c", KEEPER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=os.getcwd(),
    )
    try:
        agent_pid = int(keeper.stdout.readline())
        time.sleep(0.3)  # the keeper is now inside child.wait()
        started = time.monotonic()
        if to == "keeper":
            keeper.send_signal(signal.SIGTERM)
        else:
            os.killpg(keeper.pid, signal.SIGTERM)
        assert keeper.wait(timeout=4) == 0
        assert time.monotonic() - started < 3
        deadline = time.monotonic() + 3
        while _alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(agent_pid)
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGKILL)
        keeper.stdout.close()
