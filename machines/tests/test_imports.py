"""Batch import of hosts from CSV: all or nothing, every error by line, each host with its own
join token that an agent trades to become that host."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines.choices import HostStatus
from machines.models import Host, HostCredential, JoinToken
from machines.services.imports import MAX_BYTES, MAX_LISTED_ERRORS, MAX_ROWS, hosts_import_csv
from machines.services.join import (
    JOIN_TOKEN_PREFIX,
    credential_authenticate,
    host_join,
    imported_host_token_name,
)
from remotegpu.core import secrets
from remotegpu.core.errors import PermissionDenied, ValidationError

from .factories import HostFactory, RegionFactory, join_token_issue

PAGE = "/operator/hosts/import/"
TEMPLATE = "/operator/hosts/import/template.csv"
API = "/api/v1/hosts/import/"

VALID = (
    "name,address,region,labels\n"
    'gpu-01,10.0.0.11,eu-west,"gpu=a100;rack=7"\n'
    'gpu-02,GPU-02.Example.COM,Frankfurt Hall,"gpu=h100,rack=8"\n'
    "gpu-03,,,\n"
    "gpu-04,[2001:db8::0:1],eu-west,zone=b\n"
)


@pytest.fixture
def region(db):
    return RegionFactory(name="Frankfurt Hall", slug="eu-west")


def _nothing_imported(hosts_before: int) -> None:
    assert Host.objects.count() == hosts_before
    assert not JoinToken.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.HOST_IMPORTED).exists()


def _file_errors(excinfo) -> list[str]:
    assert set(excinfo.value.fields) == {"file"}, excinfo.value.fields
    return excinfo.value.fields["file"]


# The service -------------------------------------------------------------------------------


def test_import_creates_pending_hosts_each_with_its_own_join_token(operator, region):
    result = hosts_import_csv(operator, VALID)

    assert [item.host.name for item in result.hosts] == ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
    hosts = {host.name: host for host in Host.objects.select_related("region")}
    assert {name: (h.address, h.region, h.labels) for name, h in hosts.items()} == {
        "gpu-01": ("10.0.0.11", region, {"gpu": "a100", "rack": "7"}),
        "gpu-02": ("gpu-02.example.com", region, {"gpu": "h100", "rack": "8"}),
        "gpu-03": (None, None, {}),
        "gpu-04": ("2001:db8::1", region, {"zone": "b"}),
    }
    assert {host.status for host in hosts.values()} == {HostStatus.PENDING}
    assert not HostCredential.objects.exists()

    plaintexts = [item.token for item in result.hosts]
    assert len(set(plaintexts)) == 4
    for item in result.hosts:
        key, secret = secrets.parse(item.token, JOIN_TOKEN_PREFIX)
        token = JoinToken.objects.get(key=key)
        assert token.digest == secrets.digest(secret)
        assert token.name == f"import {item.host.name}"
        assert (token.max_uses, token.uses, token.region, token.labels) == (
            1,
            0,
            item.host.region,
            item.host.labels,
        )
        assert token.created_by == operator
        assert token.is_usable
    event = AuditEvent.objects.get(action=AuditAction.HOST_IMPORTED)
    assert event.actor == operator
    assert event.details["count"] == 4


def test_import_accepts_bytes_with_a_byte_order_mark_and_crlf(operator, region):
    data = ("\ufeff" + VALID.replace("\n", "\r\n")).encode()
    assert len(hosts_import_csv(operator, data).hosts) == 4


def test_import_is_for_operators_only(member, region):
    with pytest.raises(PermissionDenied):
        hosts_import_csv(member, VALID)
    assert not Host.objects.exists()


def test_import_lists_every_error_by_line_and_imports_nothing(operator, region):
    HostFactory(name="gpu-07", address="10.0.0.5")
    HostFactory(name="gpu-08", address="db.example.com")
    text = (
        "Name, Address ,REGION,labels\n"  # header names are trimmed and case-insensitive
        "gpu-10,10.0.0.10,eu-west,gpu=a100\n"  # 2: fine
        ",10.0.0.20,,\n"  # 3: no name
        "gpu-11,10.0.0.256,,\n"  # 4: not an address
        "gpu-12,bad_host!,,\n"  # 5: not an address
        "gpu-13,10.0.0.13,mars,\n"  # 6: no such region
        "gpu-14,10.0.0.14,,gpu\n"  # 7: not a label
        "gpu-10,10.0.0.15,,\n"  # 8: name again
        "gpu-16,10.0.0.10,,\n"  # 9: address again
        "gpu-07,10.0.0.17,,\n"  # 10: name taken
        "gpu-18,10.0.0.5,,\n"  # 11: address taken
        "gpu-19,DB.example.com,,\n"  # 12: address taken (names are case-insensitive)
        "gpu-20,10.0.0.20,eu-west,,extra\n"  # 13: one value too many
        "\n"  # blank lines are skipped but counted
        ",not an address,nowhere,x\n"  # 15: several errors on one line
        "gpu-21,10.0.0.21,eu-west,\n"  # 16: fine
    )
    hosts_before = Host.objects.count()

    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, text)

    assert _file_errors(excinfo) == [
        "line 3: name is required",
        "line 4: address 10.0.0.256 is not a host name or IP address",
        "line 5: address bad_host! is not a host name or IP address",
        "line 6: region mars does not exist",
        "line 7: labels: “gpu” is not a key=value label.",
        "line 8: name gpu-10 is also on line 2",
        "line 9: address 10.0.0.10 is also on line 2",
        "line 10: a host named gpu-07 already exists",
        "line 11: address 10.0.0.5 is already used by host gpu-07",
        "line 12: address db.example.com is already used by host gpu-08",
        "line 13: 5 values for 4 columns",
        "line 15: name is required",
        "line 15: address not an address is not a host name or IP address",
        "line 15: region nowhere does not exist",
        "line 15: labels: “x” is not a key=value label.",
    ]
    assert excinfo.value.message == "12 lines have errors; nothing was imported."
    _nothing_imported(hosts_before)


def test_line_numbers_count_lines_of_the_file_not_records(operator, region):
    text = 'name,labels\n\ngpu-01,"a=1,\nb=2"\ngpu-02,broken\n'
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, text)
    # The quoted cell of line 3 runs over two lines: the next record starts on line 5.
    assert _file_errors(excinfo) == ["line 5: labels: “broken” is not a key=value label."]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("", "The file is empty."),
        (" \n\n  \n", "The file is empty."),
        ("name,address,region,labels\n", "The file has a header but no hosts."),
        (
            "gpu-01,10.0.0.1,eu-west,gpu=a100\n",
            "The first line must be the header “name,address,region,labels”.",
        ),
        (
            "name,address,rack,owner\ngpu-01,10.0.0.1,7,x\n",
            "Unknown columns: “rack”, “owner”. The columns are name,address,region,labels.",
        ),
        ("name,address,name\ngpu-01,10.0.0.1,x\n", "Columns appear more than once: name."),
        ("address,region\n10.0.0.1,eu-west\n", "The header lacks the column “name”."),
        (
            "name\ngpu-01\n".encode("utf-16"),
            "The file is not UTF-8 text (byte 1); save it as “CSV UTF-8”.",
        ),
        (
            "name,labels\ngpu-01,café=1\n".encode("latin-1"),
            "The file is not UTF-8 text (byte 23); save it as “CSV UTF-8”.",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "header-only",
        "no-header",
        "unknown-columns",
        "repeated-column",
        "no-name-column",
        "utf-16",
        "latin-1",
    ],
)
def test_malformed_files_are_refused_with_a_clear_error(operator, region, data, error):
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, data)
    assert _file_errors(excinfo) == [error]
    assert str(excinfo.value.message) == error
    _nothing_imported(0)


def test_a_file_over_the_row_limit_is_refused(operator):
    rows = "".join(f"gpu-{n},,,\n" for n in range(MAX_ROWS + 1))
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, "name,address,region,labels\n" + rows)
    assert _file_errors(excinfo) == [
        "The file has more than 10000 hosts; split it into several files."
    ]
    _nothing_imported(0)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(operator):
    data = b"name\n" + b"x" * MAX_BYTES
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, data)
    assert _file_errors(excinfo) == ["The file is larger than 4 MiB."]


def test_the_row_limit_itself_is_allowed_and_errors_are_listed_up_to_a_cap(operator):
    # 10,000 rows pass the limit; every one repeats the name of an existing host, so all are
    # checked (three queries) and nothing is written.
    HostFactory(name="taken")
    rows = "taken\n" * MAX_ROWS
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, "name\n" + rows)
    errors = _file_errors(excinfo)
    assert len(errors) == MAX_LISTED_ERRORS + 1
    assert errors[0] == "line 2: a host named taken already exists"
    assert errors[1] == "line 3: name taken is also on line 2"
    assert errors[-1] == f"… and {2 * MAX_ROWS - 1 - MAX_LISTED_ERRORS} more errors."
    assert excinfo.value.message == "10000 lines have errors; nothing was imported."
    assert Host.objects.count() == 1


def test_a_name_too_long_for_its_join_token_is_refused(operator):
    long_name = "g" * 94  # "import " + 94 characters would not fit the token's name
    with pytest.raises(ValidationError) as excinfo:
        hosts_import_csv(operator, f"name\n{long_name}\n{'h' * 93}\n")
    assert _file_errors(excinfo) == [
        "line 2: name gggggggggggggggggggg… is longer than 93 characters"
    ]


# Joining an imported host ------------------------------------------------------------------


def test_the_agent_of_an_imported_host_becomes_that_host(operator, region):
    (item, other) = hosts_import_csv(operator, VALID).hosts[:2]

    joined = host_join(
        token=item.token, name="whatever-the-agent-says", facts={"hostname": "node17"}
    )

    assert joined.host.pk == item.host.pk
    assert Host.objects.count() == 4  # no new host
    host = Host.objects.get(pk=item.host.pk)
    assert (host.name, host.address, host.region, host.hostname) == (
        "gpu-01",
        "10.0.0.11",
        region,
        "node17",
    )
    assert credential_authenticate(joined.credential).host == host
    assert JoinToken.objects.get(name="import gpu-01").uses == 1
    # A token is bound to its own host only; used up, it cannot join again.
    with pytest.raises(ValidationError) as excinfo:
        host_join(token=item.token, name="gpu-01")
    assert set(excinfo.value.fields) == {"token"}
    assert not HostCredential.objects.filter(host=other.host).exists()


def test_a_bound_token_is_refused_once_its_host_has_left_pending(operator, region):
    item = hosts_import_csv(operator, "name\ngpu-09\n").hosts[0]
    Host.objects.filter(pk=item.host.pk).update(status=HostStatus.RETIRED)

    with pytest.raises(ValidationError) as excinfo:
        host_join(token=item.token, name="gpu-09-again")

    assert excinfo.value.fields["token"] == [
        "This join token was minted for host gpu-09, which has already joined or is no longer "
        "pending."
    ]
    assert Host.objects.count() == 1
    assert JoinToken.objects.get().uses == 0


def test_an_expired_imported_host_gets_a_new_token_by_its_name(operator, region):
    """The operator guide's advice: mint a token named "import <host>" for a host whose token
    was lost or expired."""
    item = hosts_import_csv(operator, "name\ngpu-05\n").hosts[0]
    JoinToken.objects.filter(name="import gpu-05").update(revoked_at="2020-01-01T00:00:00Z")
    issued = join_token_issue(operator, name=imported_host_token_name("gpu-05"))

    assert host_join(token=issued.plaintext, name="node-5").host.pk == item.host.pk


def test_a_token_named_import_without_such_a_host_is_an_ordinary_token(operator):
    issued = join_token_issue(operator, name="import rack 12")
    joined = host_join(token=issued.plaintext, name="node-12")
    assert joined.host.name == "node-12"
    assert joined.host.status == HostStatus.PENDING


@pytest.mark.django_db(transaction=True)
def test_a_real_agent_joins_an_imported_host(live_server, tmp_path):
    from accounts.tests.factories import OperatorFactory

    operator = OperatorFactory()
    RegionFactory(slug="eu-west")
    client = APIClient()
    client.force_login(operator)
    response = client.post(API, "name,region\ngpu-31,eu-west\n", content_type="text/csv")
    assert response.status_code == 201, response.content
    (imported,) = response.json()["hosts"]
    # The page's command, run as printed, pointed at the live server, with a state folder.
    join, _, run = imported["join_command"].partition(" && ")
    assert run == "remotegpu-agent run"
    argv = shlex.split(join)
    assert argv[:2] == ["remotegpu-agent", "join"]
    argv[argv.index("--server") + 1] = live_server.url

    result = subprocess.run(
        [sys.executable, "-m", "remotegpu_agent", *argv[1:], "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert f"joined as gpu-31 (host {imported['id']})" in result.stdout
    host = Host.objects.get()
    assert host.pk == imported["id"]
    assert HostCredential.objects.filter(host=host, revoked_at__isnull=True).count() == 1
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o600


# Pages -------------------------------------------------------------------------------------


def _upload(text: str, name: str = "hosts.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_the_host_list_links_to_the_import_page(client, operator):
    client.force_login(operator)
    assert f'href="{PAGE}"' in client.get("/operator/hosts/").content.decode()


def test_the_import_page_imports_and_shows_each_join_command(client, operator, region):
    client.force_login(operator)
    page = client.get(PAGE)
    assert page.status_code == 200
    assert f'href="{TEMPLATE}"' in page.content.decode()

    response = client.post(PAGE, {"file": _upload(VALID)})

    assert response.status_code == 200
    body = response.content.decode()
    assert "4 hosts imported" in body
    assert body.count('data-testid="join-command"') == 4
    assert body.count("data-copy=") == 4
    for host in Host.objects.all():
        assert f"/operator/hosts/{host.pk}/" in body
    commands = [
        line.split('value="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if 'data-testid="join-command"' in line
    ]
    tokens = {shlex.split(command)[5] for command in commands}
    assert len(tokens) == 4
    for command in commands:
        assert command.startswith("remotegpu-agent join --server http://testserver --token rjt_")
    assert {secrets.parse(token, JOIN_TOKEN_PREFIX)[0] for token in tokens} == set(
        JoinToken.objects.values_list("key", flat=True)
    )


def test_the_import_page_lists_line_errors_and_keeps_nothing(client, operator, region):
    HostFactory(name="gpu-07", address="10.0.0.5")
    client.force_login(operator)
    text = "name,address\ngpu-40,10.0.0.40\ngpu-41,10.0.0.5\n,\ngpu-42,10.0.0.42\n"

    response = client.post(PAGE, {"file": _upload(text)})

    assert response.status_code == 200
    body = response.content.decode()
    assert "1 line has errors; nothing was imported." in body
    assert "line 3: address 10.0.0.5 is already used by host gpu-07" in body
    assert Host.objects.count() == 1
    assert not JoinToken.objects.exists()


def test_the_import_page_shows_a_file_error_once(client, operator):
    client.force_login(operator)
    response = client.post(PAGE, {"file": _upload("", name="empty.csv")})
    body = response.content.decode()
    # Django refuses an empty upload before the service sees it.
    assert response.status_code == 200
    assert "The submitted file is empty." in body
    response = client.post(PAGE, {"file": _upload("address\n10.0.0.1\n")})
    assert response.content.decode().count("The header lacks the column “name”.") == 1


def test_the_template_csv_downloads_and_imports(client, operator, region):
    client.force_login(operator)
    response = client.get(TEMPLATE)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="hosts-template.csv"'
    text = response.content.decode()
    assert text.startswith("name,address,region,labels\n")
    assert [item.host.name for item in hosts_import_csv(operator, text).hosts] == [
        "gpu-01",
        "gpu-02",
    ]


@pytest.mark.parametrize("url", [PAGE, TEMPLATE])
def test_import_pages_are_for_operators_only(client, member, url):
    assert client.get(url)["Location"].startswith("/accounts/login/")
    client.force_login(member)
    assert client.get(url).status_code == 404
    assert client.post(url, {"file": _upload(VALID)}).status_code in (404, 405)
    assert not Host.objects.exists()


# API ---------------------------------------------------------------------------------------


def _operator_api(operator) -> APIClient:
    client = APIClient()
    client.force_authenticate(operator)
    return client


def test_api_imports_a_multipart_file(operator, region):
    response = _operator_api(operator).post(API, {"file": _upload(VALID)}, format="multipart")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["count"] == 4
    first = body["hosts"][0]
    host = Host.objects.get(name="gpu-01")
    assert first == {
        "id": host.pk,
        "name": "gpu-01",
        "address": "10.0.0.11",
        "region": "eu-west",
        "labels": {"gpu": "a100", "rack": "7"},
        "status": "pending",
        "token": first["token"],
        "join_command": (
            f"remotegpu-agent join --server http://testserver --token {first['token']} "
            "&& remotegpu-agent run"
        ),
    }
    assert body["hosts"][2]["region"] is None
    assert host_join(token=first["token"], name="x").host == host


def test_api_imports_a_text_csv_body(operator, region):
    response = _operator_api(operator).post(API, VALID, content_type="text/csv")
    assert response.status_code == 201, response.content
    assert [host["name"] for host in response.json()["hosts"]] == [
        "gpu-01",
        "gpu-02",
        "gpu-03",
        "gpu-04",
    ]


def test_api_answers_line_errors_in_the_error_shape(operator, region):
    HostFactory(name="gpu-07", address="10.0.0.5")
    text = "name,address\ngpu-50,10.0.0.50\ngpu-51,10.0.0.5\n"

    response = _operator_api(operator).post(API, text, content_type="text/csv")

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid",
            "message": "1 line has errors; nothing was imported.",
            "fields": {"file": ["line 3: address 10.0.0.5 is already used by host gpu-07"]},
        }
    }
    assert Host.objects.count() == 1


@pytest.mark.parametrize(
    "row",
    [
        "gpu-01,10.0.0.1,zone=a\x00b",
        "gpu-01,10.0.0.1,zone=a\x07b",
        "gpu-\x0001,10.0.0.1,",
        "gpu-01,10.0.\x000.1,",
    ],
    ids=["nul-in-label", "bell-in-label", "nul-in-name", "nul-in-address"],
)
def test_api_answers_control_characters_with_a_line_error(operator, row):
    text = f"name,address,labels\n{row}\n"
    response = _operator_api(operator).post(API, text.encode(), content_type="text/csv")
    assert response.status_code == 400
    (error,) = response.json()["error"]["fields"]["file"]
    assert error.startswith("line 2: ")
    assert not Host.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field_error"),
    [
        ({"data": {}, "format": "multipart"}, "No file was submitted."),
        ({"data": b"", "content_type": "text/csv"}, "No file was submitted."),
    ],
    ids=["no-file", "empty-body"],
)
def test_api_refuses_a_missing_file(operator, kwargs, field_error):
    response = _operator_api(operator).post(API, **kwargs)
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["file"] == [field_error]


def test_api_refuses_json(operator):
    response = _operator_api(operator).post(API, {"file": VALID}, format="json")
    assert response.status_code == 415


def test_api_is_for_operators_with_write_access(member, operator, token_client_for, region):
    anonymous = APIClient().post(API, VALID, content_type="text/csv")
    assert anonymous.status_code in (401, 403)
    customer = APIClient()
    customer.force_authenticate(member)
    assert customer.post(API, VALID, content_type="text/csv").status_code == 403
    read_only = token_client_for(operator, write=False)
    assert read_only.post(API, VALID, content_type="text/csv").status_code == 403
    assert not Host.objects.exists()


def test_the_import_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", headers={"Accept": "application/json"}).json()
    operation = schema["paths"]["/api/v1/hosts/import/"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "text/csv"}
    assert "201" in operation["responses"]
