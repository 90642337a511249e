"""The accounts REST API: every endpoint not covered by a more specific module, and its shape."""

import re

import pytest
from django.core import mail

from accounts.choices import InvitationStatus, Role
from accounts.models import APIToken, Invitation, Membership, Notification, Organization
from accounts.services.invitations import invitation_create
from accounts.tests.factories import MembershipFactory, UserFactory


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def owner_api(token_client_for, owner):
    return token_client_for(owner)


# /me/ -------------------------------------------------------------------------------------


def test_me_get_and_patch(owner_api, owner, organization):
    body = owner_api.get("/api/v1/me/").json()
    assert body["email"] == owner.email
    assert body["is_staff"] is False
    assert set(body) == {"id", "email", "name", "is_staff", "date_joined", "current_organization"}

    response = owner_api.patch(
        "/api/v1/me/",
        {"name": "Ada", "email": "hijack@example.com", "is_staff": True},
        format="json",
    )
    assert response.status_code == 200
    owner.refresh_from_db()
    assert owner.name == "Ada"
    assert owner.email != "hijack@example.com"
    assert owner.is_staff is False


def test_me_rejects_put_and_long_names(owner_api):
    assert _error(owner_api.put("/api/v1/me/", {"name": "x"}, format="json"), 405)
    error = _error(owner_api.patch("/api/v1/me/", {"name": "x" * 151}, format="json"), 400)
    assert error["code"] == "invalid"
    assert error["fields"]["name"]


# Organisations ----------------------------------------------------------------------------


def test_organizations_list_only_mine_with_role(
    token_client_for, member, organization, other_organization
):
    MembershipFactory(organization=organization, role=Role.OWNER)
    body = token_client_for(member).get("/api/v1/organizations/").json()
    assert body["count"] == 1
    (row,) = body["results"]
    assert row["slug"] == organization.slug
    assert row["role"] == Role.MEMBER
    assert row["member_count"] == 2
    assert row["is_active"] is True


def test_operator_lists_all_organizations(
    token_client_for, operator, organization, other_organization
):
    body = token_client_for(operator).get("/api/v1/organizations/").json()
    slugs = {row["slug"] for row in body["results"]}
    assert {organization.slug, other_organization.slug} <= slugs
    assert all(row["role"] is None for row in body["results"])


