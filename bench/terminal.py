"""Benchmark: the web terminal's path against ``docker exec -it``.

Starts a real daphne and a real agent, an environment (busybox), and plays the browser: a
WebSocket to ``/ws/environments/<id>/terminal/`` with a signed-in session and an allowed
Origin, acknowledging output as it arrives as xterm.js does once it has drawn it. Side by side:

- the echo round trip of a keystroke (the container's terminal echoes it, ``cat`` runs on
  it), ECHOES times, against the same through ``docker exec -it ... cat`` on a local PTY;
- ``cat`` of MB (default 50) MiB through the terminal: from the command to its end marker.

Goal (issue 8): at most 20 ms added at the median, at least 20 MB/s.

Run: ``make bench NAME=terminal`` (root, Docker, busybox-static). Last line: JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.test import Client  # noqa: E402
from ssh import echo_round_trips  # noqa: E402
from stack import stack  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from remotegpu.core.busybox_image import busybox_image_build  # noqa: E402

PREFIX = "bench-term-"
MB = int(os.environ.get("MB", "50"))
ECHOES = int(os.environ.get("ECHOES", "200"))
END = b"END-OF-0CAT"  # typed as END-OF-$((0))CAT: the echoed command line never matches


class Browser:
    """The page's side of the socket: sends keys, acknowledges output."""

    def __init__(self, url: str, cookie: str, origin: str):
        self.socket = connect(  # closed by main
            url,
            additional_headers={"Cookie": cookie, "Origin": origin},
            max_size=None,
            open_timeout=10,
        )
        self.seen = bytearray()
        self.pending_bytes = self.pending_frames = 0
        self.frames = 0

    def receive(self, timeout: float = 10.0) -> None:
        message = self.socket.recv(timeout=timeout)
        if isinstance(message, str):
            data = json.loads(message)
            if data["type"] == "closed":
                raise SystemExit(f"the terminal closed: {data}")
            return
        self.seen += message
        self.frames += 1
        # As the page does: acknowledge what was drawn, a batch at a time.
        self.pending_bytes += len(message)
        self.pending_frames += 1
        if self.pending_bytes >= 65536 or self.pending_frames >= 16:
            self.flush()

    def flush(self) -> None:
        if self.pending_frames:
            ack = {"type": "ack", "bytes": self.pending_bytes, "frames": self.pending_frames}
            self.socket.send(json.dumps(ack))
            self.pending_bytes = self.pending_frames = 0

    def until(self, marker: bytes, timeout: float = 30.0, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        searched = start  # look only at what is new (plus a marker's length), not all again
        while self.seen.find(marker, searched) < 0:
            searched = max(start, len(self.seen) - len(marker))
            if time.monotonic() > deadline:
                raise SystemExit(f"no {marker!r} within {timeout} s: {bytes(self.seen[-200:])!r}")
            try:
                self.receive(timeout=0.005 if self.pending_frames else 1.0)
            except TimeoutError:
                self.flush()  # a quiet moment: acknowledge what was drawn, as the page does

    def type(self, data: bytes) -> None:
        self.socket.send(data)


def main() -> None:
    import docker

    client = docker.from_env()
    image = busybox_image_build(client, "remotegpu-bench/busybox")
    with stack(PREFIX) as s:
        connection = s.environment(image, ["sleep", "1000000"], "box")
        container = client.containers.get(f"rgpu-env-{connection['id']}")
        session = Client()
        session.force_login(s.owner)
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={session.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        url = s.base.replace("http", "ws") + f"/ws/environments/{connection['id']}/terminal/"
        browser = Browser(url + "?cols=120&rows=40", cookie, s.base)
        opened = json.loads(browser.socket.recv(timeout=10))
        assert opened["type"] == "opened", opened
        browser.type(b"cat\n")
        browser.until(b"cat\r\n")
        samples = []
        for _ in range(ECHOES):
            mark = len(browser.seen)
            start = time.perf_counter()
            browser.type(b"x")
            browser.until(b"x", start=mark)
            samples.append((time.perf_counter() - start) * 1000)
        browser.type(b"\x03")  # end cat
        # Bulk output: MB MiB of text through the terminal, with the acknowledgements.
        command = (
            f"dd if=/dev/zero bs=1048576 count={MB} 2>/dev/null | tr '\\000' y; "
            "echo; echo END-OF-$((0))CAT\n"
        )
        mark, frames_before = len(browser.seen), browser.frames
        start = time.perf_counter()
        browser.type(command.encode())
        browser.until(END, timeout=300, start=mark)
        elapsed = time.perf_counter() - start
        received = len(browser.seen) - mark
        frames = browser.frames - frames_before
        browser.socket.close()
        floor = echo_round_trips(["docker", "exec", "-it", container.id, "cat"], ECHOES)
    median, floor_median = statistics.median(samples), statistics.median(floor)
    mb_per_s = received / (1 << 20) / elapsed
    print(
        f"echo: terminal median {median:.2f} ms (p90 {_p90(samples):.2f}), "
        f"docker exec -it median {floor_median:.2f} ms (p90 {_p90(floor):.2f}); "
        f"cat: {received / (1 << 20):.1f} MiB in {elapsed:.2f} s, {frames} frames "
        f"of {received / max(frames, 1) / 1024:.1f} KiB on average"
    )
    print(
        json.dumps(
            {
                "bench": "terminal",
                "median_ms": round(median, 2),
                "floor_median_ms": round(floor_median, 2),
                "added_ms": round(median - floor_median, 2),
                "mb_per_s": round(mb_per_s, 1),
            }
        )
    )


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


if __name__ == "__main__":
    main()
