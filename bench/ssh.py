"""Benchmark: the SSH gateway against OpenSSH's own sshd and ``docker exec``.

Starts a real daphne and a real agent with its gateway, and an environment (busybox, no sshd
in it). Then, side by side in one run:

- ``scp`` of SIZE_MB (default 256) MiB of random bytes into the environment's ``/workspace``
  through the gateway, against ``scp`` to OpenSSH's ``sshd`` on loopback writing into the same
  folder on the host (the volume's own directory): same client, same disk, same defaults;
- the echo round trip of a keystroke in an interactive session (``ssh -tt ... cat``: the
  container's terminal echoes it) against ``docker exec -it ... cat``, ECHOES times each.

Goal (issue 8): ratio at least 0.5, at most 10 ms added at the median.

Run: ``make bench NAME=ssh`` (root, Docker, openssh-server, busybox-static). Last line: JSON.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django  # noqa: E402

django.setup()

from stack import free_port, stack, wait  # noqa: E402

from remotegpu.core.busybox_image import busybox_image_build  # noqa: E402

PREFIX = "bench-ssh-"
SIZE_MB = int(os.environ.get("SIZE_MB", "256"))
COPIES = int(os.environ.get("COPIES", "3"))
ECHOES = int(os.environ.get("ECHOES", "200"))
SSHD = "/usr/sbin/sshd"


def ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return [
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "LogLevel=ERROR",
    ]


def start_sshd(work: Path, key: Path) -> tuple[subprocess.Popen, int, Path]:
    """OpenSSH's sshd on loopback for root with ``key``; its port and a known_hosts file."""
    Path("/run/sshd").mkdir(exist_ok=True)
    host_key = work / "sshd_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = work / "authorized_keys"
    shutil.copy(key.with_suffix(".pub"), authorized)
    port = free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                f"PidFile {work / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    known_hosts = work / "known_hosts_sshd"
    public = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    return process, port, known_hosts


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def echo_round_trips(argv: list[str], count: int) -> list[float]:
    """Milliseconds from writing a key to the terminal until its echo comes back, in a
    session of ``argv`` running ``cat`` on a TTY."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)  # noqa: S606
    try:
        _read_until(master, b"", 1.0)  # let it connect and start
        os.write(master, b"ready\n")
        _read_until(master, b"ready", 20)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            os.write(master, b"x")
            _read_until(master, b"x", 5)
            samples.append((time.perf_counter() - start) * 1000)
        return samples
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(master)


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            seen += os.read(fd, 65536)
            if marker and marker in seen:
                return seen
    if marker:
        raise SystemExit(f"no echo of {marker!r} within {timeout} s: {seen[-200:]!r}")
    return seen


def main() -> None:
    import docker

    client = docker.from_env()
    image = busybox_image_build(client, "remotegpu-bench/busybox")
    with stack(PREFIX) as s:
        connection = s.environment(image, ["sleep", "1000000"], "box")
        ssh = connection["ssh"]
        known_hosts = s.work / "known_hosts_gateway"
        known_hosts.write_text(ssh["known_hosts"] + "\n")
        gateway = ssh_options(s.key, known_hosts)
        target = f"{ssh['user']}@127.0.0.1"
        wait(
            lambda: (
                subprocess.run(
                    ["ssh", "-p", str(ssh["port"]), *gateway, target, "true"], capture_output=True
                ).returncode
                == 0
            ),
            30,
            "the gateway to accept the key",
            0.2,
        )
        container = client.containers.get(f"rgpu-env-{connection['id']}")
        volume = next(m for m in container.attrs["Mounts"] if m["Destination"] == "/workspace")
        folder = Path(volume["Source"])
        sshd, sshd_port, sshd_known = start_sshd(s.work, s.key)
        try:
            wait(
                lambda: (
                    subprocess.run(
                        [
                            "ssh",
                            "-p",
                            str(sshd_port),
                            *ssh_options(s.key, sshd_known),
                            "root@127.0.0.1",
                            "true",
                        ],
                        capture_output=True,
                    ).returncode
                    == 0
                ),
                30,
                "sshd to accept the key",
                0.2,
            )
            source = s.work / "payload.bin"
            with open(source, "wb") as handle:
                for _ in range(SIZE_MB):
                    handle.write(os.urandom(1 << 20))
            ours, floor = [], []
            for n in range(COPIES):
                ours.append(
                    timed(
                        [
                            "scp",
                            "-P",
                            str(ssh["port"]),
                            *gateway,
                            str(source),
                            f"{target}:/workspace/copy-{n}.bin",
                        ]
                    )
                )
                floor.append(
                    timed(
                        [
                            "scp",
                            "-P",
                            str(sshd_port),
                            *ssh_options(s.key, sshd_known),
                            str(source),
                            f"root@127.0.0.1:{folder}/floor-{n}.bin",
                        ]
                    )
                )
                for path in (folder / f"copy-{n}.bin", folder / f"floor-{n}.bin"):
                    assert path.stat().st_size == SIZE_MB << 20, path
                    path.unlink()
                print(f"copy {n}: gateway {ours[-1]:.2f} s, sshd {floor[-1]:.2f} s", flush=True)
            echo = echo_round_trips(
                ["ssh", "-tt", "-p", str(ssh["port"]), *gateway, target, "cat"], ECHOES
            )
            echo_floor = echo_round_trips(["docker", "exec", "-it", container.id, "cat"], ECHOES)
        finally:
            sshd.terminate()
            sshd.wait(10)
    mb_per_s = SIZE_MB / statistics.median(ours)
    floor_mb_per_s = SIZE_MB / statistics.median(floor)
    echo_median, floor_echo_median = statistics.median(echo), statistics.median(echo_floor)
    print(
        f"echo: gateway median {echo_median:.2f} ms (p90 {_p90(echo):.2f}), "
        f"docker exec -it median {floor_echo_median:.2f} ms (p90 {_p90(echo_floor):.2f})"
    )
    print(
        json.dumps(
            {
                "bench": "ssh",
                "size_mb": SIZE_MB,
                "mb_per_s": round(mb_per_s, 1),
                "floor_mb_per_s": round(floor_mb_per_s, 1),
                "ratio": round(mb_per_s / floor_mb_per_s, 2),
                "echo_median_ms": round(echo_median, 2),
                "floor_echo_median_ms": round(floor_echo_median, 2),
                "added_ms": round(echo_median - floor_echo_median, 2),
            }
        )
    )


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


if __name__ == "__main__":
    main()
