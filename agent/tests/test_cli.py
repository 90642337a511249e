"""``remotegpu-agent join`` against a real HTTP server, and the small commands."""

from __future__ import annotations

import io
import json
import socket
import stat
import threading
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from remotegpu_agent import __version__, cli
from remotegpu_agent.cli import main
from remotegpu_agent.protocol import GPUInfo, GPUSample, HostFacts
from remotegpu_agent.state import StateDir

CREDENTIAL = "rhc_s3cret_credential_value"


class JoinServer:
    """Answers every POST with ``status`` and ``body``; records what it was sent."""

    def __init__(self, status: int, body: str) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                server.requests.append(
                    {
                        "path": self.path,
                        "content_type": self.headers["Content-Type"],
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def join_server():
    servers = []

    def start(status: int, body) -> JoinServer:
        server = JoinServer(status, body if isinstance(body, str) else json.dumps(body))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


JOINED = {
    "host_id": 7,
    "host_name": "gpu-01",
    "credential": CREDENTIAL,
    "websocket_url": "ws://127.0.0.1:8000/agent/ws/",
    "heartbeat_interval": 15,
}


def test_join_saves_a_private_config_and_never_prints_the_credential(join_server, tmp_path, capsys):
    server = join_server(201, JOINED)
    state = StateDir(tmp_path / "state")
    arguments = ["--server", server.url + "/", "--token", "rjt_tok", "--name", "gpu-01"]
    status = main(["join", *arguments, "--state-dir", str(state.path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.splitlines()[0] == "joined as gpu-01 (host 7)"
    assert CREDENTIAL not in out + err

    (request,) = server.requests
    assert request["path"] == "/api/v1/agent/join/"
    assert request["content_type"] == "application/json"
    assert request["body"]["token"] == "rjt_tok"
    assert request["body"]["name"] == "gpu-01"
    assert set(request["body"]["facts"]) == {f.name for f in fields(HostFacts)}
    assert request["body"]["facts"]["hostname"] == socket.gethostname()

    assert stat.S_IMODE(state.config_path.stat().st_mode) == 0o600
    config = state.load_config()
    assert (config.server_url, config.host_id, config.host_name) == (server.url, 7, "gpu-01")
    assert config.credential == CREDENTIAL
    assert config.websocket_url == JOINED["websocket_url"]
    assert config.heartbeat_interval == 15


def test_join_names_the_host_after_its_hostname_by_default(join_server, tmp_path, capsys):
    server = join_server(201, JOINED)
    assert main(["join", "--server", server.url, "--token", "t", "--state-dir", str(tmp_path)]) == 0
    assert server.requests[0]["body"]["name"] == socket.gethostname()


def test_join_reads_the_token_from_standard_input(join_server, tmp_path, monkeypatch, capsys):
    server = join_server(201, JOINED)
    monkeypatch.setattr("sys.stdin", io.StringIO("rjt_from_stdin\n"))
    arguments = ["--server", server.url, "--token", "-", "--state-dir", str(tmp_path)]
    assert main(["join", *arguments]) == 0, capsys.readouterr().err
    assert server.requests[0]["body"]["token"] == "rjt_from_stdin"


def test_join_with_nothing_on_standard_input_exits_2(join_server, tmp_path, monkeypatch, capsys):
    server = join_server(201, JOINED)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    arguments = ["--server", server.url, "--token", "-", "--state-dir", str(tmp_path)]
    assert main(["join", *arguments]) == 2
    assert "no token on standard input" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {
                "error": {
                    "code": "join_token_invalid",
                    "message": "This join token has expired.",
                    "fields": {"token": ["expired"]},
                }
            },
            "join refused: This join token has expired. (token: expired)",
        ),
        (
            403,
            {"error": {"code": "forbidden", "message": "Joining is disabled.", "fields": {}}},
            "join refused: Joining is disabled.",
        ),
        (502, "<html>Bad Gateway</html>", "join refused: HTTP 502"),
        (201, {"host_id": 7, "host_name": "gpu-01"}, "join failed: the server's answer lacks"),
        (201, {**JOINED, "host_id": "7"}, "join failed: the server's answer is malformed"),
    ],
)
def test_join_errors_are_explained_and_exit_2(
    join_server, tmp_path, capsys, status, body, expected
):
    server = join_server(status, body)
    state = StateDir(tmp_path / "state")
    exit_status = main(
        ["join", "--server", server.url, "--token", "t", "--state-dir", str(state.path)]
    )
    out, err = capsys.readouterr()
    assert exit_status == 2
    assert expected in err
    assert out == ""
    assert not state.config_path.exists()


def test_join_without_a_server_exits_2(tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["join", "--server", url, "--token", "t", "--state-dir", str(tmp_path)]) == 2
    assert f"cannot reach {url}" in capsys.readouterr().err
    assert main(["join", "--server", "ftp://x", "--token", "t", "--state-dir", str(tmp_path)]) == 2
    assert "http:// or https://" in capsys.readouterr().err


def test_run_without_joining_says_how_to_join(tmp_path, capsys):
    assert main(["run", "--state-dir", str(tmp_path), "--gpu-backend", "fake"]) == 2
    assert "remotegpu-agent join" in capsys.readouterr().err


def test_status_before_joining(tmp_path, capsys):
    assert main(["status", "--json", "--state-dir", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["joined"], report["running"], report["connected"]) == (False, False, False)


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"remotegpu-agent {__version__} (protocol v1)"


def test_gpus_shows_what_the_backend_sees(tmp_path, capsys):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"temperature": 71, "utilization": 90}))
    arguments = ["--gpu-backend", "fake", "--fake-gpus", "2", "--fake-control", str(control)]
    assert main(["gpus", *arguments]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 GPU(s) found by the fake back end"
    assert lines[1].startswith("[0] NVIDIA A100-SXM4-80GB  GPU-fake-")
    assert "memory 80.0 GiB" in lines[2]
    assert "utilisation 90 %" in lines[3]
    assert "71 °C" in lines[3]

    assert main(["gpus", "--json", *arguments]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "fake"
    assert [gpu["index"] for gpu in report["gpus"]] == [0, 1]
    assert {gpu["sample"]["temperature"] for gpu in report["gpus"]} == {71.0}
    assert all(gpu["sample"]["uuid"] == gpu["uuid"] for gpu in report["gpus"])


class _BlindBackend:
    """One GPU whose driver gives memory and nothing optional."""

    name = "nvml"

    def inventory(self):
        return [GPUInfo(uuid="GPU-blind", index=0, name="NVIDIA T4", memory_total=16 * 2**30)]

    def sample(self):
        unknown = dict.fromkeys(
            ("utilization", "temperature", "power_draw", "power_limit", "ecc_errors")
        )
        return [GPUSample(uuid="GPU-blind", memory_used=2**30, memory_total=16 * 2**30, **unknown)]

    def close(self):
        pass


def test_gpus_shows_figures_the_gpu_cannot_give_as_unknown(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_backend", lambda args: _BlindBackend())
    assert main(["gpus"]) == 0
    figures = capsys.readouterr().out.splitlines()[3]
    assert figures == (
        "    utilisation n/a, memory used 1.0 GiB, temperature n/a, power n/a / n/a, "
        "ECC errors n/a, processes 0"
    )

    assert main(["gpus", "--json"]) == 0
    (gpu,) = json.loads(capsys.readouterr().out)["gpus"]
    sample = gpu["sample"]
    assert [sample[name] for name in ("temperature", "power_draw", "ecc_errors")] == [None] * 3
    assert sample["memory_used"] == 2**30


def test_gpus_on_a_host_without_any(capsys):
    assert main(["gpus", "--gpu-backend", "fake", "--fake-gpus", "0"]) == 0
    assert capsys.readouterr().out == "no GPUs found by the fake back end\n"


@pytest.mark.parametrize("interval", ["0", "-5", "3601", "soon"])
def test_run_refuses_a_heartbeat_interval_the_server_would_refuse(tmp_path, capsys, interval):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--state-dir", str(tmp_path), "--heartbeat-interval", interval])
    assert exited.value.code == 2
    assert "--heartbeat-interval: expected seconds above 0" in capsys.readouterr().err
