"""Organisations and memberships: creation, roles, leaving, switching, operator disabling."""

import pytest

from accounts.choices import AuditAction, Role
from accounts.models import AuditEvent, Membership, Organization, User
from accounts.services.organizations import (
    membership_change_role,
    membership_remove,
    organization_create,
    organization_set_active,
    organization_switch,
    organization_update,
)
from accounts.tests.factories import MembershipFactory, UserFactory
from remotegpu.core.errors import NotFound, PermissionDenied, ValidationError

DISABLED_MESSAGE = "This organisation has been disabled by an operator."


def _membership(user, organization) -> Membership:
    return Membership.objects.get(user=user, organization=organization)


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# Creation ---------------------------------------------------------------------------------


def test_create_makes_caller_owner_and_current(db):
    user = UserFactory()
    organization = organization_create(user=user, name="  Vision Lab  ")
    assert organization.name == "Vision Lab"
    assert organization.slug == "vision-lab"
    assert organization.is_personal is False
    assert _membership(user, organization).role == Role.OWNER
    user.refresh_from_db()
    assert user.current_organization == organization
    event = AuditEvent.objects.get(action=AuditAction.ORGANIZATION_CREATED)
    assert event.organization_id == organization.pk
    assert event.actor_id == user.pk


def test_generated_slug_is_unique(db):
    first = organization_create(user=UserFactory(), name="Vision Lab")
    second = organization_create(user=UserFactory(), name="Vision Lab")
    assert first.slug == "vision-lab"
    assert second.slug.startswith("vision-lab-")
    assert second.slug != first.slug


def test_generated_slug_avoids_reserved_words_and_empty_names(db):
    assert organization_create(user=UserFactory(), name="Admin").slug == "admin-org"
    assert organization_create(user=UserFactory(), name="!!!").slug == "org"


def test_duplicate_slug_is_field_error(db):
    organization_create(user=UserFactory(), name="One", slug="taken")
    user = UserFactory()
    with pytest.raises(ValidationError) as caught:
        organization_create(user=user, name="Two", slug="taken")
    assert "already taken" in caught.value.fields["slug"][0]
    assert not Membership.objects.filter(user=user).exists()


@pytest.mark.parametrize("slug", ["admin", "api", "settings", "new"])
def test_reserved_slug_is_field_error(db, slug):
    with pytest.raises(ValidationError) as caught:
        organization_create(user=UserFactory(), name="Sneaky", slug=slug)
    assert caught.value.fields["slug"] == ["This name is reserved."]
    assert not Organization.objects.filter(slug=slug).exists()


@pytest.mark.parametrize("slug", ["Upper", "with space", "-leading", "dots.in.it"])
def test_malformed_slug_is_field_error(db, slug):
    with pytest.raises(ValidationError) as caught:
        organization_create(user=UserFactory(), name="Team", slug=slug)
    assert caught.value.fields["slug"]


def test_blank_name_is_field_error(db):
    with pytest.raises(ValidationError) as caught:
        organization_create(user=UserFactory(), name="   ")
    assert caught.value.fields["name"]


def test_portal_create_and_duplicate_slug(client, owner, organization):
    client.force_login(owner)
    response = client.post("/orgs/new/", {"name": "Second", "slug": "second"})
    assert response.status_code == 302
    created = Organization.objects.get(slug="second")
    assert _membership(owner, created).role == Role.OWNER

    response = client.post("/orgs/new/", {"name": "Clash", "slug": organization.slug})
    assert response.status_code == 200
    assert response.context["form"].errors["slug"] == ["This slug is already taken."]

    response = client.post("/orgs/new/", {"name": "Clash", "slug": "admin"})
    assert response.status_code == 200
    assert response.context["form"].errors["slug"] == ["This name is reserved."]


def test_update_requires_manager(owner, member, organization):
    organization_update(actor=owner, organization=organization, name="Renamed")
    organization.refresh_from_db()
    assert organization.name == "Renamed"
    with pytest.raises(PermissionDenied):
        organization_update(actor=member, organization=organization, name="Mine now")
    organization.refresh_from_db()
    assert organization.name == "Renamed"


# Sign-up ----------------------------------------------------------------------------------


def test_signup_creates_personal_organization(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "email": "New.Person@Example.com",
            "password1": "a-long-unusual-passphrase-42",
            "password2": "a-long-unusual-passphrase-42",
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.person@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.is_personal is True
    assert membership.organization.name == "new.person's workspace"
    assert user.current_organization == membership.organization
    assert AuditEvent.objects.filter(
        action=AuditAction.SIGNUP, actor=user, organization=membership.organization
    ).exists()


# Roles ------------------------------------------------------------------------------------


def test_admin_can_promote_member_to_admin(admin_user, member, organization):
    membership = membership_change_role(
        actor=admin_user, membership=_membership(member, organization), role=Role.ADMIN
    )
    assert _membership(member, organization).role == Role.ADMIN
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_ROLE_CHANGED)
    assert event.details == {"role": ["member", "admin"]}
    assert event.target_id == str(membership.user_id)


