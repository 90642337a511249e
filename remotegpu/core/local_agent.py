"""The host agent ``make run`` starts on this machine, so the demo fleet has a real host.

Waits for the web process, joins once (a join token minted by ``manage.py local_join_token``;
the credential is kept in ``.data/agent``), then runs ``remotegpu-agent run``. The GPU back
end is ``nvml`` when this machine has NVIDIA GPUs, else the clearly named ``fake`` one. The
agent is restarted if it stops, and joins again if its credential is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import embedded

# remotegpu-agent's exit status when the server refuses its credential.
CREDENTIAL_REFUSED = 3


def _wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310  (our own loopback URL)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"local agent: {url} did not answer in {timeout:.0f} s") from None
            time.sleep(0.5)


def _nvidia_gpus_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: not an NVIDIA host
        return False


FAKE_GPU_MODEL = "NVIDIA A100-SXM4-80GB"  # the fake back end's default


def local_gpu_model() -> str:
    """The model of this machine's first NVIDIA GPU, else the fake back end's."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                return FAKE_GPU_MODEL
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: the fake back end runs
        return FAKE_GPU_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--state-dir", default=str(embedded.data_dir() / "agent"))
    options = parser.parse_args(argv)

    state = Path(options.state_dir)
    agent = shutil.which("remotegpu-agent") or str(
        Path(sys.executable).with_name("remotegpu-agent")
    )
    _wait_for(options.server.rstrip("/") + "/healthz")
    backend = "nvml" if _nvidia_gpus_present() else "fake"

    def join_when_needed() -> None:
        if not (state / "config.json").exists():
            _join(agent, options.server, state)

    def after_exit(code: int) -> None:
        if code == CREDENTIAL_REFUSED:
            # The demo database was reset or the credential revoked: join again.
            (state / "config.json").unlink(missing_ok=True)

    return keep_running(
        [agent, "run", "--gpu-backend", backend, "--state-dir", str(state)],
        before_start=join_when_needed,
        after_exit=after_exit,
    )


def keep_running(
    command: list[str],
    *,
    before_start: Callable[[], None] | None = None,
    after_exit: Callable[[int], None] | None = None,
    restart_delay: float = 5.0,
) -> int:
    """Run ``command``, again ``restart_delay`` seconds after each exit, until SIGTERM or
    SIGINT, which it passes on to the command before returning 0."""
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        # Flag and pass on, nothing more: the main thread may be inside child.wait(), holding
        # the Popen's lock, and waiting for the child here would wait on that lock until the
        # process manager's SIGKILL.
        stopping.set()
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.is_set():
        if before_start is not None:
            before_start()
        if stopping.is_set():
            break
        child = subprocess.Popen(command)
        if stopping.is_set():  # stopped between the check and the start
            child.terminate()
        code = child.wait()
        if stopping.is_set():
            break
        if after_exit is not None:
            after_exit(code)
        stopping.wait(restart_delay)
    return 0


def _join(agent: str, server: str, state: Path) -> None:
    token = subprocess.run(
        [sys.executable, "manage.py", "local_join_token"],
        check=True,
        capture_output=True,
        text=True,
        cwd=embedded.BASE_DIR,
    ).stdout.strip()
    subprocess.run(
        [
            agent,
            "join",
            "--server",
            server,
            "--token",
            token,
            "--name",
            f"local-{socket.gethostname()}-{os.urandom(2).hex()}",
            "--state-dir",
            str(state),
        ],
        check=True,
    )


if __name__ == "__main__":
    sys.exit(main())
