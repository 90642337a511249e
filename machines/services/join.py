"""Join tokens and host credentials: the two-step trust of ARCHITECTURE.md §3."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator
from remotegpu.core import secrets
from remotegpu.core.errors import ValidationError

from ..choices import HostStatus
from ..models import Host, HostCredential, JoinToken, Region
from .hosts import labels_parse, labels_validate
from .realtime import disconnect_agent

JOIN_TOKEN_PREFIX = "rjt_"  # noqa: S105  (public prefixes, not secrets)
CREDENTIAL_PREFIX = "rhc_"
MAX_JOIN_TOKEN_LIFETIME = timedelta(days=365)
# A join token named "import <host>" is bound to that host while it exists (see host_join).
IMPORTED_HOST_TOKEN_PREFIX = "import "  # noqa: S105  (a name, not a secret)


def imported_host_token_name(host_name: str) -> str:
    """The name of the join token that lets the agent of the pending host ``host_name`` join."""
    return f"{IMPORTED_HOST_TOKEN_PREFIX}{host_name}"


@dataclass(frozen=True)
class IssuedJoinToken:
    join_token: JoinToken
    plaintext: str


@transaction.atomic
def join_token_create(
    *,
    operator: User,
    name: str,
    region: Region | None = None,
    labels: dict[str, str] | str | None = None,
    expires_at: datetime | None = None,
    max_uses: int = 1,
) -> IssuedJoinToken:
    """Mint a join token; its plaintext is returned once."""
    user_require_operator(operator)
    name = name.strip()
    if not name:
        raise ValidationError.for_field("name", _("A name is required."))
    now = timezone.now()
    expires_at = expires_at or now + timedelta(days=1)
    if expires_at <= now:
        raise ValidationError.for_field("expires_at", _("The expiry must be in the future."))
    if expires_at - now > MAX_JOIN_TOKEN_LIFETIME:
        raise ValidationError.for_field("expires_at", _("A join token lives at most a year."))
    if max_uses < 1:
        raise ValidationError.for_field("max_uses", _("A token must allow at least one use."))
    generated = secrets.generate(JOIN_TOKEN_PREFIX)
    join_token = JoinToken.objects.create(
        name=name,
        key=generated.key,
        digest=generated.digest,
        region=region,
        labels=labels_parse(labels) if isinstance(labels, str) else labels_validate(labels or {}),
        expires_at=expires_at,
        max_uses=max_uses,
        created_by=operator,
    )
    audit_record(
        AuditAction.JOIN_TOKEN_CREATED,
        actor=operator,
        target=join_token,
        details={"max_uses": max_uses, "expires_at": expires_at.isoformat()},
    )
    return IssuedJoinToken(join_token=join_token, plaintext=generated.plaintext)


@transaction.atomic
def join_token_revoke(*, operator: User, join_token: JoinToken) -> None:
    user_require_operator(operator)
    if join_token.revoked_at is None:
        join_token.revoked_at = timezone.now()
        join_token.save(update_fields=["revoked_at", "updated_at"])
        audit_record(AuditAction.JOIN_TOKEN_REVOKED, actor=operator, target=join_token)


def _issue_credential(host: Host, join_token: JoinToken | None) -> str:
    generated = secrets.generate(CREDENTIAL_PREFIX)
    HostCredential.objects.create(
        host=host, key=generated.key, digest=generated.digest, join_token=join_token
    )
    return generated.plaintext


@dataclass(frozen=True)
class JoinedHost:
    host: Host
    credential: str  # shown to the agent once


def _invalid_token() -> ValidationError:
    return ValidationError.for_field(
        "token", _("This join token is invalid, expired, revoked or used up.")
    )


def _bound_host(join_token: JoinToken) -> Host | None:
    """The pending host a token named "import <host>" was minted for, locked; None for a token
    bound to no host. A bound host that already joined or left ``pending`` refuses the token."""
    if not join_token.name.startswith(IMPORTED_HOST_TOKEN_PREFIX):
        return None
    host = (
        Host.objects.select_for_update()
        .filter(name=join_token.name.removeprefix(IMPORTED_HOST_TOKEN_PREFIX))
        .annotate(has_credential=Exists(HostCredential.objects.filter(host=OuterRef("pk"))))
        .first()
    )
    if host is not None and (host.status != HostStatus.PENDING or host.has_credential):
        raise ValidationError.for_field(
            "token",
            _(
                "This join token was minted for host %(name)s, which has already joined or is no "
                "longer pending."
            )
            % {"name": host.name},
        )
    return host


@transaction.atomic
def host_join(*, token: str, name: str, facts: dict | None = None) -> JoinedHost:
    """Trade a join token for a host credential (one use of the token).

    The token makes a new host named ``name``, unless it is bound to a pending host (a host
    imported from CSV gets a token named "import <its name>"): the agent then becomes that host,
    whatever name it sent, and the host keeps the name, region and labels the operator gave it.
    """
    parsed = secrets.parse(token.strip(), JOIN_TOKEN_PREFIX)
    if parsed is None:
        raise _invalid_token()
    key, secret = parsed
    join_token = JoinToken.objects.select_for_update().filter(key=key).first()
    if join_token is None or not secrets.digest_matches(join_token.digest, secret):
        raise _invalid_token()
    if not join_token.is_usable:
        raise _invalid_token()
    name = name.strip()[:100]
    if not name:
        raise ValidationError.for_field("name", _("A host name is required."))
    hostname = str((facts or {}).get("hostname", ""))[:255]
    host = _bound_host(join_token)
    if host is not None:
        host.hostname = hostname
        host.save(update_fields=["hostname", "updated_at"])
    else:
        try:
            with transaction.atomic():
                host = Host.objects.create(
                    name=name,
                    region=join_token.region,
                    labels=dict(join_token.labels),
                    status=HostStatus.PENDING,
                    hostname=hostname,
                )
        except IntegrityError as exc:
            raise ValidationError.for_field(
                "name", _("A host named “%(name)s” already exists.") % {"name": name}
            ) from exc
    join_token.uses += 1
    join_token.save(update_fields=["uses", "updated_at"])
    credential = _issue_credential(host, join_token)
    audit_record(
        AuditAction.HOST_JOINED,
        actor_email=f"agent:{name}",
        target=host,
        details={"join_token": join_token.name},
    )
    return JoinedHost(host=host, credential=credential)


def credential_authenticate(raw: str) -> HostCredential | None:
    """The live credential ``raw`` stands for, with its host; None for anything else."""
    parsed = secrets.parse(raw.strip(), CREDENTIAL_PREFIX)
    if parsed is None:
        return None
    key, secret = parsed
    credential = (
        HostCredential.objects.select_related("host")
        .filter(key=key, revoked_at__isnull=True)
        .first()
    )
    if credential is None or not secrets.digest_matches(credential.digest, secret):
        return None
    if credential.host.status == HostStatus.RETIRED:
        return None
    HostCredential.objects.filter(pk=credential.pk).update(last_used_at=timezone.now())
    return credential


def _revoke_all(host: Host) -> int:
    """Revoke the host's live credentials, its row locked first (inside the caller's
    transaction): a concurrent rotation or revocation waits for this one to commit and then sees
    the credential it issued, so two rotations never leave two live credentials."""
    Host.objects.select_for_update().only("pk").get(pk=host.pk)
    return HostCredential.objects.filter(host=host, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


@transaction.atomic
def credential_revoke(*, operator: User, host: Host) -> int:
    """Revoke every credential of ``host``; its agent's socket is closed at once."""
    user_require_operator(operator)
    count = _revoke_all(host)
    disconnect_agent(host.pk)
    audit_record(AuditAction.HOST_CREDENTIAL_REVOKED, actor=operator, target=host)
    return count


@transaction.atomic
def credential_rotate(*, operator: User, host: Host) -> str:
    """Replace the host's credential: the old one stops working, the new one is returned once.

    The agent must be given the new credential (``remotegpu-agent`` config) by the operator.
    """
    user_require_operator(operator)
    _revoke_all(host)
    plaintext = _issue_credential(host, None)
    disconnect_agent(host.pk)
    audit_record(AuditAction.HOST_CREDENTIAL_ROTATED, actor=operator, target=host)
    return plaintext
