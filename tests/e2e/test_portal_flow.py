"""The portal's acceptance flow, end to end in a real browser.

A new customer signs up, verifies the e-mail address, creates an organisation, invites a
colleague who accepts in their own browser, creates an API token that really authenticates,
adds an SSH key, sees both counted on the dashboard, switches to Chinese and to the dark theme.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest
from allauth.account.models import EmailAddress
from django.utils import translation
from playwright.sync_api import Page, expect

from accounts.models import Membership
from accounts.tests.factories import PASSWORD as FACTORY_PASSWORD
from accounts.tests.factories import UserFactory
from remotegpu.core.testing import require_executable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

OWNER_EMAIL = "ada@example.com"
OWNER_PASSWORD = "violet-Lathe-2718-quartz"
ORGANIZATION_NAME = "Analytical Engines"
CONFIRM_LINK = re.compile(r"https?://\S+/accounts/confirm-email/[^/\s]+/")
INVITATION_LINK = re.compile(r"https?://\S+/invitations/[^/\s]+/")


def _link_in_mail(outbox, recipient: str, pattern: re.Pattern) -> str:
    bodies = [message.body for message in outbox if recipient in message.to]
    links = [match.group(0) for body in bodies for match in pattern.finditer(body)]
    assert len(links) == 1, f"expected one link to {recipient}, mails: {bodies}"
    return links[0]


def _submit(form) -> None:
    form.locator("button[type=submit]").click()


def sign_up(page: Page, email: str, password: str) -> None:
    page.goto("/accounts/signup/")
    form = page.locator("form:has(input[name=password1])")
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password1]").fill(password)
    form.locator("input[name=password2]").fill(password)
    _submit(form)
    # Mandatory verification: allauth parks the new user on "verification sent".
    page.wait_for_url("**/accounts/confirm-email/")
    assert not EmailAddress.objects.get(email=email).verified


def confirm_email(page: Page, outbox, email: str) -> None:
    page.goto(_link_in_mail(outbox, email, CONFIRM_LINK))
    _submit(page.locator("form[action*='/accounts/confirm-email/']"))
    page.wait_for_url(lambda url: "/confirm-email/" not in url)
    assert EmailAddress.objects.get(email=email).verified


def sign_in(page: Page, email: str, password: str) -> None:
    form = page.locator("form:has(input[name=login])")
    form.locator("input[name=login]").fill(email)
    form.locator("input[name=password]").fill(password)
    _submit(form)
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def expect_signed_in_as(page: Page, email: str) -> None:
    expect(page.get_by_test_id("user-menu")).to_contain_text(email)


def create_organization(page: Page, name: str) -> None:
    page.goto("/orgs/new/")
    form = page.locator("form:has(input[name=slug])")
    form.locator("input[name=name]").fill(name)
    _submit(form)
    page.wait_for_url("/")
    expect(page.locator("main h1")).to_have_text(name)
    expect(page.get_by_test_id("org-switcher")).to_contain_text(name)


def invite_member(page: Page, email: str) -> None:
    page.goto("/org/members/")
    form = page.get_by_test_id("invite-form")
    form.locator("input[name=email]").fill(email)
    form.locator("select[name=role]").select_option("member")
    _submit(form)
    expect(page.locator("main .alert-success")).to_contain_text(email)


def accept_invitation(page: Page, outbox, email: str, password: str) -> None:
    """The invitee, signed out in their own browser, follows the link, signs in and accepts."""
    page.goto(_link_in_mail(outbox, email, INVITATION_LINK))
    page.wait_for_url("**/accounts/login/**")
    sign_in(page, email, password)
    page.wait_for_url("**/invitations/**")
    expect(page.locator("main h1")).to_contain_text(ORGANIZATION_NAME)
    page.locator("button[name=decision][value=accept]").click()
    page.wait_for_url("/")
    expect(page.get_by_test_id("org-switcher")).to_contain_text(ORGANIZATION_NAME)


def expect_member_listed(page: Page, email: str) -> None:
    page.goto("/org/members/")
    row = page.get_by_test_id("member-table").locator("tbody tr", has_text=email)
    expect(row).to_have_count(1)
    expect(row.locator("select[name=role]")).to_have_value("member")


def create_api_token(page: Page, name: str) -> str:
    page.goto("/settings/tokens/new/")
    form = page.locator("form:has(textarea[name=allowed_ips])")
    form.locator("input[name=name]").fill(name)
    _submit(form)
    token = page.get_by_test_id("token-value").input_value()
    assert token.startswith("rgpu_")
    # Shown once: the list of tokens never shows the secret again.
    page.goto("/settings/tokens/")
    expect(page.locator("main")).to_contain_text(name)
    assert token not in page.content()
    return token


def _get_me(base_url: str, headers: dict) -> tuple[int, dict]:
    """A plain HTTP client, outside the browser: no session cookie can stand in for the token."""
    # The URL is the live server's own http:// address, never user input.
    request = urllib.request.Request(f"{base_url}/api/v1/me/", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def check_token_authenticates(base_url: str, token: str, email: str) -> None:
    status, body = _get_me(base_url, {})
    assert status in (401, 403), body
    status, body = _get_me(base_url, {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert body["email"] == email


def add_ssh_key(page: Page, tmp_path) -> str:
    """Adds a fresh ed25519 key; returns what ``ssh-keygen -lf`` says about it."""
    ssh_keygen = require_executable("ssh-keygen", "apt-get install openssh-client")
    key_path = tmp_path / "id_ed25519"
    subprocess.run(
        [ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "ada@laptop", "-f", str(key_path)],
        check=True,
    )
    public_key_path = key_path.with_name("id_ed25519.pub")
    keygen_line = subprocess.run(
        [ssh_keygen, "-lf", str(public_key_path)], check=True, capture_output=True, text=True
    ).stdout.strip()

    page.goto("/settings/ssh-keys/new/")
    form = page.locator("form:has(textarea[name=public_key])")
    form.locator("input[name=name]").fill("laptop")
    form.locator("textarea[name=public_key]").fill(public_key_path.read_text())
    _submit(form)
    page.wait_for_url("/settings/ssh-keys/")
    expect(page.get_by_test_id("fingerprint")).to_have_text(keygen_line)
    return keygen_line


def expect_dashboard_figures(page: Page, *, members: int, tokens: int, ssh_keys: int) -> None:
    page.goto("/")
    expect(page.get_by_test_id("figure-members")).to_have_text(str(members))
    expect(page.get_by_test_id("figure-tokens")).to_have_text(str(tokens))
    expect(page.get_by_test_id("figure-ssh-keys")).to_have_text(str(ssh_keys))


def switch_to_chinese(page: Page) -> None:
    with translation.override("zh-hans"):
        dashboard = translation.gettext("Dashboard")
    assert dashboard != "Dashboard", "the zh-hans catalogue does not translate 'Dashboard'"
    page.get_by_test_id("language-select").select_option("zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.get_by_test_id("main-nav").locator("a[href='/']")).to_have_text(dashboard)
    # The choice sticks: a later page comes in Chinese without choosing again.
    page.goto("/settings/ssh-keys/")
    expect(page.get_by_test_id("main-nav").locator("a[href='/']")).to_have_text(dashboard)


def theme(page: Page) -> str:
    return page.evaluate("document.documentElement.dataset.bsTheme")


def toggle_dark_theme(page: Page) -> None:
    before = theme(page)
    assert before in ("light", "dark")
    after = "dark" if before == "light" else "light"
    page.get_by_test_id("theme-toggle").click()
    assert theme(page) == after
    page.reload()
    assert theme(page) == after
    assert page.evaluate("localStorage.getItem('remotegpu-theme')") == after


def test_portal_flow(new_page, live_server, mailoutbox, settings, tmp_path, artifacts_dir):
    # Links in invitation mails are built from SITE_URL; point it at this server.
    settings.SITE_URL = live_server.url
    owner = new_page()

    sign_up(owner, OWNER_EMAIL, OWNER_PASSWORD)
    confirm_email(owner, mailoutbox, OWNER_EMAIL)
    # ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION: confirming in the sign-up session signs in.
    owner.goto("/")
    expect_signed_in_as(owner, OWNER_EMAIL)

    create_organization(owner, ORGANIZATION_NAME)

    invitee = UserFactory(email="grace@example.com", name="")
    invite_member(owner, invitee.email)
    accept_invitation(new_page(), mailoutbox, invitee.email, FACTORY_PASSWORD)
    assert Membership.objects.filter(
        user=invitee, organization__name=ORGANIZATION_NAME, role="member"
    ).exists()
    expect_member_listed(owner, invitee.email)

    token = create_api_token(owner, "ci")
    check_token_authenticates(live_server.url, token, OWNER_EMAIL)

    add_ssh_key(owner, tmp_path)

    expect_dashboard_figures(owner, members=2, tokens=1, ssh_keys=1)
    owner.screenshot(path=artifacts_dir / "portal-flow-dashboard.png", full_page=True)

    switch_to_chinese(owner)
    toggle_dark_theme(owner)
    owner.goto("/")
    owner.screenshot(path=artifacts_dir / "portal-flow-end.png", full_page=True)