def test_organization_create(owner_api, owner, organization):
    response = owner_api.post("/api/v1/organizations/", {"name": "Robotics Lab"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "robotics-lab"
    assert body["role"] == Role.OWNER
    assert body["member_count"] == 1
    owner.refresh_from_db()
    assert owner.current_organization.slug == "robotics-lab"

    error = _error(
        owner_api.post(
            "/api/v1/organizations/", {"name": "X", "slug": organization.slug}, format="json"
        ),
        400,
    )
    assert error["fields"] == {"slug": ["This slug is already taken."]}
    error = _error(
        owner_api.post("/api/v1/organizations/", {"name": "X", "slug": "api"}, format="json"), 400
    )
    assert error["fields"] == {"slug": ["This name is reserved."]}
    error = _error(
        owner_api.post("/api/v1/organizations/", {"name": "X", "slug": "No Way"}, format="json"),
        400,
    )
    assert error["fields"]["slug"]
    assert _error(owner_api.post("/api/v1/organizations/", {}, format="json"), 400)["fields"][
        "name"
    ]


def test_organization_retrieve_and_patch(
    owner_api, token_client_for, member, outsider, organization
):
    url = f"/api/v1/organizations/{organization.slug}/"
    assert owner_api.get(url).json()["name"] == organization.name

    response = owner_api.patch(url, {"name": "Renamed"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"
    organization.refresh_from_db()
    assert organization.name == "Renamed"

    _error(token_client_for(member).patch(url, {"name": "Mine"}, format="json"), 403)
    _error(token_client_for(outsider).get(url), 404)
    _error(token_client_for(outsider).patch(url, {"name": "Mine"}, format="json"), 404)
    _error(owner_api.patch(url, {"name": ""}, format="json"), 400)
    organization.refresh_from_db()
    assert organization.name == "Renamed"


def test_organization_switch(token_client_for, owner, organization, other_organization):
    MembershipFactory(user=owner, organization=other_organization)
    client = token_client_for(owner)
    response = client.post(f"/api/v1/organizations/{other_organization.slug}/switch/")
    assert response.status_code == 200
    assert response.json()["slug"] == other_organization.slug
    assert client.get("/api/v1/me/").json()["current_organization"] == other_organization.slug
    _error(client.post("/api/v1/organizations/no-such-org/switch/"), 404)


# Members ----------------------------------------------------------------------------------


def test_members_list(token_client_for, owner, admin_user, member, organization):
    body = token_client_for(member).get(f"/api/v1/organizations/{organization.slug}/members/")
    rows = body.json()["results"]
    assert {row["user"]["email"]: row["role"] for row in rows} == {
        owner.email: Role.OWNER,
        admin_user.email: Role.ADMIN,
        member.email: Role.MEMBER,
    }
    filtered = token_client_for(member).get(
        f"/api/v1/organizations/{organization.slug}/members/?role=admin"
    )
    assert [row["user"]["email"] for row in filtered.json()["results"]] == [admin_user.email]


def test_members_patch_role(token_client_for, owner, admin_user, member, organization):
    membership = Membership.objects.get(user=member, organization=organization)
    url = f"/api/v1/organizations/{organization.slug}/members/{membership.pk}/"

    error = _error(token_client_for(admin_user).patch(url, {"role": "owner"}, format="json"), 403)
    assert error["code"] == "permission_denied"
    _error(token_client_for(member).patch(url, {"role": "admin"}, format="json"), 403)
    assert _error(token_client_for(owner).patch(url, {"role": "emperor"}, format="json"), 400)[
        "fields"
    ]["role"]

    response = token_client_for(owner).patch(url, {"role": "admin"}, format="json")
    assert response.status_code == 200
    assert response.json()["role"] == Role.ADMIN
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN


def test_members_last_owner_cannot_be_demoted_or_removed(owner_api, owner, organization):
    membership = Membership.objects.get(user=owner, organization=organization)
    url = f"/api/v1/organizations/{organization.slug}/members/{membership.pk}/"
    error = _error(owner_api.patch(url, {"role": "member"}, format="json"), 400)
    assert "last owner" in error["fields"]["role"][0]
    error = _error(owner_api.delete(url), 400)
    assert "last owner" in error["message"]
    assert Membership.objects.filter(pk=membership.pk, role=Role.OWNER).exists()


def test_members_delete(owner_api, member, outsider, organization, token_client_for):
    membership = Membership.objects.get(user=member, organization=organization)
    url = f"/api/v1/organizations/{organization.slug}/members/{membership.pk}/"
    _error(token_client_for(outsider).delete(url), 404)
    assert owner_api.delete(url).status_code == 204
    assert not Membership.objects.filter(pk=membership.pk).exists()
    _error(owner_api.delete(url), 404)


def test_members_of_foreign_organization_are_404(owner_api, other_organization, outsider):
    foreign = Membership.objects.get(user=outsider)
    base = f"/api/v1/organizations/{other_organization.slug}/members/"
    _error(owner_api.get(base), 404)
    _error(owner_api.delete(f"{base}{foreign.pk}/"), 404)


# Invitations of an organisation -----------------------------------------------------------


def test_invitations_create_list_resend_revoke(
    owner_api, organization, django_capture_on_commit_callbacks
):
    base = f"/api/v1/organizations/{organization.slug}/invitations/"
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.post(
            base, {"email": "new@example.com", "role": "admin"}, format="json"
        )
    assert response.status_code == 201
    created = response.json()
    assert created["email"] == "new@example.com"
    assert created["role"] == Role.ADMIN
    assert created["status"] == InvitationStatus.PENDING
    assert created["send_count"] == 1
    assert "key" not in created
    assert "key_digest" not in created
    assert len(mail.outbox) == 1

    listing = owner_api.get(base).json()
    assert [row["id"] for row in listing["results"]] == [created["id"]]

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.post(f"{base}{created['id']}/resend/")
    assert response.status_code == 200
    assert response.json()["send_count"] == 2
    assert len(mail.outbox) == 2

    assert owner_api.delete(f"{base}{created['id']}/").status_code == 204
    assert Invitation.objects.get(pk=created["id"]).status == InvitationStatus.REVOKED
    error = _error(owner_api.delete(f"{base}{created['id']}/"), 409)
    assert error["code"] == "conflict"


def test_invitations_errors(owner_api, token_client_for, admin_user, member, organization):
    base = f"/api/v1/organizations/{organization.slug}/invitations/"
    assert _error(owner_api.post(base, {"email": "nope"}, format="json"), 400)["fields"]["email"]
    assert _error(owner_api.post(base, {"email": member.email}, format="json"), 400)["fields"][
        "email"
    ] == ["This person is already a member."]
    owner_api.post(base, {"email": "dup@example.com"}, format="json")
    assert (
        "already pending"
        in _error(owner_api.post(base, {"email": "dup@example.com"}, format="json"), 400)["fields"][
            "email"
        ][0]
    )
    _error(
        token_client_for(admin_user).post(
            base, {"email": "boss@example.com", "role": "owner"}, format="json"
        ),
        403,
    )
    _error(token_client_for(member).get(base), 403)
    _error(token_client_for(member).post(base, {"email": "x@example.com"}, format="json"), 403)
    assert Invitation.objects.count() == 1


# The caller's own invitations -------------------------------------------------------------


@pytest.fixture
def invited(owner, organization, django_capture_on_commit_callbacks):
    """A user with a pending invitation, and the key from the e-mail they received."""
    user = UserFactory(email="invited@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        invitation_create(actor=owner, organization=organization, email=user.email, role=Role.ADMIN)
    key = re.search(r"/invitations/([-\w]+)/", mail.outbox[-1].body).group(1)
    return user, key


def test_my_invitations_list_and_accept(token_client_for, invited, organization, outsider):
    user, key = invited
    client = token_client_for(user)
    rows = client.get("/api/v1/invitations/").json()["results"]
    assert [row["organization"] for row in rows] == [organization.slug]
    assert token_client_for(outsider).get("/api/v1/invitations/").json()["results"] == []

    _error(
        token_client_for(outsider).post("/api/v1/invitations/accept/", {"key": key}, format="json"),
        403,
    )
    response = client.post("/api/v1/invitations/accept/", {"key": key}, format="json")
    assert response.status_code == 200
    assert response.json()["role"] == Role.ADMIN
    assert response.json()["user"]["email"] == user.email
    assert Membership.objects.filter(user=user, organization=organization).exists()
    assert client.get("/api/v1/invitations/").json()["results"] == []
    assert (
        _error(client.post("/api/v1/invitations/accept/", {"key": key}, format="json"), 409)["code"]
        == "conflict"
    )


def test_my_invitations_decline(token_client_for, invited, organization):
    user, key = invited
    client = token_client_for(user)
    response = client.post("/api/v1/invitations/decline/", {"key": key}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == InvitationStatus.DECLINED
    assert not Membership.objects.filter(user=user, organization=organization).exists()


def test_my_invitations_bad_key(token_client_for, invited):
    user, _key = invited
    client = token_client_for(user)
    error = _error(client.post("/api/v1/invitations/accept/", {"key": "nope"}, format="json"), 404)
    assert error["code"] == "not_found"
    assert _error(client.post("/api/v1/invitations/decline/", {}, format="json"), 400)["fields"][
        "key"
    ]


# Tokens -----------------------------------------------------------------------------------


def test_token_shown_once(owner_api, token_client_for, owner):
    response = owner_api.post(
        "/api/v1/tokens/",
        {"name": "deploy", "write_enabled": True, "allowed_ips": ["127.0.0.1"]},
        format="json",
    )
    assert response.status_code == 201
    created = response.json()
    plaintext = created["token"]
    assert plaintext.startswith("rgpu_")
    assert created["prefix"] == f"rgpu_{plaintext.split('_')[1]}_…"
    assert created["allowed_ips"] == ["127.0.0.1/32"]
    assert created["is_active"] is True

    listing = owner_api.get("/api/v1/tokens/")
    assert plaintext not in listing.content.decode()
    assert all("token" not in row for row in listing.json()["results"])
    detail = owner_api.get(f"/api/v1/tokens/{created['id']}/")
    assert "token" not in detail.json()
    assert plaintext not in detail.content.decode()

    # And it works.
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get("/api/v1/me/").json()["email"] == owner.email
    assert APIToken.objects.filter(user=owner).count() == 2


def test_tokens_list_only_mine(owner_api, token_client_for, outsider):
    token_client_for(outsider)
    rows = owner_api.get("/api/v1/tokens/").json()["results"]
    assert len(rows) == 1  # the client's own token


# Error shape and pagination ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "payload"),
    [
        ("post", "/api/v1/tokens/", {"name": ""}),
        ("post", "/api/v1/tokens/", {"name": "x", "allowed_ips": "10.0.0.0/8"}),
        ("post", "/api/v1/tokens/", {"name": "x", "expires_at": "tomorrow"}),
        ("post", "/api/v1/tokens/", {"name": "x", "write_enabled": "maybe"}),
        ("post", "/api/v1/tokens/", {"name": "x", "allowed_ips": ["x"] * 51}),
        ("post", "/api/v1/ssh-keys/", {"public_key": "x" * 20000}),
        ("post", "/api/v1/organizations/", {"name": "x" * 101}),
        ("post", "/api/v1/organizations/", {"name": ["a", "list"]}),
        ("patch", "/api/v1/me/", {"name": {"nested": True}}),
        ("post", "/api/v1/invitations/accept/", {"key": "x" * 201}),
    ],
)
def test_bad_input_is_400_with_error_shape(owner_api, method, url, payload):
    response = getattr(owner_api, method)(url, payload, format="json")
    error = _error(response, 400)
    assert error["code"] == "invalid"
    assert error["fields"]


def test_malformed_json_is_400(owner_api):
    response = owner_api.post("/api/v1/tokens/", data="{not json", content_type="application/json")
    error = _error(response, 400)
    assert error["code"] == "parse_error"


def test_not_found_has_error_shape(owner_api):
    assert _error(owner_api.get("/api/v1/tokens/999999/"), 404)["code"] == "not_found"
    assert _error(owner_api.get("/api/v1/organizations/nope/"), 404)["code"] == "not_found"


def test_unauthenticated_has_error_shape(api_client, db):
    error = _error(api_client.get("/api/v1/organizations/"), 401)
    assert error["code"] == "not_authenticated"


def test_page_size_is_capped(owner_api, owner):
    Notification.objects.bulk_create(
        Notification(user=owner, title=f"n{index}") for index in range(501)
    )
    body = owner_api.get("/api/v1/notifications/?page_size=10000").json()
    assert body["count"] == 501
    assert len(body["results"]) == 500
    assert body["next"]
    body = owner_api.get("/api/v1/notifications/?page_size=7").json()
    assert len(body["results"]) == 7
    assert len(owner_api.get("/api/v1/notifications/").json()["results"]) == 50


def test_invalid_page_is_404_not_500(owner_api):
    assert _error(owner_api.get("/api/v1/notifications/?page=99"), 404)
    assert owner_api.get("/api/v1/notifications/?page_size=abc").status_code == 200


def test_schema_is_served(owner_api):
    response = owner_api.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/v1/organizations/" in response.content


def test_organization_is_not_created_twice_on_error(owner_api):
    before = Organization.objects.count()
    _error(owner_api.post("/api/v1/organizations/", {"name": " "}, format="json"), 400)
    assert Organization.objects.count() == before
