from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from remotegpu.core import secrets
from remotegpu.core.errors import ValidationError

from ..choices import AuditAction
from ..models import APIToken, User
from .audit import audit_record

TOKEN_PREFIX = "rgpu_"  # noqa: S105  (a public prefix, not a secret)


def token_digest(secret: str) -> str:
    return secrets.digest(secret)


def token_parse(raw: str) -> tuple[str, str] | None:
    """Split ``rgpu_<key>_<secret>`` into key and secret; None when it is not of that form."""
    return secrets.parse(raw, TOKEN_PREFIX)


def normalize_networks(networks: list[str]) -> list[str]:
    normalized = []
    for network in networks:
        network = network.strip()
        if not network:
            continue
        try:
            normalized.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError as exc:
            raise ValidationError.for_field(
                "allowed_ips",
                _("“%(value)s” is not an IP address or CIDR network.") % {"value": network},
            ) from exc
    return normalized


def ip_allowed(token: APIToken, ip: str | None) -> bool:
    if not token.allowed_ips:
        return True
    if not ip:
        return False
    address = ipaddress.ip_address(ip)
    return any(address in ipaddress.ip_network(network) for network in token.allowed_ips)


@dataclass(frozen=True)
class IssuedToken:
    token: APIToken
    plaintext: str  # shown once, never stored


@transaction.atomic
def token_create(
    *,
    user: User,
    name: str,
    write_enabled: bool = False,
    expires_at: datetime | None = None,
    allowed_ips: list[str] | None = None,
) -> IssuedToken:
    """Issue a token. The plaintext is returned once; the database keeps only its HMAC digest."""
    name = name.strip()
    if not name:
        raise ValidationError.for_field("name", _("A name is required."))
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError.for_field("expires_at", _("The expiry must be in the future."))
    networks = normalize_networks(allowed_ips or [])
    generated = secrets.generate(TOKEN_PREFIX)
    token = APIToken.objects.create(
        user=user,
        name=name,
        key=generated.key,
        digest=generated.digest,
        write_enabled=write_enabled,
        expires_at=expires_at,
        allowed_ips=networks,
    )
    audit_record(
        AuditAction.TOKEN_CREATED,
        actor=user,
        organization=user.current_organization,
        target=token,
        details={
            "write_enabled": write_enabled,
            "expires_at": expires_at and expires_at.isoformat(),
        },
    )
    return IssuedToken(token=token, plaintext=generated.plaintext)


@transaction.atomic
def token_revoke(*, actor: User, token: APIToken) -> APIToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at", "updated_at"])
        audit_record(
            AuditAction.TOKEN_REVOKED,
            actor=actor,
            organization=actor.current_organization,
            target=token,
        )
    return token


def token_touch(token: APIToken) -> None:
    """Record use, at most once a minute per token so that reads stay cheap."""
    now = timezone.now()
    interval = timedelta(seconds=settings.API_TOKEN_LAST_USED_INTERVAL)
    if token.last_used_at is None or now - token.last_used_at >= interval:
        APIToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
