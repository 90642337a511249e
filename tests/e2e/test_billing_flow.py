"""Billing's acceptance flow in a real browser: real Chromium, a real daphne, a real agent
driving the real Docker Engine.

A customer sees a spec's price before creating, creates an environment, watches the balance
fall while it runs (the tick is run here rather than waited for), reads the usage chart and
downloads the month's statement as CSV and PDF.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from accounts.choices import Role
from accounts.tests.factories import PASSWORD, MembershipFactory
from billing.choices import EntryKind, PriceResource
from billing.models import LedgerEntry, Price
from billing.services.metering import billing_tick
from billing.services.wallets import wallet_get, wallet_post
from environments.choices import EnvironmentStatus as S
from environments.models import Environment
from environments.tests.factories import ImageFactory, SpecFactory
from remotegpu.core.testing_docker import busybox_image, require_docker
from tests.integration.conftest import docker_agent, wait_until

from .test_fleet_flow import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(240)]


def _amount(text: str) -> Decimal:
    return Decimal(re.search(r"-?[\d,]+\.\d\d", text).group(0).replace(",", ""))


def test_customer_sees_the_price_the_balance_fall_the_chart_and_a_statement(
    new_daphne_page, daphne_server, tmp_path, artifacts_dir
):
    client = require_docker()
    with docker_agent(daphne_server, tmp_path, "e2e-billing-host") as (host, agent, _, _):
        Price.objects.create(resource=PriceResource.GPU_HOUR, amount=Decimal("36"))
        spec = SpecFactory(
            name="1x billed GPU", gpu_model=host.gpus.first().model, vcpu=1, memory_gib=1
        )
        image = ImageFactory(
            name="E2E sleeper", reference=busybox_image(client), command=["sleep", "600"]
        )
        owner = MembershipFactory(role=Role.OWNER)
        owner.user.current_organization = owner.organization
        owner.user.save()
        wallet_post(
            wallet_get(owner.organization),
            kind=EntryKind.RECHARGE,
            amount=Decimal(100),
            key="e2e-recharge",
            description="Bank transfer E2E",
        )

        page = new_daphne_page()
        sign_in(page, owner.user.email, PASSWORD)
        expect(page.get_by_test_id("nav-balance")).to_contain_text("100.00")
        # The price, before anything is created.
        page.goto("/environments/new/")
        form = page.get_by_test_id("environment-form")
        form.get_by_label("Name").fill("billed-1")
        form.get_by_label("Image", exact=True).select_option(str(image.pk))
        form.get_by_label("GPU spec").select_option(str(spec.pk))
        expect(page.get_by_test_id("spec-price")).to_contain_text("36.00")
        expect(form.get_by_label("GPU spec")).to_contain_text("36.00")
        page.get_by_test_id("environment-submit").click()
        expect(page.get_by_test_id("environment-status").first).to_have_text(
            "Running", timeout=60_000
        )
        environment = Environment.objects.get(name="billed-1")
        assert environment.status == S.RUNNING

        page.goto("/billing/")
        expect(page.get_by_test_id("balance")).to_contain_text("100.00")
        expect(page.get_by_test_id("burn-rate")).to_contain_text("36.00")
        # A few seconds run (the host's heartbeats say so), and the minute's tick charges them.
        time.sleep(3)
        wait_until(
            lambda: (
                billing_tick().entries or LedgerEntry.objects.filter(kind=EntryKind.USAGE).exists()
            ),
            timeout=30,
            what="a charge",
            process=agent,
        )
        page.reload()
        balance = _amount(page.get_by_test_id("balance").inner_text())
        assert Decimal(99) < balance < Decimal(100)
        expect(page.get_by_test_id("nav-balance")).not_to_contain_text("100.00")
        # The chart draws today's GPU usage.
        expect(page.get_by_test_id("usage-chart")).to_be_visible()
        chart = json.loads(page.locator("#usage-chart-data").text_content())
        assert any(spec.gpu_model in series["label"] for series in chart["series"])
        assert sum(sum(series["values"]) for series in chart["series"]) > 0
        page.screenshot(path=artifacts_dir / "billing-flow-overview.png", full_page=True)

        # The month's statement, as CSV and PDF.
        page.get_by_test_id("billing-nav").get_by_role("link", name="Statements").click()
        table = page.get_by_test_id("statement-table")
        csv_link = table.get_by_role("link", name="CSV").first
        csv = page.request.get(csv_link.get_attribute("href"))
        assert csv.ok
        text = csv.body().decode("utf-8-sig")
        assert "billed-1" in text
        assert "Bank transfer E2E" in text
        pdf = page.request.get(table.get_by_role("link", name="PDF").first.get_attribute("href"))
        assert pdf.ok
        assert pdf.body().startswith(b"%PDF")