def test_admin_cannot_make_owner(admin_user, member, organization):
    with pytest.raises(PermissionDenied):
        membership_change_role(
            actor=admin_user, membership=_membership(member, organization), role=Role.OWNER
        )
    assert _membership(member, organization).role == Role.MEMBER


def test_admin_cannot_demote_owner(owner, admin_user, organization):
    with pytest.raises(PermissionDenied):
        membership_change_role(
            actor=admin_user, membership=_membership(owner, organization), role=Role.MEMBER
        )
    assert _membership(owner, organization).role == Role.OWNER


def test_member_cannot_change_roles(owner, member, organization):
    with pytest.raises(PermissionDenied):
        membership_change_role(
            actor=member, membership=_membership(member, organization), role=Role.ADMIN
        )
    assert _membership(member, organization).role == Role.MEMBER


def test_outsider_gets_not_found(owner, outsider, organization):
    with pytest.raises(NotFound):
        membership_change_role(
            actor=outsider, membership=_membership(owner, organization), role=Role.MEMBER
        )


def test_unknown_role_is_field_error(owner, member, organization):
    with pytest.raises(ValidationError) as caught:
        membership_change_role(
            actor=owner, membership=_membership(member, organization), role="emperor"
        )
    assert caught.value.fields["role"]


def test_last_owner_cannot_be_demoted(owner, organization):
    with pytest.raises(ValidationError) as caught:
        membership_change_role(
            actor=owner, membership=_membership(owner, organization), role=Role.ADMIN
        )
    assert "last owner" in caught.value.fields["role"][0]
    assert _membership(owner, organization).role == Role.OWNER


def test_last_owner_cannot_leave(owner, organization):
    with pytest.raises(ValidationError) as caught:
        membership_remove(actor=owner, membership=_membership(owner, organization))
    assert "last owner" in str(caught.value.message)
    assert Membership.objects.filter(user=owner, organization=organization).exists()


def test_owner_transfers_ownership_then_steps_down(owner, member, organization):
    membership_change_role(
        actor=owner, membership=_membership(member, organization), role=Role.OWNER
    )
    membership_change_role(
        actor=owner, membership=_membership(owner, organization), role=Role.ADMIN
    )
    assert _membership(member, organization).role == Role.OWNER
    assert _membership(owner, organization).role == Role.ADMIN
    # The former owner, now an admin, can no longer touch the new owner.
    with pytest.raises(PermissionDenied):
        membership_change_role(
            actor=owner, membership=_membership(member, organization), role=Role.ADMIN
        )


def test_portal_role_change_refusal_shows_message(client, admin_user, member, organization):
    client.force_login(admin_user)
    response = client.post(
        f"/org/members/{_membership(member, organization).pk}/role/",
        {"role": Role.OWNER},
        follow=True,
    )
    assert response.status_code == 200
    assert "Only owners can grant or remove the owner role." in _messages(response)
    assert _membership(member, organization).role == Role.MEMBER


def test_portal_role_change(client, owner, member, organization):
    client.force_login(owner)
    response = client.post(
        f"/org/members/{_membership(member, organization).pk}/role/", {"role": Role.ADMIN}
    )
    assert response.status_code == 302
    assert _membership(member, organization).role == Role.ADMIN


def test_portal_cannot_touch_other_organizations_members(client, owner, outsider):
    client.force_login(owner)
    foreign = outsider.memberships.get()
    response = client.post(f"/org/members/{foreign.pk}/role/", {"role": Role.MEMBER})
    assert response.status_code == 404
    assert client.post(f"/org/members/{foreign.pk}/remove/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.role == Role.OWNER


# Removal ----------------------------------------------------------------------------------


def test_owner_removes_member(owner, member, organization):
    organization_switch(user=member, organization=organization)
    membership_remove(actor=owner, membership=_membership(member, organization))
    assert not Membership.objects.filter(user=member, organization=organization).exists()
    member.refresh_from_db()
    assert member.current_organization is None
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_REMOVED)
    assert event.details == {"left": False}
    assert event.actor_id == owner.pk


def test_admin_cannot_remove_owner(owner, admin_user, organization):
    with pytest.raises(PermissionDenied):
        membership_remove(actor=admin_user, membership=_membership(owner, organization))
    assert Membership.objects.filter(user=owner, organization=organization).exists()


def test_member_cannot_remove_others(admin_user, member, organization):
    with pytest.raises(PermissionDenied):
        membership_remove(actor=member, membership=_membership(admin_user, organization))
    assert Membership.objects.filter(user=admin_user, organization=organization).exists()


def test_member_can_leave(member, organization):
    membership_remove(actor=member, membership=_membership(member, organization))
    assert not Membership.objects.filter(user=member, organization=organization).exists()
    assert AuditEvent.objects.get(action=AuditAction.MEMBER_REMOVED).details == {"left": True}


def test_one_of_two_owners_can_leave(owner, organization):
    second = MembershipFactory(organization=organization, role=Role.OWNER).user
    membership_remove(actor=owner, membership=_membership(owner, organization))
    assert list(organization.memberships.values_list("user", flat=True)) == [second.pk]


