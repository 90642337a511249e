"""SSH public keys: parsing and fingerprints match OpenSSH's own ``ssh-keygen`` byte for byte."""

import base64
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from accounts.models import AuditEvent, SSHKey
from accounts.services.ssh_keys import ssh_key_add, ssh_key_delete, ssh_key_parse, ssh_keygen_line
from accounts.tests.factories import UserFactory
from remotegpu.core.errors import ValidationError
from remotegpu.core.testing import require_executable

KEY_KINDS = [
    ("ed25519", None, "ssh-ed25519", 256),
    ("rsa", 2048, "ssh-rsa", 2048),
    ("rsa", 4096, "ssh-rsa", 4096),
    ("ecdsa", 256, "ecdsa-sha2-nistp256", 256),
    ("ecdsa", 384, "ecdsa-sha2-nistp384", 384),
    ("ecdsa", 521, "ecdsa-sha2-nistp521", 521),
]


def _keygen(directory, kind: str, bits: int | None, comment: str = "someone@laptop") -> str:
    """Generate a real key pair with ssh-keygen; return the path of the public half."""
    ssh_keygen = require_executable("ssh-keygen", "apt-get install openssh-client")
    path = directory / f"id_{kind}_{bits or 0}"
    command = [ssh_keygen, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if bits:
        command[4:4] = ["-b", str(bits)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return f"{path}.pub"


def _keygen_line(public_path: str) -> str:
    ssh_keygen = require_executable("ssh-keygen", "apt-get install openssh-client")
    result = subprocess.run(
        [ssh_keygen, "-lf", public_path], check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def generated_keys(tmp_path_factory):
    """One real key of every supported kind (RSA 4096 is slow, so generate each once)."""
    directory = tmp_path_factory.mktemp("ssh-keys")
    return {
        (kind, bits): _keygen(directory, kind, bits, comment=f"{kind}-{bits}@laptop")
        for kind, bits, _type, _bits in KEY_KINDS
    }


@pytest.fixture
def ed25519_public(generated_keys):
    with open(generated_keys[("ed25519", None)]) as handle:
        return handle.read().strip()


def _rsa_public(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _ssh_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _dss_public() -> str:
    """A well-formed ``ssh-dss`` line (OpenSSH no longer generates DSA keys everywhere)."""
    blob = b"".join(_ssh_string(part) for part in (b"ssh-dss", b"\x00" + b"\x11" * 128, b"\x13"))
    blob += b"".join(_ssh_string(b"\x00" + b"\x22" * 128) for _ in range(2))
    return "ssh-dss " + base64.b64encode(blob).decode() + " old@box"


@pytest.mark.parametrize(("kind", "bits", "key_type", "expected_bits"), KEY_KINDS)
def test_fingerprint_and_line_match_ssh_keygen(
    generated_keys, db, kind, bits, key_type, expected_bits
):
    public_path = generated_keys[(kind, bits)]
    with open(public_path) as handle:
        text = handle.read()
    expected = _keygen_line(public_path)

    parsed = ssh_key_parse(text)
    assert parsed.key_type == key_type
    assert parsed.bits == expected_bits
    assert parsed.fingerprint == expected.split()[1]

    key = ssh_key_add(user=UserFactory(), name="", public_key=text)
    assert ssh_keygen_line(key) == expected
    assert key.name == f"{kind}-{bits}@laptop"  # an empty name falls back to the comment
    assert key.public_key == " ".join(text.split()[:2])


def test_line_without_comment_matches_ssh_keygen(generated_keys, db, tmp_path):
    with open(generated_keys[("ed25519", None)]) as handle:
        bare = " ".join(handle.read().split()[:2])
    public_path = tmp_path / "bare.pub"
    public_path.write_text(bare + "\n")
    key = ssh_key_add(user=UserFactory(), name="laptop", public_key=bare)
    assert key.comment == ""
    assert ssh_keygen_line(key) == _keygen_line(str(public_path))
    assert "no comment" in ssh_keygen_line(key)


def _refusals(ed25519_public: str) -> dict[str, str]:
    key_type, encoded, _comment = ed25519_public.split(None, 2)
    four_aligned = encoded[: (len(encoded) // 2) // 4 * 4]
    return {
        "garbage": "this is not a key at all",
        "single word": "AAAAC3NzaC1lZDI1NTE5",
        "bad base64": f"{key_type} !!!not-base64!!!",
        "truncated base64": f"{key_type} {encoded[:-7]}",
        "truncated blob": f"{key_type} {four_aligned}",
        "type mismatch": f"ssh-rsa {encoded} mismatch@laptop",
        "rsa 1024": _rsa_public(1024),
        "ssh-dss": _dss_public(),
        "empty": "",
        "blank": "   \n ",
    }


REFUSAL_NAMES = [
    "garbage",
    "single word",
    "bad base64",
    "truncated base64",
    "truncated blob",
    "type mismatch",
    "rsa 1024",
    "ssh-dss",
    "empty",
    "blank",
]


@pytest.mark.parametrize("case", REFUSAL_NAMES)
def test_refused_keys_raise_public_key_field_error(ed25519_public, db, case):
    text = _refusals(ed25519_public)[case]
    with pytest.raises(ValidationError) as caught:
        ssh_key_parse(text)
    assert list(caught.value.fields) == ["public_key"]
    assert caught.value.fields["public_key"][0]

    user = UserFactory()
    with pytest.raises(ValidationError):
        ssh_key_add(user=user, name="x", public_key=text)
    assert not SSHKey.objects.filter(user=user).exists()


def test_refusal_messages_say_why(ed25519_public):
    cases = _refusals(ed25519_public)

    def message(case):
        with pytest.raises(ValidationError) as caught:
            ssh_key_parse(cases[case])
        return caught.value.fields["public_key"][0]

    assert "1024" in message("rsa 1024")
    assert "ssh-dss" in message("ssh-dss")
    assert "declared type" in message("type mismatch")
    assert "base64" in message("bad base64")


def test_duplicate_key_for_same_user_refused(ed25519_public, db):
    user = UserFactory()
    ssh_key_add(user=user, name="laptop", public_key=ed25519_public)
    with pytest.raises(ValidationError) as caught:
        # Same key material with a different comment is still the same key.
        ssh_key_add(user=user, name="again", public_key=ed25519_public.rsplit(" ", 1)[0] + " x@y")
    assert "already added" in caught.value.fields["public_key"][0]
    assert SSHKey.objects.filter(user=user).count() == 1


def test_same_key_for_two_users_allowed(ed25519_public, db):
    first = ssh_key_add(user=UserFactory(), name="a", public_key=ed25519_public)
    second = ssh_key_add(user=UserFactory(), name="b", public_key=ed25519_public)
    assert first.fingerprint == second.fingerprint
    assert first.user_id != second.user_id


def test_delete_removes_key_and_is_audited(ed25519_public, db):
    user = UserFactory()
    key = ssh_key_add(user=user, name="laptop", public_key=ed25519_public)
    ssh_key_delete(actor=user, key=key)
    assert not SSHKey.objects.filter(user=user).exists()
    event = AuditEvent.objects.get(action="ssh_key.removed")
    assert event.details == {"fingerprint": key.fingerprint}


# Portal -----------------------------------------------------------------------------------


def test_portal_add_list_and_delete(client, member, generated_keys):
    public_path = generated_keys[("ecdsa", 384)]
    with open(public_path) as handle:
        text = handle.read()
    client.force_login(member)
    response = client.post("/settings/ssh-keys/new/", {"name": "", "public_key": text})
    assert response.status_code == 302
    key = SSHKey.objects.get(user=member)

    page = client.get("/settings/ssh-keys/")
    assert page.status_code == 200
    assert _keygen_line(public_path) in page.content.decode()

    response = client.post(f"/settings/ssh-keys/{key.pk}/delete/")
    assert response.status_code == 302
    assert not SSHKey.objects.filter(user=member).exists()


@pytest.mark.parametrize("case", ["garbage", "type mismatch", "rsa 1024", "ssh-dss", "empty"])
def test_portal_shows_field_error(client, member, ed25519_public, case):
    client.force_login(member)
    response = client.post(
        "/settings/ssh-keys/new/",
        {"name": "x", "public_key": _refusals(ed25519_public)[case]},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["public_key"]
    assert b'data-testid="error-public_key"' in response.content
    assert not SSHKey.objects.filter(user=member).exists()


def test_portal_duplicate_shows_field_error(client, member, ed25519_public):
    client.force_login(member)
    client.post("/settings/ssh-keys/new/", {"name": "a", "public_key": ed25519_public})
    response = client.post("/settings/ssh-keys/new/", {"name": "b", "public_key": ed25519_public})
    assert response.status_code == 200
    assert "already added" in response.context["form"].errors["public_key"][0]


def test_portal_cannot_delete_someone_elses_key(client, member, outsider, ed25519_public):
    key = ssh_key_add(user=outsider, name="theirs", public_key=ed25519_public)
    client.force_login(member)
    assert client.post(f"/settings/ssh-keys/{key.pk}/delete/").status_code == 404
    assert SSHKey.objects.filter(pk=key.pk).exists()


# API --------------------------------------------------------------------------------------


def test_api_create_returns_ssh_keygen_line(token_client_for, member, generated_keys):
    public_path = generated_keys[("rsa", 4096)]
    with open(public_path) as handle:
        text = handle.read()
    client = token_client_for(member)
    response = client.post("/api/v1/ssh-keys/", {"name": "big", "public_key": text}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["ssh_keygen"] == _keygen_line(public_path)
    assert body["bits"] == 4096
    assert body["key_type"] == "ssh-rsa"

    listing = client.get("/api/v1/ssh-keys/").json()
    assert [row["fingerprint"] for row in listing["results"]] == [body["fingerprint"]]

    assert client.delete(f"/api/v1/ssh-keys/{body['id']}/").status_code == 204
    assert not SSHKey.objects.filter(user=member).exists()


@pytest.mark.parametrize(
    "case", ["garbage", "truncated base64", "type mismatch", "rsa 1024", "ssh-dss"]
)
def test_api_refusal_is_400_with_field_error(token_client_for, member, ed25519_public, case):
    client = token_client_for(member)
    response = client.post(
        "/api/v1/ssh-keys/",
        {"name": "x", "public_key": _refusals(ed25519_public)[case]},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert isinstance(error["fields"]["public_key"], list)
    assert error["fields"]["public_key"][0]
    assert error["message"]


def test_api_empty_key_is_400_with_field_error(token_client_for, member):
    response = token_client_for(member).post(
        "/api/v1/ssh-keys/", {"name": "x", "public_key": ""}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["public_key"]


def test_api_duplicate_is_400(token_client_for, member, ed25519_public):
    client = token_client_for(member)
    payload = {"name": "x", "public_key": ed25519_public}
    assert client.post("/api/v1/ssh-keys/", payload, format="json").status_code == 201
    response = client.post("/api/v1/ssh-keys/", payload, format="json")
    assert response.status_code == 400
    assert "already added" in response.json()["error"]["fields"]["public_key"][0]


def test_api_other_users_key_is_404(token_client_for, member, outsider, ed25519_public):
    key = ssh_key_add(user=outsider, name="theirs", public_key=ed25519_public)
    client = token_client_for(member)
    assert client.get(f"/api/v1/ssh-keys/{key.pk}/").status_code == 404
    assert client.delete(f"/api/v1/ssh-keys/{key.pk}/").status_code == 404
    assert SSHKey.objects.filter(pk=key.pk).exists()
