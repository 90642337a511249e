"""Batch import of hosts from CSV: every row checked, nothing kept unless every row is valid."""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator
from remotegpu.core.errors import ValidationError

from ..choices import HostStatus
from ..models import Host, JoinToken, Region
from .hosts import labels_parse
from .join import IMPORTED_HOST_TOKEN_PREFIX, imported_host_token_name, join_token_create

COLUMNS = ("name", "address", "region", "labels")
REQUIRED_COLUMNS = ("name",)
MAX_ROWS = 10_000
MAX_BYTES = 4 * 1024 * 1024
MAX_LISTED_ERRORS = 1000
# Each host's join token is named after it (that binds the two), within the token name's length.
MAX_NAME_LENGTH = JoinToken._meta.get_field("name").max_length - len(IMPORTED_HOST_TOKEN_PREFIX)
# Imported servers may take a while to be racked and installed.
IMPORT_TOKEN_LIFETIME = timedelta(days=7)
HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

TEMPLATE_CSV = (
    "name,address,region,labels\n"
    'gpu-01,10.0.0.11,eu-west,"gpu=a100;rack=7"\n'
    "gpu-02,gpu-02.example.com,eu-west,gpu=h100\n"
)


@dataclass(frozen=True)
class ImportedHost:
    host: Host
    token: str  # the plaintext of its single-use join token, shown once


@dataclass(frozen=True)
class ImportResult:
    hosts: list[ImportedHost]


@dataclass
class _Row:
    line: int
    name: str
    address: str | None
    region: Region | None
    labels: dict[str, str]


