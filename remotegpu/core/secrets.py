"""Prefixed bearer secrets (``<prefix><key>_<secret>``) stored as an HMAC digest only.

API tokens (``rgpu_``), join tokens (``rjt_``) and host credentials (``rhc_``) share the format
but live in different tables, so one kind can never stand in for another. The key finds the
row; the secret is compared as HMAC-SHA256 keyed with ``API_TOKEN_PEPPER``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

KEY_LENGTH = 12
SECRET_LENGTH = 40
_ALPHABET = string.ascii_lowercase + string.digits


def digest(secret: str) -> str:
    return hmac.new(settings.API_TOKEN_PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()


def digest_matches(stored: str, secret: str) -> bool:
    return hmac.compare_digest(stored, digest(secret))


@dataclass(frozen=True)
class PrefixedSecret:
    prefix: str
    key: str
    secret: str

    @property
    def plaintext(self) -> str:
        return f"{self.prefix}{self.key}_{self.secret}"

    @property
    def digest(self) -> str:
        return digest(self.secret)


def generate(prefix: str) -> PrefixedSecret:
    key = "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LENGTH))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return PrefixedSecret(prefix, key, secret)


def parse(raw: str, prefix: str) -> tuple[str, str] | None:
    """Split ``<prefix><key>_<secret>``; None when ``raw`` is not of that form."""
    if not raw.startswith(prefix):
        return None
    key, sep, secret = raw[len(prefix) :].partition("_")
    if not sep or len(key) != KEY_LENGTH or len(secret) != SECRET_LENGTH:
        return None
    return key, secret


def sealing_key(purpose: bytes) -> Fernet:
    """A Fernet key for secrets the server must read back (an SSH password while onboarding,
    a registry password), derived from ``SECRET_KEY`` with HKDF, one per ``purpose``."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))
