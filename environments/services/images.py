"""The image catalogue, registry credentials, and pre-pulling images onto hosts."""

from __future__ import annotations

import re
from datetime import timedelta

from cryptography.fernet import InvalidToken
from django.db import transaction
from django.db.models import Q
from django.utils.translation import gettext as _

from accounts.choices import AuditAction
from accounts.models import Organization, User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator
from machines.choices import HostStatus
from machines.models import AgentCommand, Host
from machines.services.commands import command_create
from remotegpu.core.errors import ValidationError
from remotegpu.core.secrets import sealing_key

from ..choices import PortRole
from ..models import Image, RegistryCredential

# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
REFERENCE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
PREPULL_TIMEOUT_SECONDS = 3600


def prepull_progress_key(command_id) -> str:
    """Where a pre-pull's latest progress report is kept (the cache: it is gone with the
    pull, and the command row keeps the outcome)."""
    return f"environments:prepull:{command_id}"


def _sealing_key():
    return sealing_key(b"remotegpu registry credential v1")


def reference_validate(reference: str, field: str = "image_reference") -> str:
    reference = (reference or "").strip()
    if not reference or len(reference) > 300 or not REFERENCE.match(reference):
        raise ValidationError.for_field(
            field, _("Not an image reference (such as registry.example.com/team/image:tag).")
        )
    return reference


def registry_of(reference: str) -> str:
    """The registry a reference names (``docker.io`` when it names none)."""
    first, sep, _rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def image_list_for_organization(organization: Organization):
    """Catalogue images an organisation may choose: public ones and its own."""
    return Image.objects.filter(is_active=True).filter(
        Q(organization__isnull=True) | Q(organization=organization)
    )


def image_resolve(
    *, organization: Organization, image: Image | None, reference: str
) -> tuple[Image | None, str]:
    """The catalogue image chosen, or a custom reference where an operator allows them."""
    if image is not None:
        if reference:
            raise ValidationError.for_field(
                "image_reference", _("Choose a catalogue image or give a reference, not both.")
            )
        if not image_list_for_organization(organization).filter(pk=image.pk).exists():
            raise ValidationError.for_field("image", _("This image is not offered to you."))
        return image, image.reference
    if not reference:
        raise ValidationError.for_field("image", _("Choose an image."))
    reference = reference_validate(reference)
    if not organization.custom_images_allowed:
        raise ValidationError.for_field(
            "image_reference",
            _("Your organisation may only use catalogue images; ask an operator to allow more."),
        )
    return None, reference


def ports_validate(ports) -> list[dict]:
    if not isinstance(ports, list):
        raise ValidationError.for_field("ports", _("Give ports as a list."))
    cleaned, seen = [], set()
    for item in ports:
        if not isinstance(item, dict):
            raise ValidationError.for_field("ports", _("Each port is an object with a port."))
        port, role = item.get("port"), item.get("role", PortRole.TCP)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError.for_field("ports", _("A port is a number from 1 to 65535."))
        if role not in PortRole.values:
            raise ValidationError.for_field(
                "ports", _("Unknown port role %(role)s.") % {"role": role}
            )
        if port in seen:
            raise ValidationError.for_field(
                "ports", _("Port %(port)d is listed twice.") % {"port": port}
            )
        seen.add(port)
        cleaned.append({"port": port, "role": role, "name": str(item.get("name", ""))[:50]})
    return cleaned


@transaction.atomic
def image_save(*, operator: User, image: Image) -> Image:
    """Create or update a catalogue image (operators curate the catalogue)."""
    user_require_operator(operator)
    reference_validate(image.reference, "reference")
    image.ports = ports_validate(image.ports)
    if not isinstance(image.command, list) or not all(isinstance(a, str) for a in image.command):
        raise ValidationError.for_field("command", _("Give the command as a list of arguments."))
    if not isinstance(image.env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in image.env.items()
    ):
        raise ValidationError.for_field("env", _("Give variables as names and text values."))
    created = image.pk is None
    image.save()
    audit_record(
        AuditAction.IMAGE_CREATED if created else AuditAction.IMAGE_UPDATED,
        actor=operator,
        organization=image.organization,
        target=image,
        details={"reference": image.reference},
    )
    return image


@transaction.atomic
def registry_credential_save(
    *, operator: User, registry: str, username: str, password: str
) -> RegistryCredential:
    """Store (or replace) the login for ``registry``; the password is encrypted and never
    shown again."""
    user_require_operator(operator)
    registry = (registry or "").strip().lower()
    if not registry or not re.match(r"^[a-z0-9.-]+(:[0-9]+)?$", registry):
        raise ValidationError.for_field("registry", _("Give the registry's host and port."))
    if not username or not password:
        raise ValidationError.for_field("password", _("Give a user name and a password."))
    credential, _created = RegistryCredential.objects.update_or_create(
        registry=registry,
        defaults={
            "username": username,
            "password_encrypted": _sealing_key().encrypt(password.encode()).decode(),
        },
    )
    audit_record(
        AuditAction.REGISTRY_CREDENTIAL_SAVED,
        actor=operator,
        target=credential,
        details={"registry": registry, "username": username},
    )
    return credential


@transaction.atomic
def registry_credential_delete(*, operator: User, credential: RegistryCredential) -> None:
    user_require_operator(operator)
    audit_record(
        AuditAction.REGISTRY_CREDENTIAL_DELETED,
        actor=operator,
        target=credential,
        details={"registry": credential.registry},
    )
    credential.delete()


def registry_auth_for(reference: str) -> dict[str, str]:
    """The login the agent pulls ``reference`` with ({} when its registry needs none). It
    travels in the command and is wiped from the stored command when the command ends."""
    credential = RegistryCredential.objects.filter(registry=registry_of(reference)).first()
    if credential is None:
        return {}
    try:
        password = _sealing_key().decrypt(credential.password_encrypted.encode()).decode()
    except InvalidToken:  # SECRET_KEY changed since it was stored: pull without it
        return {}
    return {
        "username": credential.username,
        "password": password,
        "serveraddress": credential.registry,
    }


def image_prepull(*, operator: User, image: Image, hosts: list[Host]) -> list[AgentCommand]:
    """Pull ``image`` onto ``hosts`` now, so that starting there never waits for a pull.
    The agents report each pull's layers and bytes as they go (``image_prepull_list``)."""
    user_require_operator(operator)
    if not hosts:
        raise ValidationError.for_field("hosts", _("Choose at least one host."))
    unable = [
        host.name
        for host in hosts
        if host.status == HostStatus.RETIRED or not host.has_container_runtime
    ]
    if unable:
        raise ValidationError.for_field(
            "hosts",
            _("These hosts cannot pull images (retired, or no container runtime): %(hosts)s.")
            % {"hosts": ", ".join(unable)},
        )
    commands = [
        command_create(
            host=host,
            kind="image_pull",
            payload={"image": image.reference, "registry_auth": registry_auth_for(image.reference)},
            requested_by=operator,
            timeout=timedelta(seconds=PREPULL_TIMEOUT_SECONDS),
        )
        for host in hosts
    ]
    audit_record(
        AuditAction.IMAGE_PREPULL,
        actor=operator,
        target=image,
        details={"hosts": [host.name for host in hosts]},
    )
    return commands
