"""django-allauth's pages render inside the portal layout, and its forms still work there."""

import re
import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from allauth.usersessions.models import UserSession
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import PASSWORD, UserFactory

NAVBAR_BRAND = 'class="navbar-brand'
STYLESHEET = "remotegpu/portal.css"


def assert_in_portal_layout(response, *, layout):
    """The page is ours (navbar, stylesheet, Bootstrap) and allauth's content sits in a card."""
    assert response.status_code == 200
    html = response.content.decode()
    assert NAVBAR_BRAND in html
    assert STYLESHEET in html
    assert "vendor/bootstrap/bootstrap.min.css" in html
    assert f"allauth-{layout}" in html
    # allauth's bare layout ("Menu:" list) must not leak through.
    assert "<strong>Menu:</strong>" not in html
    return html


def signed_in_client(client, user):
    """Sign in through allauth's own form, so allauth records a fresh authentication."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()
    return client


def activate_totp(client, user):
    """Confirm the password (allauth asks before MFA changes), then activate an authenticator."""
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_reauthenticate"))
    reauthenticate_page = client.get(response.url)
    html = assert_in_portal_layout(reauthenticate_page, layout="entrance")
    assert re.search(r'<input class="form-control"[^>]*name="password"', html)
    response = client.post(response.url, {"password": PASSWORD})
    assert response.status_code == 302
    activate_page = client.get(reverse("mfa_activate_totp"))
    secret = client.session[SECRET_SESSION_KEY]
    response = client.post(reverse("mfa_activate_totp"), {"code": current_totp_code(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()
    return activate_page


def current_totp_code(secret):
    counter = int(time.time()) // mfa_settings.TOTP_PERIOD
    return format_hotp_value(hotp_value(secret, counter))


@pytest.mark.parametrize(
    "url_name",
    ["account_login", "account_signup", "account_reset_password", "account_reset_password_done"],
)
def test_entrance_pages_render_in_portal_layout(client, db, url_name):
    html = assert_in_portal_layout(client.get(reverse(url_name)), layout="entrance")
    assert 'class="card' in html
    assert "btn btn-primary" in html or url_name == "account_reset_password_done"


def test_login_form_is_styled_and_keeps_field_names(client, db):
    html = client.get(reverse("account_login")).content.decode()
    assert re.search(r'<input class="form-control"[^>]*name="login"', html)
    assert re.search(r'<input class="form-control"[^>]*name="password"', html)
    assert re.search(r'<input class="form-check-input"[^>]*name="remember"', html)
    assert re.search(r'<button\s+class="btn btn-primary w-100"[^>]*type="submit"', html)


def test_signup_form_keeps_field_names(client, db):
    html = client.get(reverse("account_signup")).content.decode()
    for name in ("email", "password1", "password2"):
        assert re.search(rf'<input class="form-control"[^>]*name="{name}"', html), name


def test_wrong_password_shows_a_form_error_and_no_password_echo(client, db):
    user = UserFactory()
    response = client.post(
        reverse("account_login"), {"login": user.email, "password": "wrong-password-123"}
    )
    html = assert_in_portal_layout(response, layout="entrance")
    assert 'data-testid="form-errors"' in html
    assert "alert alert-danger" in html
    assert "wrong-password-123" not in html
    assert f'value="{user.email}"' in html


def test_login_signs_in(client, db):
    user = UserFactory()
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("accounts:dashboard")
    assert client.get(reverse("accounts:dashboard")).context["user"] == user


def test_signup_sends_a_confirmation_email_and_the_link_confirms(client, db):
    response = client.post(
        reverse("account_signup"),
        {"email": "newcomer@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response.url == reverse("account_email_verification_sent")
    assert_in_portal_layout(client.get(response.url), layout="entrance")

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["newcomer@example.com"]
    link = re.search(r"https?://\S+(/accounts/confirm-email/\S+/)", mail.outbox[0].body).group(1)
    confirm_page = client.get(link)
    html = assert_in_portal_layout(confirm_page, layout="entrance")
    assert "newcomer@example.com" in html
    assert client.post(link).status_code == 302
    assert EmailAddress.objects.get(email="newcomer@example.com").verified


def test_signup_errors_are_invalid_feedback(client, db):
    UserFactory(email="taken@example.com")
    response = client.post(
        reverse("account_signup"),
        {"email": "not-an-email", "password1": "x", "password2": "y"},
    )
    html = assert_in_portal_layout(response, layout="entrance")
    assert re.search(r'<input class="form-control is-invalid"[^>]*name="email"', html)
    assert 'class="invalid-feedback" data-testid="error-email"' in html
    assert not User.objects.filter(email="not-an-email").exists()
    assert mail.outbox == []


def test_invalid_confirmation_link_renders_in_layout(client, db):
    response = client.get(reverse("account_confirm_email", args=["no-such-key"]))
    html = assert_in_portal_layout(response, layout="entrance")
    assert reverse("account_email") in html


def test_password_reset_sends_mail_and_key_page_sets_password(client, db):
    user = UserFactory()
    response = client.post(reverse("account_reset_password"), {"email": user.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://\S+(/accounts/password/reset/key/\S+/)", mail.outbox[0].body)
    form_page = client.get(link.group(1), follow=True)
    html = assert_in_portal_layout(form_page, layout="entrance")
    assert re.search(r'<input class="form-control"[^>]*name="password1"', html)
    new_password = "another-long-passphrase-42"
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"password1": new_password, "password2": new_password},
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_bad_password_reset_token_renders_in_layout(client, db):
    response = client.get(
        reverse("account_reset_password_from_key", kwargs={"uidb36": "zz", "key": "bad-key"})
    )
    assert_in_portal_layout(response, layout="entrance")


@pytest.mark.parametrize(
    "url_name",
    [
        "account_email",
        "account_change_password",
        "mfa_index",
        "usersessions_list",
        "account_logout",
    ],
)
def test_manage_pages_render_in_portal_layout(client, db, url_name):
    signed_in_client(client, UserFactory())
    html = assert_in_portal_layout(client.get(reverse(url_name)), layout="manage")
    assert 'data-testid="account-settings-nav"' in html
    assert 'data-testid="main-nav"' in html


def test_sessions_page_lists_each_sign_in_and_signs_the_others_out(client, db):
    user = UserFactory()
    laptop, phone = Client(HTTP_USER_AGENT="Laptop/1.0"), Client(HTTP_USER_AGENT="Phone/2.0")
    signed_in_client(laptop, user)
    signed_in_client(phone, user)
    assert UserSession.objects.filter(user=user).count() == 2

    html = assert_in_portal_layout(laptop.get(reverse("usersessions_list")), layout="manage")
    assert "Laptop/1.0" in html
    assert "Phone/2.0" in html

    response = laptop.post(reverse("usersessions_list"))
    assert response.status_code == 302
    assert phone.get(reverse("accounts:dashboard")).status_code == 302  # signed out
    assert laptop.get(reverse("accounts:dashboard")).status_code == 200
    assert list(UserSession.objects.filter(user=user).values_list("user_agent", flat=True)) == [
        "Laptop/1.0"
    ]


def test_email_page_lists_addresses_with_badges_and_adds_one(client, db):
    user = UserFactory()
    signed_in_client(client, user)
    html = client.get(reverse("account_email")).content.decode()
    assert re.search(r'<input class="form-check-input" type="radio"\s+name="email"', html)
    assert "badge ms-1 text-bg-success" in html
    response = client.post(
        reverse("account_email"), {"action_add": "", "email": "second@example.com"}
    )
    assert response.status_code == 302
    assert EmailAddress.objects.filter(user=user, email="second@example.com").exists()
    assert len(mail.outbox) == 1


def test_change_password_errors_are_invalid_feedback(client, db):
    user = UserFactory()
    signed_in_client(client, user)
    response = client.post(
        reverse("account_change_password"),
        {"oldpassword": "not-it", "password1": "n3w-passphrase!", "password2": "n3w-passphrase!"},
    )
    html = assert_in_portal_layout(response, layout="manage")
    assert re.search(r'<input class="form-control is-invalid"[^>]*name="oldpassword"', html)
    assert 'data-testid="error-oldpassword"' in html
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_totp_activation_shows_qr_and_then_recovery_codes(client, db):
    user = UserFactory()
    signed_in_client(client, user)
    html = assert_in_portal_layout(activate_totp(client, user), layout="manage")
    assert 'data-testid="totp-qr"' in html
    assert 'src="data:image/svg+xml' in html
    assert re.search(r'<input class="form-control"[^>]*name="code"', html)

    index = assert_in_portal_layout(client.get(reverse("mfa_index")), layout="manage")
    assert 'class="card mb-3"' in index  # allauth panels are cards
    codes = assert_in_portal_layout(client.get(reverse("mfa_view_recovery_codes")), layout="manage")
    assert re.search(r'<textarea class="form-control font-monospace"[^>]*readonly', codes)
    unused = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES)
    assert unused.wrap().get_unused_codes()[0] in codes


def test_second_factor_prompt_renders_in_layout(client, db):
    user = UserFactory()
    activate_totp(signed_in_client(client, user), user)
    client.logout()

    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("mfa_authenticate")
    html = assert_in_portal_layout(client.get(response.url), layout="entrance")
    assert re.search(r'<input class="form-control"[^>]*name="code"', html)
