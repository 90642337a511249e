"""Portal pages: the dashboard's real figures, and query counts pinned on every list page."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.choices import AuditAction, Role
from accounts.models import AuditEvent
from accounts.services.invitations import invitation_create
from accounts.services.organizations import organization_switch
from accounts.services.ssh_keys import ssh_key_add
from accounts.services.tokens import token_create, token_revoke
from accounts.tests.factories import MembershipFactory, NotificationFactory

N = 3


def _public_key() -> str:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _text(response, testid: str) -> str:
    content = response.content.decode()
    marker = f'data-testid="{testid}">'
    start = content.index(marker) + len(marker)
    return content[start : content.index("<", start)].strip()


# Dashboard --------------------------------------------------------------------------------


def test_dashboard_shows_real_figures(client, owner, admin_user, member, outsider, organization):
    token_create(user=member, name="a")
    token_create(user=member, name="b")
    token_revoke(actor=owner, token=token_create(user=owner, name="old").token)
    token_create(user=outsider, name="elsewhere")
    ssh_key_add(user=owner, name="k", public_key=_public_key())
    ssh_key_add(user=outsider, name="k", public_key=_public_key())
    invitation_create(actor=owner, organization=organization, email="new@example.com")

    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 200
    assert response.context["organization"] == organization
    assert response.context["figures"] == {
        "members": 3,
        "admins": 2,
        "tokens": 2,
        "ssh_keys": 1,
        "pending_invitations": 1,
    }
    assert response.context["my_tokens"] == 0
    assert response.context["my_ssh_keys"] == 1
    assert _text(response, "figure-members") == "3"
    assert _text(response, "figure-tokens") == "2"
    assert _text(response, "figure-ssh-keys") == "1"
    assert _text(response, "figure-admins") == "2"
    # Managers see recent activity of their organisation only.
    actions = {event.action for event in response.context["recent_events"]}
    assert AuditAction.INVITATION_SENT in actions
    assert all(e.organization_id == organization.pk for e in response.context["recent_events"])


def test_dashboard_for_member_hides_activity(client, member, organization):
    client.force_login(member)
    response = client.get("/")
    assert response.status_code == 200
    assert response.context["figures"]["members"] == 1
    assert "recent_events" not in response.context


def test_dashboard_without_organization(client, member, organization):
    organization.memberships.all().delete()
    client.force_login(member)
    response = client.get("/")
    assert response.status_code == 200
    assert response.context["organization"] is None
    assert "figures" not in response.context
    assert b"/orgs/new/" in response.content


def test_dashboard_shows_pending_invitations(client, owner, outsider, other_organization):
    invitation_create(actor=outsider, organization=other_organization, email=owner.email)
    client.force_login(owner)
    response = client.get("/")
    assert [i.organization for i in response.context["pending_invitations"]] == [other_organization]
    assert other_organization.name in response.content.decode()


def test_organization_list_shows_member_counts(
    client, owner, admin_user, member, organization, other_organization
):
    MembershipFactory(user=owner, organization=other_organization)
    client.force_login(owner)
    response = client.get("/orgs/")
    assert response.status_code == 200
    counts = {org.slug: org.member_count for org in response.context["organizations"]}
    assert counts == {organization.slug: 3, other_organization.slug: 1}


def test_pages_require_sign_in(client, db):
    for url in ("/", "/org/members/", "/settings/tokens/", "/audit/", "/notifications/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith("/accounts/login/"), url


# Query counts -----------------------------------------------------------------------------
#
# Each list page is requested with N rows and again with 2N rows: the number of queries must
# not grow with the rows (no N+1), and it is pinned so that a regression shows up here.

# Pages count one query for the balance in the navigation.
PINNED = {
    "/org/members/": 8,
    "/settings/tokens/": 7,
    "/settings/ssh-keys/": 7,
    "/audit/": 8,
    "/notifications/": 8,
    "/api/v1/audit-events/": 5,
    "members-api": 6,
}


def _add_members(organization, owner, count):
    for _ in range(count):
        MembershipFactory(organization=organization, role=Role.MEMBER)
    for index in range(count):
        existing = organization.invitations.count()
        invitation_create(
            actor=owner, organization=organization, email=f"invite{existing}-{index}@example.com"
        )


def _add_tokens(organization, owner, count):
    for index in range(count):
        token_create(user=owner, name=f"t{index}", allowed_ips=["10.0.0.0/8"])


def _add_keys(organization, owner, count):
    for _ in range(count):
        ssh_key_add(user=owner, name="", public_key=_public_key())


def _add_events(organization, owner, count):
    for _ in range(count):
        AuditEvent.objects.create(
            action=AuditAction.MEMBER_ADDED,
            actor=owner,
            actor_email=owner.email,
            organization=organization,
            target_repr="someone",
        )


def _add_notifications(organization, owner, count):
    for _ in range(count):
        NotificationFactory(user=owner, organization=organization)


LIST_PAGES = [
    ("/org/members/", _add_members),
    ("/settings/tokens/", _add_tokens),
    ("/settings/ssh-keys/", _add_keys),
    ("/audit/", _add_events),
    ("/notifications/", _add_notifications),
    ("/api/v1/audit-events/", _add_events),
    ("members-api", _add_members),
]


def _count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as context:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(context)


@pytest.mark.parametrize(("name", "add_rows"), LIST_PAGES, ids=[name for name, _ in LIST_PAGES])
def test_list_page_queries_do_not_grow_with_rows(
    owner, organization, django_assert_max_num_queries, name, add_rows
):
    organization_switch(user=owner, organization=organization)
    url = f"/api/v1/organizations/{organization.slug}/members/" if name == "members-api" else name
    client = APIClient()
    client.force_login(owner)
    client.get(url)  # warm up: the first request may remember the current organisation

    add_rows(organization, owner, N)
    with django_assert_max_num_queries(PINNED[name]):
        with_n = _count_queries(client, url)
    add_rows(organization, owner, N)
    with django_assert_max_num_queries(PINNED[name]):
        with_2n = _count_queries(client, url)
    assert with_n == with_2n, f"{url}: {with_n} queries for {N} rows, {with_2n} for {2 * N}"
