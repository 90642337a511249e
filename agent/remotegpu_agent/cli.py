"""``remotegpu-agent``: join a control plane, run, say how it is going, show the GPUs.

Exit statuses: 0 fine; 1 ``status`` found the agent not running or not connected; 2 bad input,
a refused join or an unreadable state folder; 3 the server refused the host's credential.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from . import __version__
from .client import EXIT_CONFIG, Agent
from .containers import DockerDriver
from .dockerexec import DockerAPI
from .gateway import DEFAULT_PORT as DEFAULT_SSH_PORT
from .gateway import Gateway
from .gpu import BACKENDS, GPUBackend, get_backend
from .host import host_facts
from .protocol import MAX_HEARTBEAT_INTERVAL, VERSION
from .state import AgentConfig, AgentStatus, StateDir, StateError, parse_iso

JOIN_PATH = "/api/v1/agent/join/"
JOIN_TIMEOUT = 30


TOKEN_FROM_STDIN = "-"  # noqa: S105 - not a token: `--token -` reads it from standard input


def _fail(message: str, status: int = EXIT_CONFIG) -> int:
    print(f"remotegpu-agent: {message}", file=sys.stderr)
    return status


# join ---------------------------------------------------------------------------------------


def _error_message(error: urllib.error.HTTPError) -> str:
    """The API's ``{"error": {"code", "message", "fields"}}`` as one line."""
    try:
        body = json.loads(error.read())
        detail = body["error"]
        message = str(detail["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"
    fields = detail.get("fields") or {}
    if isinstance(fields, dict) and fields:
        parts = []
        for name, problems in fields.items():
            text = "; ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
            parts.append(f"{name}: {text}")
        message = f"{message} ({', '.join(parts)})"
    return message


def _joined_config(server: str, body: Any) -> AgentConfig:
    try:
        config = AgentConfig(
            server_url=server,
            websocket_url=body["websocket_url"],
            host_id=body["host_id"],
            host_name=body["host_name"],
            credential=body["credential"],
            heartbeat_interval=body.get("heartbeat_interval", 15),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"the server's answer lacks {exc}") from exc
    if not isinstance(config.host_id, int) or not all(
        isinstance(value, str) and value
        for value in (config.websocket_url, config.host_name, config.credential)
    ):
        raise ValueError("the server's answer is malformed")
    return config


def command_join(args: argparse.Namespace) -> int:
    server = args.server.rstrip("/")
    if urllib.parse.urlsplit(server).scheme not in ("http", "https"):
        return _fail(f"--server must be an http:// or https:// URL, not {args.server!r}")
    token = args.token
    if args.token == TOKEN_FROM_STDIN:  # out of the process list
        token = sys.stdin.readline().strip()
        if not token:
            return _fail("--token -: no token on standard input")
    name = args.name or socket.gethostname()
    body = json.dumps({"token": token, "name": name, "facts": asdict(host_facts())})
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        server + JOIN_PATH,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"remotegpu-agent/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=JOIN_TIMEOUT) as response:  # noqa: S310
            config = _joined_config(server, json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return _fail(f"join refused: {_error_message(exc)}")
    except urllib.error.URLError as exc:
        return _fail(f"cannot reach {server}: {exc.reason}")
    except (OSError, ValueError) as exc:
        return _fail(f"join failed: {exc}")
    state = StateDir(args.state_dir)
    try:
        state.save_config(config)
    except OSError as exc:
        return _fail(f"cannot save the configuration in {state.path}: {exc}")
    print(f"joined as {config.host_name} (host {config.host_id})")
    print(f"configuration saved in {state.config_path}; start the agent: remotegpu-agent run")
    return 0


# run ----------------------------------------------------------------------------------------


def _configure_logging(level: str, log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 2**20, backupCount=3)
        )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _backend(args: argparse.Namespace) -> GPUBackend:
    options = {}
    if args.gpu_backend == "fake":
        options = {"count": args.fake_gpus, "model": args.fake_model}
        options["control_file"] = args.fake_control
    return get_backend(args.gpu_backend, **options)


def command_run(args: argparse.Namespace) -> int:
    log_file = Path(args.log_file) if args.log_file else None
    _configure_logging(args.log_level, log_file)
    state = StateDir(args.state_dir)
    try:
        config = state.load_config()
        lock = state.lock()
    except StateError as exc:
        return _fail(str(exc))
    backend = _backend(args)
    gateway = None
    if not args.no_docker and not args.no_ssh:
        gateway = Gateway(
            DockerAPI(),
            state.path / "ssh_host_ed25519_key",
            host=args.ssh_listen,
            port=args.ssh_port,
        )
    agent = Agent(
        config,
        state,
        backend,
        heartbeat_interval=args.heartbeat_interval,
        disk_path=args.disk_path,
        log_file=log_file,
        docker=None
        if args.no_docker
        else DockerDriver(gpu_backend=backend.name, publish_address=args.publish_address),
        gateway=gateway,
    )
    try:
        return asyncio.run(agent.run())
    finally:
        backend.close()
        lock.close()


# status -------------------------------------------------------------------------------------


def _alive(pid: int, started_at: str) -> bool:
    """Is ``pid`` still the agent that wrote the status file (not a process that reused it)?"""
    started = parse_iso(started_at)
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    # started_at is written in whole seconds, a moment after the process began.
    return started is None or created <= started.timestamp() + 2


def _age(value: str | None, now: datetime) -> float | None:
    moment = parse_iso(value)
    return round((now - moment).total_seconds(), 1) if moment else None


def _late(status: AgentStatus, heartbeat_age: float | None, now: datetime) -> bool:
    """No heartbeat for three intervals: the server calls such a host offline, so does this."""
    if not status.heartbeat_interval:
        return False
    grace = 3 * status.heartbeat_interval + 5
    connected_for = _age(status.connected_since, now) or 0
    return connected_for > grace and (heartbeat_age is None or heartbeat_age > grace)


def status_report(state: StateDir) -> dict[str, Any]:
    report: dict[str, Any] = {
        "state_dir": str(state.path),
        "joined": False,
        "server": "",
        "host_id": None,
        "host_name": "",
        "running": False,
        "pid": None,
        "connected": False,
        "connected_since": None,
        "last_heartbeat_at": None,
        "last_heartbeat_age_seconds": None,
        "heartbeat_stale": False,
        "last_error": "",
    }
    try:
        config = state.load_config()
    except StateError as exc:
        report["last_error"] = str(exc)
    else:
        report.update(
            joined=True,
            server=config.server_url,
            host_id=config.host_id,
            host_name=config.host_name,
        )
    status = state.load_status()
    if status is None:
        return report
    now = datetime.now(timezone.utc)
    running = _alive(status.pid, status.started_at)
    connected = running and status.connected
    age = _age(status.last_heartbeat_at, now)
    report.update(
        running=running,
        pid=status.pid if running else None,
        connected=connected,
        connected_since=status.connected_since if connected else None,
        last_heartbeat_at=status.last_heartbeat_at,
        last_heartbeat_age_seconds=age,
        heartbeat_stale=connected and _late(status, age, now),
        last_error=status.last_error or report["last_error"],
    )
    return report


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s ago"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s ago"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m ago"


def command_status(args: argparse.Namespace) -> int:
    report = status_report(StateDir(args.state_dir))
    healthy = report["running"] and report["connected"] and not report["heartbeat_stale"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if healthy else 1
    now = datetime.now(timezone.utc)
    if report["connected"]:
        connected = f"yes, since {report['connected_since']}"
        connected += f" ({_ago(_age(report['connected_since'], now))})"
    else:
        connected = "no"
    late = " (late: the server will call this host offline)" if report["heartbeat_stale"] else ""
    lines = [
        ("state folder", report["state_dir"]),
        ("server", report["server"] or "not joined"),
        (
            "host",
            f"{report['host_name']} (host {report['host_id']})" if report["joined"] else "-",
        ),
        ("agent", f"running (pid {report['pid']})" if report["running"] else "not running"),
        ("connected", connected),
        ("last heartbeat", _ago(report["last_heartbeat_age_seconds"]) + late),
        ("last error", report["last_error"] or "-"),
    ]
    for label, value in lines:
        print(f"{label + ':':<16}{value}")
    return 0 if healthy else 1


# gpus ---------------------------------------------------------------------------------------


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def _figure(value: float | None, unit: str = "") -> str:
    """A figure for the table; "n/a" when the GPU or driver cannot give it (``None``)."""
    return "n/a" if value is None else f"{value:.0f}{unit}"


def command_gpus(args: argparse.Namespace) -> int:
    """What the GPU back end sees on this host now: the check to run before ``join``."""
    logging.basicConfig(level=logging.WARNING, format="remotegpu-agent: %(message)s")
    backend = _backend(args)
    try:
        inventory, samples = backend.inventory(), backend.sample()
    finally:
        backend.close()
    figures = {sample.uuid: sample for sample in samples}
    if args.json:
        print(
            json.dumps(
                {
                    "backend": backend.name,
                    "gpus": [
                        {**asdict(gpu), "sample": asdict(figures[gpu.uuid])}
                        if gpu.uuid in figures
                        else asdict(gpu)
                        for gpu in inventory
                    ],
                },
                indent=2,
            )
        )
        return 0
    if not inventory:
        print(f"no GPUs found by the {backend.name} back end")
        return 0
    print(f"{len(inventory)} GPU(s) found by the {backend.name} back end")
    for gpu in inventory:
        print(f"[{gpu.index}] {gpu.name}  {gpu.uuid}")
        print(
            f"    memory {_gib(gpu.memory_total)}, driver {gpu.driver_version or '-'}, "
            f"CUDA {gpu.cuda_version or '-'}, compute capability {gpu.compute_capability or '-'}"
        )
        sample = figures.get(gpu.uuid)
        if sample is None:
            print("    no figures: the GPU did not answer")
            continue
        print(
            f"    utilisation {_figure(sample.utilization, ' %')}, memory used "
            f"{_gib(sample.memory_used)}, temperature {_figure(sample.temperature, ' °C')}, "
            f"power {_figure(sample.power_draw)} / {_figure(sample.power_limit, ' W')}, "
            f"ECC errors {_figure(sample.ecc_errors)}, processes {sample.processes}"
        )
    return 0


# version and the parser ---------------------------------------------------------------------


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_HEARTBEAT_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_HEARTBEAT_INTERVAL}, got {text!r}"
        )
    return value


def command_version(args: argparse.Namespace) -> int:
    print(f"remotegpu-agent {__version__} (protocol v{VERSION})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remotegpu-agent",
        description="Connects this GPU host to a RemoteGPU control plane.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        help="where the configuration and state live (default: $REMOTEGPU_AGENT_STATE_DIR, "
        "/var/lib/remotegpu-agent as root, ~/.local/state/remotegpu-agent otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    join = commands.add_parser(
        "join", parents=[common], help="trade a join token for this host's credential"
    )
    join.add_argument("--server", required=True, help="the control plane's URL")
    join.add_argument(
        "--token",
        required=True,
        help="a join token from an operator, or - to read it from standard input (which keeps "
        "it out of the process list)",
    )
    join.add_argument("--name", help="the host's name (default: the hostname)")
    join.set_defaults(handler=command_join)

    gpu_options = argparse.ArgumentParser(add_help=False)
    gpu_options.add_argument(
        "--gpu-backend",
        choices=BACKENDS,
        default=os.environ.get("REMOTEGPU_AGENT_GPU_BACKEND", "auto"),
        help="where GPU figures come from: nvml (real GPUs; auto is the same) or fake",
    )
    gpu_options.add_argument("--fake-gpus", type=int, default=2, help="how many fake GPUs")
    gpu_options.add_argument(
        "--fake-model", default="NVIDIA A100-SXM4-80GB", help="fake GPUs' model"
    )
    gpu_options.add_argument(
        "--fake-control",
        default=os.environ.get("REMOTEGPU_AGENT_FAKE_CONTROL"),
        help="JSON file steering the fake GPUs, re-read on every sample",
    )

    run = commands.add_parser(
        "run", parents=[common, gpu_options], help="connect and report until stopped"
    )
    run.add_argument(
        "--heartbeat-interval",
        type=_interval,
        help="seconds between heartbeats, overriding the server's; the agent tells the server, "
        "which judges the host offline after three of them without a heartbeat",
    )
    run.add_argument("--disk-path", default="/", help="the file system whose size is reported")
    run.add_argument(
        "--publish-address",
        default="0.0.0.0",
        help="the host address environments' ports are published on (default: all)",
    )
    run.add_argument(
        "--no-docker",
        action="store_true",
        help="run no environments on this host (it reports no container runtime)",
    )
    run.add_argument(
        "--ssh-port",
        type=int,
        default=int(os.environ.get("REMOTEGPU_AGENT_SSH_PORT", DEFAULT_SSH_PORT)),
        help=f"the SSH gateway's port (default {DEFAULT_SSH_PORT}; 0: any free port)",
    )
    run.add_argument(
        "--no-ssh", action="store_true", help="no SSH gateway on this host (no SSH, SFTP or scp)"
    )
    run.add_argument(
        "--ssh-listen",
        default=os.environ.get("REMOTEGPU_AGENT_SSH_LISTEN", "0.0.0.0"),
        help="the address the SSH gateway listens on (default: all)",
    )
    run.add_argument(
        "--log-file",
        default=os.environ.get("REMOTEGPU_AGENT_LOG_FILE"),
        help="also log to this file (rotated at 10 MiB)",
    )
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(handler=command_run)

    status = commands.add_parser(
        "status", parents=[common], help="is the agent running and connected? (exit 0 if so)"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=command_status)

    gpus = commands.add_parser(
        "gpus", parents=[gpu_options], help="show the GPUs the agent sees on this host, now"
    )
    gpus.add_argument("--json", action="store_true", help="machine-readable output")
    gpus.set_defaults(handler=command_gpus)

    version = commands.add_parser("version", help="print the agent's version")
    version.set_defaults(handler=command_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
