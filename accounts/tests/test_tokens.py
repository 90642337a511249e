"""API tokens: stored as digests, and every refusal the authentication class makes."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIToken
from accounts.services.tokens import (
    TOKEN_PREFIX,
    token_create,
    token_digest,
    token_parse,
    token_revoke,
)
from remotegpu.core.errors import ValidationError


def _client(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def _error(response) -> dict:
    return response.json()["error"]


def test_token_create_stores_only_hmac_digest(member):
    issued = token_create(user=member, name="ci")
    key, secret = token_parse(issued.plaintext)
    assert issued.plaintext.startswith(TOKEN_PREFIX)
    token = APIToken.objects.get(pk=issued.token.pk)
    assert token.key == key
    assert token.digest == token_digest(secret)
    assert secret not in token.digest
    # The plaintext and the secret appear nowhere in the row as PostgreSQL stores it.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT row_to_json(t)::text FROM accounts_apitoken t WHERE id = %s", [token.pk]
        )
        (row,) = cursor.fetchone()
    assert secret not in row
    assert issued.plaintext not in row
    assert str(token) == f"ci (rgpu_{key}_…)"


def test_bearer_token_authenticates_me(member):
    issued = token_create(user=member, name="ci")
    response = _client(issued.plaintext).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["email"] == member.email


def test_no_credentials_is_401(api_client, db):
    response = api_client.get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


def test_revoked_token_is_401_with_message(member):
    issued = token_create(user=member, name="ci")
    token_revoke(actor=member, token=issued.token)
    response = _client(issued.plaintext).get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"] == "This token has been revoked."


def test_expired_token_is_401(member):
    issued = token_create(user=member, name="ci", expires_at=timezone.now() + timedelta(days=1))
    client = _client(issued.plaintext)
    assert client.get("/api/v1/me/").status_code == 200
    APIToken.objects.filter(pk=issued.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"] == "This token has expired."


def test_read_only_token_cannot_write(member):
    issued = token_create(user=member, name="ro", write_enabled=False)
    client = _client(issued.plaintext)
    assert client.get("/api/v1/tokens/").status_code == 200
    response = client.post("/api/v1/tokens/", {"name": "new"}, format="json")
    assert response.status_code == 403
    assert "read-only" in _error(response)["message"]
    assert response.json()["error"]["code"] == "permission_denied"
    response = client.patch("/api/v1/me/", {"name": "Changed"}, format="json")
    assert response.status_code == 403
    assert APIToken.objects.filter(user=member).count() == 1


def test_write_token_can_write(member):
    issued = token_create(user=member, name="rw", write_enabled=True)
    response = _client(issued.plaintext).patch("/api/v1/me/", {"name": "Changed"}, format="json")
    assert response.status_code == 200
    member.refresh_from_db()
    assert member.name == "Changed"


def test_allowed_ips_excluding_client_is_403(member):
    issued = token_create(user=member, name="ci", allowed_ips=["10.0.0.0/8", "192.168.1.7"])
    assert issued.token.allowed_ips == ["10.0.0.0/8", "192.168.1.7/32"]
    response = _client(issued.plaintext).get("/api/v1/me/")
    assert response.status_code == 403
    assert "127.0.0.1" in _error(response)["message"]


def test_allowed_ips_including_client_is_200(member):
    issued = token_create(user=member, name="ci", allowed_ips=["10.0.0.0/8", "127.0.0.0/8"])
    assert _client(issued.plaintext).get("/api/v1/me/").status_code == 200


def test_allowed_ips_ipv6_client(member):
    issued = token_create(user=member, name="ci", allowed_ips=["::1"])
    client = _client(issued.plaintext)
    assert client.get("/api/v1/me/", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/api/v1/me/").status_code == 403


def test_disabled_users_token_is_401(member):
    issued = token_create(user=member, name="ci")
    member.is_active = False
    member.save(update_fields=["is_active"])
    response = _client(issued.plaintext).get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"] == "This user account is disabled."


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nonsense",
        "Bearer rgpu_short_secret",
        f"Bearer rgpu_{'a' * 12}_{'b' * 39}",
        "Bearer rgpu_ abc",
        "Bearer",
        "Bearer a b",
    ],
)
def test_malformed_token_is_401(member, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"]


def test_wrong_secret_is_401(member):
    issued = token_create(user=member, name="ci")
    key, secret = token_parse(issued.plaintext)
    wrong = f"{TOKEN_PREFIX}{key}_{'0' * len(secret)}"
    response = _client(wrong).get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"] == "Invalid token."


def test_unknown_key_is_401(member):
    response = _client(f"{TOKEN_PREFIX}{'x' * 12}_{'y' * 40}").get("/api/v1/me/")
    assert response.status_code == 401
    assert _error(response)["message"] == "Invalid token."


def test_last_used_at_updated_at_most_once_a_minute(member):
    issued = token_create(user=member, name="ci")
    client = _client(issued.plaintext)
    assert issued.token.last_used_at is None

    assert client.get("/api/v1/me/").status_code == 200
    first = APIToken.objects.get(pk=issued.token.pk).last_used_at
    assert first is not None

    recent = timezone.now() - timedelta(seconds=30)
    APIToken.objects.filter(pk=issued.token.pk).update(last_used_at=recent)
    assert client.get("/api/v1/me/").status_code == 200
    assert APIToken.objects.get(pk=issued.token.pk).last_used_at == recent

    stale = timezone.now() - timedelta(seconds=61)
    APIToken.objects.filter(pk=issued.token.pk).update(last_used_at=stale)
    before = timezone.now()
    assert client.get("/api/v1/me/").status_code == 200
    assert APIToken.objects.get(pk=issued.token.pk).last_used_at >= before


def test_invalid_allowed_ips_is_field_error(member):
    with pytest.raises(ValidationError) as caught:
        token_create(user=member, name="ci", allowed_ips=["10.0.0.0/8", "not-an-ip"])
    assert "not-an-ip" in caught.value.fields["allowed_ips"][0]
    assert not APIToken.objects.filter(user=member).exists()


def test_invalid_allowed_ips_via_api_is_400(token_client_for, member):
    response = token_client_for(member).post(
        "/api/v1/tokens/", {"name": "x", "allowed_ips": ["300.1.1.1"]}, format="json"
    )
    assert response.status_code == 400
    assert _error(response)["fields"]["allowed_ips"]


def test_expiry_in_the_past_is_field_error(member):
    with pytest.raises(ValidationError) as caught:
        token_create(user=member, name="ci", expires_at=timezone.now() - timedelta(minutes=1))
    assert caught.value.fields["expires_at"]


def test_expiry_in_the_past_via_api_is_400(token_client_for, member):
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    response = token_client_for(member).post(
        "/api/v1/tokens/", {"name": "x", "expires_at": past}, format="json"
    )
    assert response.status_code == 400
    assert _error(response)["fields"]["expires_at"]
    assert APIToken.objects.filter(user=member).count() == 1  # only the client's own token


def test_blank_name_is_field_error(member):
    with pytest.raises(ValidationError) as caught:
        token_create(user=member, name="   ")
    assert caught.value.fields["name"]


def test_revoke_via_api_stops_token_at_once(member):
    issued = token_create(user=member, name="ci", write_enabled=True)
    victim = token_create(user=member, name="victim")
    client = _client(issued.plaintext)
    assert client.delete(f"/api/v1/tokens/{victim.token.pk}/").status_code == 204
    assert _client(victim.plaintext).get("/api/v1/me/").status_code == 401
    assert client.get("/api/v1/me/").status_code == 200


def test_token_revoking_itself(member):
    issued = token_create(user=member, name="ci", write_enabled=True)
    client = _client(issued.plaintext)
    assert client.delete(f"/api/v1/tokens/{issued.token.pk}/").status_code == 204
    assert client.get("/api/v1/me/").status_code == 401


def test_cannot_revoke_other_users_token(token_client_for, member, outsider):
    theirs = token_create(user=outsider, name="theirs")
    response = token_client_for(member).delete(f"/api/v1/tokens/{theirs.token.pk}/")
    assert response.status_code == 404
    assert APIToken.objects.get(pk=theirs.token.pk).revoked_at is None


# Portal -----------------------------------------------------------------------------------


def test_portal_create_shows_plaintext_once(client, member):
    client.force_login(member)
    response = client.post(
        "/settings/tokens/new/",
        {"name": "laptop", "write_enabled": "on", "allowed_ips": "10.0.0.0/8\n127.0.0.1"},
    )
    assert response.status_code == 200
    plaintext = response.context["plaintext"]
    assert plaintext.startswith(TOKEN_PREFIX)
    assert plaintext in response.content.decode()
    token = APIToken.objects.get(user=member)
    assert token.write_enabled is True
    assert token.allowed_ips == ["10.0.0.0/8", "127.0.0.1/32"]

    listing = client.get("/settings/tokens/")
    assert listing.status_code == 200
    assert plaintext not in listing.content.decode()
    assert token.display_prefix in listing.content.decode()
    assert _client(plaintext).get("/api/v1/me/").status_code == 200


def test_portal_invalid_ip_and_past_expiry_are_field_errors(client, member):
    client.force_login(member)
    response = client.post(
        "/settings/tokens/new/",
        {"name": "laptop", "allowed_ips": "nope", "expires_at": "2000-01-01T00:00"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["expires_at"]
    assert not APIToken.objects.filter(user=member).exists()

    response = client.post("/settings/tokens/new/", {"name": "laptop", "allowed_ips": "nope"})
    assert response.status_code == 200
    assert response.context["form"].errors["allowed_ips"]


def test_portal_revoke(client, member):
    issued = token_create(user=member, name="ci")
    client.force_login(member)
    response = client.post(f"/settings/tokens/{issued.token.pk}/revoke/")
    assert response.status_code == 302
    assert APIToken.objects.get(pk=issued.token.pk).revoked_at is not None
    assert _client(issued.plaintext).get("/api/v1/me/").status_code == 401
