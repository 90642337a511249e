"""Command handlers: results, time limits, deadlines, failures."""

from __future__ import annotations

import asyncio
import json
import time

from remotegpu_agent import __version__, commands
from remotegpu_agent.commands import CommandContext, execute
from remotegpu_agent.gpu import FakeBackend
from remotegpu_agent.protocol import MAX_MESSAGE_BYTES


def _run(kind, payload=None, context=None, deadline=0.0):
    context = context or CommandContext(FakeBackend(count=1))
    return asyncio.run(execute(kind, payload or {}, context, deadline))


def test_ping():
    before = time.time()
    outcome = _run("ping")
    assert outcome.ok is True
    assert outcome.result["pong"] is True
    assert before <= outcome.result["time"] <= time.time()


def test_collect_diagnostics(tmp_path):
    log_file = tmp_path / "agent.log"
    log_file.write_text("".join(f"line {n}\n" for n in range(150)))
    context = CommandContext(FakeBackend(count=2), log_file=log_file, started_at=time.time() - 5)
    outcome = _run("collect_diagnostics", context=context)
    assert outcome.ok is True, outcome.error
    result = outcome.result
    assert result["agent_version"] == __version__
    assert result["python_version"].count(".") == 2
    assert 5 <= result["agent_uptime_seconds"] < 60
    assert result["host_uptime_seconds"] > 0
    assert result["facts"]["cpu_cores"] >= 1
    assert result["facts"]["gpu_backend"] == "fake"
    assert result["sample"]["memory_total"] == result["facts"]["memory_total"]
    assert [gpu["index"] for gpu in result["gpus"]] == [0, 1]
    assert [s["uuid"] for s in result["gpu_samples"]] == [g["uuid"] for g in result["gpus"]]
    assert len(result["log_tail"]) == 100
    assert result["log_tail"][0] == "line 50"
    assert result["log_tail"][-1] == "line 149"
    assert len(json.dumps(result)) < MAX_MESSAGE_BYTES


def test_log_tail_is_bounded(tmp_path):
    log_file = tmp_path / "agent.log"
    log_file.write_text(("x" * 5000 + "\n") * 200)
    tail = commands.log_tail(log_file)
    assert all(len(line) == commands.LOG_LINE_MAX_CHARS for line in tail)
    assert sum(map(len, tail)) <= commands.LOG_TAIL_MAX_BYTES
    assert commands.log_tail(None) == []
    assert commands.log_tail(tmp_path / "missing.log") == []


def test_unknown_kind_fails_with_a_reason():
    outcome = _run("format_disk")
    assert outcome.ok is False
    assert "unknown command kind 'format_disk'" in outcome.error


def test_a_handler_is_bounded_in_time(monkeypatch):
    monkeypatch.setitem(commands.HANDLERS, "ping", lambda payload, context: time.sleep(0.5))
    monkeypatch.setitem(commands.TIME_LIMITS, "ping", 0.1)
    started = time.monotonic()
    outcome = _run("ping")
    assert outcome.ok is False
    assert "did not finish within 0.1 s" in outcome.error
    assert time.monotonic() - started < 1.5


def test_a_past_deadline_fails_without_running(monkeypatch):
    calls = []
    monkeypatch.setitem(commands.HANDLERS, "ping", lambda payload, context: calls.append(1))
    outcome = _run("ping", deadline=time.time() - 1)
    assert outcome.ok is False
    assert "deadline passed" in outcome.error
    assert calls == []


def test_a_failing_handler_is_a_failed_result(monkeypatch):
    def broken(payload, context):
        raise RuntimeError("sensor on fire")

    monkeypatch.setitem(commands.HANDLERS, "ping", broken)
    outcome = _run("ping")
    assert outcome.ok is False
    assert outcome.error == "ping failed: RuntimeError: sensor on fire"