def _file_error(message: str) -> ValidationError:
    return ValidationError.for_field("file", message)


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise _file_error(
                _("The file is larger than %(size)d MiB.") % {"size": MAX_BYTES // 2**20}
            )
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _file_error(
                _("The file is not UTF-8 text (byte %(position)d); save it as “CSV UTF-8”.")
                % {"position": exc.start + 1}
            ) from exc
    return data.removeprefix("\ufeff")  # the byte-order mark spreadsheets put first


def _records(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's column names and the non-blank records, each with the line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    records = []
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _file_error(
                _("line %(line)d: %(error)s")
                % {"line": line, "error": _("not valid CSV (%(reason)s)") % {"reason": exc}}
            ) from exc
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            continue
        if len(records) == MAX_ROWS:
            raise _file_error(
                _("The file has more than %(count)d hosts; split it into several files.")
                % {"count": MAX_ROWS}
            )
        records.append((line, record))
    if header is None:
        raise _file_error(_("The file is empty."))
    _check_header(header)
    if not records:
        raise _file_error(_("The file has a header but no hosts."))
    return header, records


def _check_header(header: list[str]) -> None:
    expected = ",".join(COLUMNS)
    if not set(header) & set(COLUMNS):
        raise _file_error(
            _("The first line must be the header “%(header)s”.") % {"header": expected}
        )
    unknown = [column for column in header if column not in COLUMNS]
    if unknown:
        raise _file_error(
            _("Unknown columns: %(columns)s. The columns are %(header)s.")
            % {"columns": ", ".join(f"“{column}”" for column in unknown), "header": expected}
        )
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise _file_error(
            _("Columns appear more than once: %(columns)s.") % {"columns": ", ".join(repeated)}
        )
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise _file_error(_("The header lacks the column “%(column)s”.") % {"column": missing[0]})


def address_normalize(value: str) -> str | None:
    """An IP address in its canonical form or a host name in lower case; None if neither."""
    try:
        return str(ipaddress.ip_address(value.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    name = value.lower()
    labels = name.split(".")
    # A last label of digits only would be a mistyped IPv4 address, not a name.
    if len(name) > 253 or labels[-1].isdigit():
        return None
    if all(HOSTNAME_LABEL.match(label) for label in labels):
        return name
    return None


def _regions() -> dict[str, Region]:
    """Regions by slug, then by name, then by name in lower case (the first match wins)."""
    regions = list(Region.objects.all())
    index = {region.slug: region for region in regions}
    for region in regions:
        index.setdefault(region.name, region)
    for region in regions:
        index.setdefault(region.name.lower(), region)
    return index


def _parse_row(line: int, values: dict[str, str], regions: dict[str, Region]):
    """The row's values, or the list of what is wrong with them."""
    errors = []
    name = values.get("name", "").strip()
    if not name:
        errors.append(_("name is required"))
    elif len(name) > MAX_NAME_LENGTH:
        errors.append(
            _("name %(name)s… is longer than %(max)d characters")
            % {"name": name[:20], "max": MAX_NAME_LENGTH}
        )
    elif any(not character.isprintable() for character in name):
        errors.append(_("name %(name)s holds unprintable characters") % {"name": repr(name)})
        name = ""  # never looked up: PostgreSQL refuses NUL in a query
    address = values.get("address", "").strip() or None
    if address is not None:
        normalized = address_normalize(address)
        if normalized is None:
            errors.append(
                _("address %(address)s is not a host name or IP address")
                % {"address": address[:100]}
            )
        address = normalized
    region = None
    region_text = values.get("region", "").strip()
    if region_text:
        region = regions.get(region_text) or regions.get(region_text.lower())
        if region is None:
            errors.append(_("region %(region)s does not exist") % {"region": region_text[:100]})
    labels = {}
    try:
        # Both separators are accepted; ";" spares the quotes a "," needs inside a CSV cell.
        labels = labels_parse(values.get("labels", "").replace(";", ","))
    except ValidationError as error:
        errors.append(_("labels: %(error)s") % {"error": error.fields["labels"][0]})
    return _Row(line, name, address, region, labels), errors


def _existing(rows: list[_Row]) -> tuple[set[str], dict[str, str]]:
    """Names already taken, and addresses already used (with the host using each)."""
    names = set(
        Host.objects.filter(name__in={row.name for row in rows}).values_list("name", flat=True)
    )
    addresses = dict(
        Host.objects.annotate(address_lower=Lower("address"))
        .filter(address_lower__in={row.address for row in rows if row.address})
        .values_list("address_lower", "name")
    )
    return names, addresses


def _validate(header: list[str], records: list[tuple[int, list[str]]]) -> list[_Row]:
    regions = _regions()
    rows, errors = [], []
    for line, record in records:
        if len(record) > len(header):
            errors.append(
                (
                    line,
                    _("%(values)d values for %(columns)d columns")
                    % {"values": len(record), "columns": len(header)},
                )
            )
            continue
        row, row_errors = _parse_row(line, dict(zip(header, record, strict=False)), regions)
        rows.append(row)
        errors.extend((line, error) for error in row_errors)
    taken_names, used_addresses = _existing(rows)
    first_line_of_name, first_line_of_address = {}, {}
    for row in rows:
        if row.name:
            if row.name in first_line_of_name:
                errors.append(
                    (
                        row.line,
                        _("name %(name)s is also on line %(other)d")
                        % {"name": row.name, "other": first_line_of_name[row.name]},
                    )
                )
            else:
                first_line_of_name[row.name] = row.line
            if row.name in taken_names:
                errors.append(
                    (row.line, _("a host named %(name)s already exists") % {"name": row.name})
                )
        if row.address:
            if row.address in first_line_of_address:
                errors.append(
                    (
                        row.line,
                        _("address %(address)s is also on line %(other)d")
                        % {"address": row.address, "other": first_line_of_address[row.address]},
                    )
                )
            else:
                first_line_of_address[row.address] = row.line
            if row.address in used_addresses:
                errors.append(
                    (
                        row.line,
                        _("address %(address)s is already used by host %(host)s")
                        % {"address": row.address, "host": used_addresses[row.address]},
                    )
                )
    if errors:
        raise _row_errors(errors)
    return rows


def _row_errors(errors: list[tuple[int, str]]) -> ValidationError:
    errors.sort(key=lambda error: error[0])  # stable: a line's errors keep their order
    lines = {line for line, _error in errors}
    listed = [
        _("line %(line)d: %(error)s") % {"line": line, "error": error}
        for line, error in errors[:MAX_LISTED_ERRORS]
    ]
    if len(errors) > MAX_LISTED_ERRORS:
        listed.append(
            _("… and %(count)d more errors.") % {"count": len(errors) - MAX_LISTED_ERRORS}
        )
    message = ngettext(
        "%(count)d line has errors; nothing was imported.",
        "%(count)d lines have errors; nothing was imported.",
        len(lines),
    ) % {"count": len(lines)}
    return ValidationError(message, fields={"file": listed})


@transaction.atomic
def hosts_import_csv(operator: User, file_text: bytes | str) -> ImportResult:
    """Create a pending host for each row of a ``name,address,region,labels`` CSV file, each
    with its own single-use join token bound to it (``host_join`` attaches the agent that uses
    it to the host). All or nothing: any invalid row, and every error is reported by line."""
    user_require_operator(operator)
    header, records = _records(_text(file_text))
    rows = _validate(header, records)
    try:
        with transaction.atomic():
            hosts = Host.objects.bulk_create(
                Host(
                    name=row.name,
                    address=row.address,
                    region=row.region,
                    labels=row.labels,
                    status=HostStatus.PENDING,
                )
                for row in rows
            )
    except IntegrityError as exc:
        raise _file_error(
            _(
                "A host with one of these names or addresses was added meanwhile; "
                "upload the file again."
            )
        ) from exc
    expires_at = timezone.now() + IMPORT_TOKEN_LIFETIME
    imported = [
        ImportedHost(
            host=host,
            token=join_token_create(
                operator=operator,
                name=imported_host_token_name(host.name),
                region=host.region,
                labels=host.labels,
                expires_at=expires_at,
                max_uses=1,
            ).plaintext,
        )
        for host in hosts
    ]
    audit_record(
        AuditAction.HOST_IMPORTED,
        actor=operator,
        details={"count": len(imported), "hosts": [host.name for host in hosts[:100]]},
    )
    return ImportResult(hosts=imported)
