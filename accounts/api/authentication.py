"""``Authorization: Bearer rgpu_...`` authentication for the API."""

from django.utils.translation import gettext as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from remotegpu.core import secrets
from remotegpu.core.request_context import client_ip

from ..models import APIToken
from ..services.tokens import ip_allowed, token_parse, token_touch


class APITokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(_("Malformed Authorization header."))
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed(_("Malformed token.")) from exc
        parsed = token_parse(raw)
        if parsed is None:
            raise exceptions.AuthenticationFailed(_("Malformed token."))
        key, secret = parsed
        try:
            token = APIToken.objects.select_related("user").get(key=key)
        except APIToken.DoesNotExist:
            token = None
        if token is None or not secrets.digest_matches(token.digest, secret):
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed(_("This token has been revoked."))
        if token.is_expired:
            raise exceptions.AuthenticationFailed(_("This token has expired."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("This user account is disabled."))
        if not ip_allowed(token, client_ip(request.META)):
            raise exceptions.PermissionDenied(
                _("This token may not be used from %(ip)s.") % {"ip": client_ip(request.META)}
            )
        token_touch(token)
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


class APITokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = APITokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "rgpu_<key>_<secret>"}
