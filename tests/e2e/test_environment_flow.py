"""The environments' acceptance flow in a real browser: real Chromium, a real daphne, a real
agent driving the real Docker Engine, an image pulled from a real local registry.

A customer creates an environment on the page, watches the pull progress and the status reach
running without reloading by hand, reads its container output, stops it, starts it and deletes
it.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.choices import Role
from accounts.tests.factories import PASSWORD, MembershipFactory
from environments.choices import EnvironmentStatus as S
from environments.models import Environment, EnvironmentEvent
from environments.tests.factories import ImageFactory, SpecFactory
from remotegpu.core.testing_docker import (
    busybox_image,
    image_with_unique_layer,
    remove_labelled,
    require_docker,
    start_registry,
)
from tests.integration.conftest import docker_agent, wait_until

from .test_fleet_flow import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(240)]

# Writes a line a second, so the page has output to follow, and serves a page.
COMMAND = [
    "sh",
    "-c",
    "mkdir -p /www && echo hi > /www/index.html && httpd -p 8080 -h /www && "
    "while true; do echo tick-$(date +%s); sleep 1; done",
]


@pytest.fixture
def docker_parts(tmp_path):
    client = require_docker()
    registry = start_registry(tmp_path / "registry")
    local = image_with_unique_layer(client, busybox_image(client), "remotegpu-test/e2e-image")
    reference = registry.push(client, local, "rgpu/e2e", "v1")
    client.images.remove(reference)
    client.images.remove(local)
    yield client, reference
    remove_labelled(client)
    registry.stop(client)


def test_customer_creates_watches_reads_stops_starts_and_deletes(
    new_daphne_page, daphne_server, docker_parts, tmp_path, artifacts_dir
):
    client, reference = docker_parts
    with docker_agent(daphne_server, tmp_path, "e2e-docker-host") as (host, agent, _, _):
        spec = SpecFactory(
            name="1x demo GPU", gpu_model=host.gpus.first().model, vcpu=1, memory_gib=1
        )
        image = ImageFactory(name="E2E web", reference=reference, command=COMMAND)
        owner = MembershipFactory(role=Role.OWNER)
        owner.user.current_organization = owner.organization
        owner.user.save()

        page = new_daphne_page()
        sign_in(page, owner.user.email, PASSWORD)
        page.get_by_test_id("nav-environments").click()
        page.get_by_test_id("environment-create-link").click()
        form = page.get_by_test_id("environment-form")
        form.get_by_label("Name").fill("e2e-web")
        form.get_by_label("Image", exact=True).select_option(str(image.pk))
        form.get_by_label("GPU spec").select_option(str(spec.pk))
        expect(form.get_by_label("GPU spec")).to_contain_text("2 available now")
        form.get_by_label("Extra ports").fill("8080:http")
        page.get_by_test_id("environment-submit").click()

        environment = Environment.objects.get(name="e2e-web")
        expect(page.get_by_test_id("environment-name")).to_have_text("e2e-web")
        # Live: the pull's progress and the status, pushed over the page's WebSocket.
        expect(page.get_by_test_id("system-log")).to_contain_text("Pulling", timeout=30_000)
        expect(page.get_by_test_id("environment-status").first).to_have_text(
            "Running", timeout=60_000
        )
        assert EnvironmentEvent.objects.filter(
            environment=environment, message__startswith="Pulling"
        ).exists()
        expect(page.get_by_test_id("system-log")).to_contain_text("Image pulled")
        expect(page.get_by_test_id("ports")).to_contain_text("8080/HTTP")
        # Its output, followed live.
        expect(page.get_by_test_id("container-logs")).to_contain_text("tick-", timeout=20_000)
        page.screenshot(path=artifacts_dir / "environment-flow-running.png", full_page=True)

        page.get_by_test_id("action-stop").click()
        expect(page.get_by_test_id("environment-status").first).to_have_text(
            "Stopped", timeout=30_000
        )
        assert (
            client.containers.list(
                all=True, filters={"label": f"remotegpu.environment={environment.pk}"}
            )
            == []
        )
        page.get_by_test_id("action-start").click()
        expect(page.get_by_test_id("environment-status").first).to_have_text(
            "Running", timeout=30_000
        )

        page.get_by_test_id("action-delete").click()
        page.get_by_test_id("delete-confirm-name").fill("e2e-web")
        page.get_by_test_id("delete-confirm").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Environments")
        wait_until(
            lambda: Environment.objects.filter(pk=environment.pk, status=S.DELETED).exists(),
            timeout=30,
            what="deleted",
            process=agent,
        )
        assert not client.volumes.list(filters={"name": f"rgpu-vol-{environment.pk}"})