def test_portal_leave_and_last_owner_refusal(client, owner, member, organization):
    client.force_login(member)
    response = client.post(f"/org/members/{_membership(member, organization).pk}/remove/")
    assert response.status_code == 302
    assert response.url == "/"
    assert not Membership.objects.filter(user=member, organization=organization).exists()

    client.force_login(owner)
    response = client.post(
        f"/org/members/{_membership(owner, organization).pk}/remove/", follow=True
    )
    assert response.status_code == 200
    assert any("last owner" in message for message in _messages(response))
    assert Membership.objects.filter(user=owner, organization=organization).exists()


# Switching --------------------------------------------------------------------------------


def test_switch_remembers_current_organization(client, owner, organization, other_organization):
    MembershipFactory(user=owner, organization=other_organization, role=Role.MEMBER)
    client.force_login(owner)
    assert client.get("/").context["organization"] == organization

    response = client.post(f"/orgs/{other_organization.slug}/switch/", {"next": "/org/members/"})
    assert response.status_code == 302
    assert response.url == "/org/members/"
    owner.refresh_from_db()
    assert owner.current_organization == other_organization
    page = client.get("/")
    assert page.context["organization"] == other_organization
    assert page.context["current_role"] == Role.MEMBER

    # The choice survives a new session.
    client.logout()
    client.force_login(owner)
    assert client.get("/").context["organization"] == other_organization


def test_switch_ignores_offsite_next(client, owner, organization):
    client.force_login(owner)
    response = client.post(f"/orgs/{organization.slug}/switch/", {"next": "//evil.example.com/"})
    assert response.status_code == 302
    assert response.url == "/"


def test_switch_to_foreign_organization_is_404(client, owner, other_organization):
    client.force_login(owner)
    assert client.post(f"/orgs/{other_organization.slug}/switch/").status_code == 404
    with pytest.raises(NotFound):
        organization_switch(user=owner, organization=other_organization)
    owner.refresh_from_db()
    assert owner.current_organization != other_organization


# Operator disabling -----------------------------------------------------------------------


def test_only_operators_disable_organizations(owner, organization):
    with pytest.raises(PermissionDenied):
        organization_set_active(operator=owner, organization=organization, active=False)
    organization.refresh_from_db()
    assert organization.is_active is True


def test_disabled_organization_blocks_members(
    client, token_client_for, operator, owner, member, organization
):
    api = token_client_for(owner)
    client.force_login(member)
    assert client.get("/org/members/").status_code == 200

    organization_set_active(operator=operator, organization=organization, active=False)
    organization.refresh_from_db()
    assert organization.is_active is False

    # The portal no longer treats it as anyone's current organisation.
    page = client.get("/")
    assert page.status_code == 200
    assert page.context["organization"] is None
    assert client.get("/org/members/").status_code == 404

    # The API says why, on every organisation-scoped endpoint.
    base = f"/api/v1/organizations/{organization.slug}"
    for response in (
        api.get(f"{base}/members/"),
        api.get(f"{base}/invitations/"),
        api.post(f"{base}/invitations/", {"email": "x@example.com"}, format="json"),
        api.patch(
            f"{base}/members/{_membership(member, organization).pk}/",
            {"role": Role.ADMIN},
            format="json",
        ),
        api.post(f"{base}/switch/"),
        api.patch(f"{base}/", {"name": "Still mine"}, format="json"),
    ):
        assert response.status_code == 403, response.content
        assert response.json()["error"]["message"] == DISABLED_MESSAGE

    with pytest.raises(PermissionDenied):
        organization_update(actor=owner, organization=organization, name="x")

    # The portal switcher refuses it with a message instead of failing.
    response = client.post(f"/orgs/{organization.slug}/switch/", follow=True)
    assert response.status_code == 200
    assert DISABLED_MESSAGE in _messages(response)

    # Operators still see it; enabling restores access.
    operator_api = token_client_for(operator)
    assert operator_api.get(f"{base}/members/").status_code == 200
    organization_set_active(operator=operator, organization=organization, active=True)
    assert client.get("/").context["organization"] == organization
    assert api.get(f"{base}/members/").status_code == 200


def test_disabled_organization_falls_back_to_another(
    client, owner, organization, other_organization
):
    MembershipFactory(user=owner, organization=other_organization, role=Role.MEMBER)
    organization_switch(user=owner, organization=organization)
    organization.is_active = False
    organization.save(update_fields=["is_active"])
    client.force_login(owner)
    assert client.get("/").context["organization"] == other_organization


def test_admin_action_disables_and_enables_organization(client, operator, organization):
    client.force_login(operator)
    url = "/admin/accounts/organization/"
    response = client.post(
        url, {"action": "disable_organizations", "_selected_action": [organization.pk]}
    )
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.is_active is False
    response = client.post(
        url, {"action": "enable_organizations", "_selected_action": [organization.pk]}
    )
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.is_active is True
    assert list(
        AuditEvent.objects.filter(organization=organization)
        .order_by("id")
        .values_list("action", flat=True)
    ) == [AuditAction.ORGANIZATION_DISABLED, AuditAction.ORGANIZATION_ENABLED]
