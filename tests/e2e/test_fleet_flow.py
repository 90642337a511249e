"""The fleet's acceptance flow, end to end: real Chromium, a real daphne, a real agent.

An operator signs in, mints a join token on the operator pages and takes the one-line command
the page shows; a real ``remotegpu-agent`` (fake GPU back end) joins with it and runs. The fleet
overview counts the host online with its GPUs, the host list shows it online, and the host page
lists both GPUs while its charts fill and keep moving without a reload; a steered GPU
temperature reaches the GPU table.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from playwright.sync_api import Page, expect

from accounts.tests.factories import PASSWORD, OperatorFactory
from machines.choices import HostStatus
from machines.models import GPU, GPUSample, Host
from tests.integration.conftest import AGENT, START_TIMEOUT, start_agent, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(180)]

HOST_NAME = "e2e-gpu-01"
GPU_MODEL = "NVIDIA A100-SXM4-80GB"  # the fake back end's default model
HOST_CHARTS = ["cpu", "memory", "gpu-utilization", "gpu-memory", "gpu-temperature", "gpu-power"]
GPU_CHARTS = [name for name in HOST_CHARTS if name.startswith("gpu-")]
# Charts bucket an hour into 30 s steps: a second point needs at most one more step.
CHART_TIMEOUT_MS = 45_000
FLEET_SCREENSHOT = "fleet-flow-fleet-page.png"
HOST_SCREENSHOT = "fleet-flow-host-page.png"

# Per chart of a [data-metrics] block: the number of drawn (non-gap) points of each dataset.
CHART_POINTS_JS = """
block => Object.fromEntries(
  Array.from(block.querySelectorAll("canvas[data-series]")).map(canvas => {
    const chart = Chart.getChart(canvas);
    const sets = chart ? chart.data.datasets : [];
    return [canvas.dataset.series, sets.map(set => set.data.filter(p => p.y !== null).length)];
  })
)
"""
# Every chart of the host page has at least two points in each dataset, one dataset per GPU
# on the GPU charts.
HOST_CHARTS_FILLED_JS = """
([gpuCharts, gpus]) => {
  const block = document.querySelector("[data-metrics=host]");
  const canvases = Array.from(block.querySelectorAll("canvas[data-series]"));
  return canvases.length > 0 && canvases.every(canvas => {
    const chart = Chart.getChart(canvas);
    if (!chart) { return false; }
    const sets = chart.data.datasets;
    const wanted = gpuCharts.includes(canvas.dataset.series) ? gpus : 1;
    return sets.length === wanted
      && sets.every(set => set.data.filter(p => p.y !== null).length >= 2);
  });
}
"""
# Everything the host page's charts show, to tell whether a refresh changed it.
HOST_CHART_DATA_JS = """
() => JSON.stringify(Array.from(document.querySelectorAll("[data-metrics=host] canvas"))
  .map(canvas => Chart.getChart(canvas).data.datasets.map(set => set.data)))
