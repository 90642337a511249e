"""The web terminal in a real browser: real Chromium, a real daphne, a real agent, a shell in a
real container. It echoes, follows the window's size, and two run side by side; the panel's
copy buttons copy."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from accounts.choices import Role
from accounts.services.ssh_keys import ssh_key_add
from accounts.tests.factories import PASSWORD, MembershipFactory
from environments.choices import EnvironmentStatus as S
from environments.models import Environment
from environments.services.lifecycle import environment_create, environment_stop
from environments.tests.factories import ImageFactory, SpecFactory
from machines.choices import HostStatus
from machines.models import Host
from remotegpu.core.testing_docker import busybox_image, remove_labelled, require_docker
from tests.integration.conftest import START_TIMEOUT, join_agent, start_agent, wait_until

from .test_fleet_flow import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(240)]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop"


def _screen(page) -> str:
    """What the terminal shows, as text (xterm.js's buffer)."""
    return page.evaluate(
        """() => {
          const buffer = window.remotegpuTerminal.buffer.active;
          const lines = [];
          for (let i = 0; i < buffer.length; i++) {
            lines.push(buffer.getLine(i).translateToString(true));
          }
          return lines.join("\\n");
        }"""
    )


def _wait_for_text(page, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in (screen := _screen(page)):
        if time.monotonic() > deadline:
            pytest.fail(f"the terminal never showed {text!r}; it shows:\n{screen.rstrip()}")
        time.sleep(0.1)


def _type(page, text: str) -> None:
    page.get_by_test_id("terminal").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@pytest.fixture
def docker_host(daphne_server, tmp_path):
    """A real agent with Docker and its SSH gateway; its host, the agent, the Docker client
    and an owner signed up (not yet signed in)."""
    client = require_docker()
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text("{}")
    name = f"e2e-{tmp_path.name[-12:]}"
    join_agent(daphne_server, state, name)
    agent = start_agent(state, control, tmp_path, extra_args=("--publish-address", "127.0.0.1"))
    try:
        host = wait_until(
            lambda: (
                Host.objects.filter(name=name, status=HostStatus.ONLINE, containers_known=True)
                .exclude(ssh_port=0)
                .first()
            ),
            timeout=START_TIMEOUT,
            what="the host online with Docker and its gateway",
            process=agent,
        )
        Host.objects.filter(pk=host.pk).update(address="127.0.0.1")
        host.refresh_from_db()
        owner = MembershipFactory(role=Role.OWNER)
        owner.user.current_organization = owner.organization
        owner.user.save()
        yield host, agent, client, owner
    finally:
        agent.stop()
        remove_labelled(client)


def _running(agent, owner, image, spec, name: str) -> Environment:
    # Off this thread: Playwright runs an event loop here, and the create tells the agent
    # through async_to_sync.
    with ThreadPoolExecutor(1) as pool:
        environment = pool.submit(
            environment_create,
            user=owner.user,
            organization=owner.organization,
            name=name,
            spec=spec,
            image=image,
        ).result()
    wait_until(
        lambda: Environment.objects.get(pk=environment.pk).status == S.RUNNING,
        timeout=60,
        what="the environment running",
        process=agent,
    )
    return environment


def test_web_terminal_echoes_resizes_and_runs_twice(new_daphne_page, docker_host):
    host, agent, client, owner = docker_host
    ssh_key_add(user=owner.user, name="laptop", public_key=KEY)
    image = ImageFactory(reference=busybox_image(client), command=["sleep", "3600"])
    spec = SpecFactory(gpu_model="", gpu_count=0, vcpu=1, memory_gib=1)
    environment = _running(agent, owner, image, spec, "term")

    page = new_daphne_page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, owner.user.email, PASSWORD)
    page.goto(f"/environments/{environment.pk}/")
    # The panel: the SSH command, copied by its button.
    command = page.get_by_test_id("ssh-command")
    expect(command).to_have_value(f"ssh -p {host.ssh_port} env-{environment.pk}@127.0.0.1")
    page.locator("[data-copy=connect-ssh]").click()
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == command.input_value()

    with page.context.expect_page() as opened:
        page.get_by_test_id("open-terminal").click()
    first = opened.value
    expect(first.get_by_test_id("terminal-status")).to_have_attribute("data-state", "opened")
    _type(first, "echo hello-$((6*7))")
    _wait_for_text(first, "hello-42")

    # It follows the browser window's size.
    before = first.evaluate("() => window.remotegpuTerminal.cols")
    first.set_viewport_size({"width": 700, "height": 500})
    cols = wait_until(
        lambda: (c := first.evaluate("() => window.remotegpuTerminal.cols")) < before and c,
        timeout=10,
        what="the terminal to fit the smaller window",
    )
    rows = first.evaluate("() => window.remotegpuTerminal.rows")
    _type(first, "echo size-$(stty size | tr ' ' x)")
    _wait_for_text(first, f"size-{rows}x{cols}")

    # A second terminal at the same time, each its own shell.
    second = new_daphne_page()
    sign_in(second, owner.user.email, PASSWORD)
    second.goto(f"/environments/{environment.pk}/terminal/")
    expect(second.get_by_test_id("terminal-status")).to_have_attribute("data-state", "opened")
    _type(second, "echo second-$$ > /tmp/second; cat /tmp/second")
    _wait_for_text(second, "second-")
    _type(first, "echo first-still-$((1+1))")
    _wait_for_text(first, "first-still-2")

    # Exiting the shell closes the terminal and says so.
    _type(second, "exit")
    expect(second.get_by_test_id("terminal-status")).to_have_attribute("data-state", "closed")
    # Stopping the environment closes the other.
    stopping = Environment.objects.get(pk=environment.pk)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(environment_stop, user=owner.user, environment=stopping).result()
    expect(first.get_by_test_id("terminal-status")).to_have_attribute(
        "data-state", "closed", timeout=30_000
    )


def test_the_panels_jupyter_url_opens_jupyterlab(new_daphne_page, docker_host):
    """The issue's Jupyter image (Debian from debootstrap, JupyterLab from wheels downloaded on
    the host): the page's button opens JupyterLab itself in Chromium, with the token."""
    from remotegpu.core.testing_images import jupyter_image

    _host, agent, client, owner = docker_host
    image = ImageFactory(
        reference=jupyter_image(client), command=[], ports=[{"port": 8888, "role": "jupyter"}]
    )
    spec = SpecFactory(gpu_model="", gpu_count=0, vcpu=1, memory_gib=2)
    environment = _running(agent, owner, image, spec, "lab")
    page = new_daphne_page()
    sign_in(page, owner.user.email, PASSWORD)
    page.goto(f"/environments/{environment.pk}/")
    # JupyterLab takes a few seconds to listen after the container starts.
    deadline = time.monotonic() + 60
    while True:
        with page.context.expect_page() as opened:
            page.get_by_test_id("open-jupyter").click()
        lab = opened.value
        try:
            expect(lab).to_have_title(re.compile("JupyterLab"), timeout=20_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            lab.close()
            time.sleep(2)
    assert "token=" in lab.url or "/lab" in lab.url
