from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from remotegpu.core.errors import ValidationError

from ..choices import AuditAction
from ..models import SSHKey, User
from .audit import audit_record

MIN_RSA_BITS = 2048
# Key type → the label ssh-keygen -l prints in parentheses.
SUPPORTED_TYPES = {
    "ssh-ed25519": "ED25519",
    "ssh-rsa": "RSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
}


@dataclass(frozen=True)
class ParsedKey:
    key_type: str
    bits: int
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint exactly as ``ssh-keygen -lf`` prints it (base64, no padding)."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def openssh(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


def _invalid(message) -> ValidationError:
    return ValidationError.for_field("public_key", message)


def ssh_key_parse(text: str) -> ParsedKey:
    """Parse and validate one OpenSSH public key line; raise a field error when it is unusable."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise _invalid(_("Paste one public key in OpenSSH format: “type base64 [comment]”."))
    key_type, encoded = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in SUPPORTED_TYPES:
        raise _invalid(
            _("Unsupported key type “%(type)s”. Use ed25519, RSA (2048 bits or more) or ECDSA.")
            % {"type": key_type[:40]}
        )
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(_("The key data is not valid base64.")) from exc
    # The blob starts with its own type name; it must agree with the declared one.
    if len(blob) < 4:
        raise _invalid(_("The key data is truncated."))
    (name_length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + name_length].decode("ascii", "replace") != key_type:
        raise _invalid(_("The key data does not match its declared type."))
    try:
        key = load_ssh_public_key(f"{key_type} {encoded}".encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _invalid(_("The key could not be read: it is malformed or truncated.")) from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    elif isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise _invalid(
                _("RSA keys must have at least %(bits)d bits; this one has %(actual)d.")
                % {"bits": MIN_RSA_BITS, "actual": bits}
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    else:  # pragma: no cover - SUPPORTED_TYPES admits nothing else
        raise _invalid(_("Unsupported key type."))
    return ParsedKey(key_type=key_type, bits=bits, blob=blob, comment=comment[:200])


def ssh_keygen_line(key: SSHKey) -> str:
    """The line ``ssh-keygen -lf`` prints for this key."""
    comment = key.comment or "no comment"
    return f"{key.bits} {key.fingerprint} {comment} ({SUPPORTED_TYPES.get(key.key_type, '?')})"


@transaction.atomic
def ssh_key_add(*, user: User, name: str, public_key: str) -> SSHKey:
    parsed = ssh_key_parse(public_key)
    name = name.strip() or parsed.comment or parsed.fingerprint
    if SSHKey.objects.filter(user=user, fingerprint=parsed.fingerprint).exists():
        raise _invalid(_("You have already added this key."))
    try:
        with transaction.atomic():
            key = SSHKey.objects.create(
                user=user,
                name=name[:100],
                key_type=parsed.key_type,
                bits=parsed.bits,
                public_key=parsed.openssh,
                fingerprint=parsed.fingerprint,
                comment=parsed.comment,
            )
    except IntegrityError as exc:
        raise _invalid(_("You have already added this key.")) from exc
    audit_record(
        AuditAction.SSH_KEY_ADDED,
        actor=user,
        organization=user.current_organization,
        target=key,
        details={"fingerprint": key.fingerprint},
    )
    return key


@transaction.atomic
def ssh_key_delete(*, actor: User, key: SSHKey) -> None:
    fingerprint = key.fingerprint
    audit_record(
        AuditAction.SSH_KEY_REMOVED,
        actor=actor,
        organization=actor.current_organization,
        target=key,
        details={"fingerprint": fingerprint},
    )
    key.delete()