"""


def sign_in(page: Page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    form = page.locator("form:has(input[name=login])")
    form.locator("input[name=login]").fill(email)
    form.locator("input[name=password]").fill(password)
    form.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def mint_join_token(page: Page) -> tuple[str, str]:
    """Mint a token on the operator page; the join command and the token it shows once."""
    page.goto("/operator/join-tokens/")
    form = page.get_by_test_id("join-token-form")
    form.get_by_label("Name").fill("e2e rack")
    form.get_by_label("Labels").fill("rack=e2e")
    form.locator("button[type=submit]").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("e2e rack")
    return (
        page.get_by_test_id("join-command").input_value(),
        page.get_by_test_id("token-value").input_value(),
    )


def run_join_command(command: str, server_url: str, state) -> None:
    """Run the page's join command as an operator would (the agent is installed here), with
    the host's name and a state folder of the test's own."""
    join, _, run = command.partition(" && ")
    assert run == "remotegpu-agent run", command
    argv = shlex.split(join)
    assert argv[:2] == ["remotegpu-agent", "join"], command
    assert argv[argv.index("--server") + 1] == server_url, command
    result = subprocess.run(
        [AGENT, *argv[1:], "--name", HOST_NAME, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_mints_a_token_and_the_joined_host_shows_live(
    new_daphne_page, daphne_server, tmp_path, artifacts_dir
):
    operator = OperatorFactory(email="ops@example.com")
    page = new_daphne_page()
    sign_in(page, operator.email, PASSWORD)

    command, token = mint_join_token(page)
    assert token.startswith("rjt_")
    assert token in command
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text("{}")
    run_join_command(command, daphne_server.base_url, state)
    agent = start_agent(state, control, tmp_path)
    try:
        host = wait_until(
            lambda: Host.objects.filter(
                name=HOST_NAME, status=HostStatus.ONLINE, connected=True
            ).first(),
            timeout=START_TIMEOUT,
            what="the host to be online",
            process=agent,
        )
        wait_until(
            lambda: GPU.objects.filter(host=host).count() == 2,
            timeout=START_TIMEOUT,
            what="the host's two GPUs",
            process=agent,
        )
        wait_until(
            lambda: GPUSample.objects.filter(gpu__host=host).exists(),
            timeout=START_TIMEOUT,
            what="the first stored heartbeat",
            process=agent,
        )

        # The fleet overview counts it, and its average-utilisation chart has figures.
        page.goto("/operator/")
        expect(page.get_by_test_id("hosts-online")).to_have_text("1")
        expect(page.get_by_test_id("hosts-pending")).to_have_text("0")
        expect(page.get_by_test_id("hosts-offline")).to_have_text("0")
        expect(page.get_by_test_id("gpus-total")).to_have_text("2")
        expect(page.get_by_test_id("gpus-healthy")).to_have_text("2")
        expect(page.get_by_test_id("gpus-free")).to_have_text("2")
        model_row = page.get_by_test_id("gpu-model-row")
        expect(model_row).to_have_count(1)
        expect(model_row).to_contain_text(GPU_MODEL)
        expect(model_row.get_by_test_id("gpu-model-total")).to_have_text("2")
        fleet_chart = page.get_by_test_id("fleet-chart")
        expect(fleet_chart).to_have_attribute("data-draws", re.compile(r"[1-9]"))
        assert fleet_chart.evaluate(CHART_POINTS_JS)["fleet-utilization"][0] >= 1
        page.screenshot(path=artifacts_dir / FLEET_SCREENSHOT, full_page=True)

        # The host list shows it online, with its GPUs.
        page.goto("/operator/hosts/")
        row = page.locator(f"[data-testid=host-row][data-host-name={HOST_NAME}]")
        expect(row.get_by_test_id("host-status")).to_have_text("Online")
        expect(row).to_contain_text(f"2 × {GPU_MODEL}")
        expect(row).to_contain_text("connected")
        host_url = f"/operator/hosts/{host.pk}/"
        expect(row.get_by_role("link", name=HOST_NAME)).to_have_attribute("href", host_url)

        # The host page: both GPUs in the table, every chart filling. Its charts refresh every
        # second rather than at the host's 15 s heartbeat interval the server asks for.
        page.goto(f"{host_url}?refresh=1")
        expect(page.get_by_test_id("host-status")).to_have_text("Online")
        expect(page.get_by_test_id("gpu-row")).to_have_count(2)
        # The token's labels were applied to the host that joined with it.
        expect(page.get_by_test_id("labels-form").locator("input[name=labels]")).to_have_value(
            "rack=e2e"
        )
        for uuid in GPU.objects.filter(host=host).values_list("uuid", flat=True):
            expect(page.locator(f"[data-testid=gpu-row][data-gpu-uuid='{uuid}']")).to_have_count(1)
        charts = page.get_by_test_id("host-charts")
        expect(charts).to_have_attribute("data-refresh-seconds", "1")
        page.evaluate("window.sameDocument = true")
        page.wait_for_function(
            HOST_CHARTS_FILLED_JS, arg=[GPU_CHARTS, 2], polling=500, timeout=CHART_TIMEOUT_MS
        )

        # Live: the figures move on their own, in the same document (no reload).
        draws = int(charts.get_attribute("data-draws"))
        before = page.evaluate(HOST_CHART_DATA_JS)
        page.wait_for_function(
            "([draws, before]) => Number(document.querySelector('[data-metrics=host]')"
            ".dataset.draws) > draws && (" + HOST_CHART_DATA_JS + ")() !== before",
            arg=[draws, before],
            polling=500,
            timeout=CHART_TIMEOUT_MS,
        )
        assert page.evaluate("window.sameDocument") is True

        # A steered temperature (the fake GPUs never pass 80 °C on their own) reaches the table.
        control.write_text(json.dumps({"temperature": 92}))
        wait_until(
            lambda: GPU.objects.filter(host=host, temperature=92).count() == 2,
            timeout=15,
            what="the steered temperature to be stored",
            process=agent,
        )
        page.reload()
        temperatures = page.get_by_test_id("gpu-temperature")
        expect(temperatures).to_have_text(["92 °C", "92 °C"])
        page.wait_for_function(
            HOST_CHARTS_FILLED_JS, arg=[GPU_CHARTS, 2], polling=500, timeout=CHART_TIMEOUT_MS
        )
        page.screenshot(path=artifacts_dir / HOST_SCREENSHOT, full_page=True)
        agent.ensure_running()
    finally:
        agent.stop()
