"""``make run``: the whole product in one terminal.

Starts embedded PostgreSQL and Redis (unless ``DATABASE_URL`` / ``REDIS_URL`` are set), migrates,
seeds the demo, then runs daphne, a Celery worker, Celery beat and a local host agent under
honcho. Ctrl-C stops every process and then the embedded services: nothing is left running.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from honcho.manager import Manager
from honcho.printer import Printer

from . import docker_engine, embedded, local_agent


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], check=True, env=env, cwd=embedded.BASE_DIR)


def _seed_environments(env: dict[str, str]) -> None:
    """The local Docker Engine (started when installed and we may), the demo image in it, and
    the demo specs; without an engine, say how to get one."""
    client, note = docker_engine.engine_ensure(embedded.data_dir() / "dockerd.log")
    if note:
        print(note, flush=True)
    image = None
    if client is not None:
        image, why = docker_engine.demo_image(client)
        if why:
            print(why, flush=True)
    _manage(
        "seed_environments_demo",
        "--gpu-model",
        local_agent.local_gpu_model(),
        "--image",
        image or "",
        env=env,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    options = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")
    env.setdefault("SITE_URL", f"http://{options.host}:{options.port}")
    env["PYTHONUNBUFFERED"] = "1"
    try:
        embedded.start()
        _manage("migrate", "--no-input", "-v", "0", env=env)
        _manage("seed_demo", env=env)
        _seed_environments(env)
        _manage("seed_billing_demo", env=env)

        python = shlex.quote(sys.executable)
        manager = Manager(Printer(sys.stdout))
        manager.add_process(
            "web",
            f"{python} -m daphne -b {shlex.quote(options.host)} -p {options.port} "
            "remotegpu.asgi:application",
            env=env,
        )
        manager.add_process(
            "worker", f"{python} -m celery -A remotegpu worker -l info -c 2", env=env
        )
        manager.add_process(
            "beat",
            f"{python} -m celery -A remotegpu beat -l info "
            f"-s {shlex.quote(str(embedded.data_dir() / 'celerybeat-schedule'))}",
            env=env,
        )
        manager.add_process(
            "agent",
            f"{python} -m remotegpu.core.local_agent --server {shlex.quote(env['SITE_URL'])}",
            env=env,
        )
        print(
            f"\nRemoteGPU is starting at {env['SITE_URL']}/  (Ctrl-C stops everything)\n",
            flush=True,
        )
        manager.loop()
        return manager.returncode or 0
    finally:
        embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
