"""The host agent ``make run`` starts on this machine, so the demo fleet has a real host.

Waits for the web process, joins once (a join token minted by ``manage.py local_join_token``;
the credential is kept in ``.data/agent``), then runs ``remotegpu-agent run``. The GPU back
end is ``nvml`` when this machine has NVIDIA GPUs, else the clearly named ``fake`` one. The
agent is restarted if it stops, and joins again if its credential is refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=10)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        if not (state / "config.json").exists():
            _join(agent, options.server, state)
        child = subprocess.Popen(
            [agent, "run", "--gpu-backend", backend, "--state-dir", str(state)]
        )
        code = child.wait()
        if code == CREDENTIAL_REFUSED:
            # The demo database was reset or the credential revoked: join again.
            (state / "config.json").unlink(missing_ok=True)
        else:
            time.sleep(5)


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
