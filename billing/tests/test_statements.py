import csv
import io
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.tests.factories import OrganizationFactory
from billing.choices import EntryKind
from billing.selectors import statement_get
from billing.services import statements
from billing.services.statements import _daily_lines, statement_csv, statement_pdf

from .factories import ledger_entry_post, usage_entry

MAY = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def lab(db):
    """An organisation with a Chinese name, a recharge in April and a month of May."""
    organization = OrganizationFactory(name="深度学习实验室", slug="deep-lab")
    ledger_entry_post(organization, "100.00", created_at=MAY - timedelta(days=3))
    ledger_entry_post(
        organization,
        "10.00",
        kind=EntryKind.PROMOTION,
        created_at=MAY + timedelta(days=2),
        description="Voucher WELCOME",
    )
    for hour in range(3):
        usage_entry(
            organization,
            "1.234567",
            at=MAY + timedelta(days=5, hours=hour),
            seconds=3600,
            label="训练-1",
            reference="environment:1:run",
        )
    usage_entry(
        organization,
        "0.5",
        at=MAY + timedelta(days=6),
        seconds=1800,
        label="=HYPERLINK(evil)",
        reference="environment:2:run",
    )
    ledger_entry_post(
        organization,
        "-2.00",
        kind=EntryKind.ADJUSTMENT,
        created_at=MAY + timedelta(days=20),
        description="Goodwill reversed",
    )
    # June is not May.
    ledger_entry_post(organization, "5.00", created_at=MAY + timedelta(days=31))
    return organization


def _parse(text: str) -> dict:
    rows = list(csv.reader(io.StringIO(text)))
    heading = {row[0]: row[1] for row in rows[:5]}
    header_at = 6
    end = rows.index([], header_at)
    entries = [dict(zip(rows[header_at], row, strict=True)) for row in rows[header_at + 1 : end]]
    totals = {row[0]: Decimal(row[1]) for row in rows[end + 2 :]}
    return {"heading": heading, "entries": entries, "totals": totals}


def test_csv_parses_and_adds_up(lab):
    statement = statement_get(lab, 2026, 5)
    parsed = _parse(statement_csv(statement))

    heading = parsed["heading"]
    assert heading["Organisation"] == "深度学习实验室"
    assert heading["Period"] == "2026-05"
    assert heading["Currency"] == "USD"
    opening, closing = Decimal(heading["Opening balance"]), Decimal(heading["Closing balance"])
    assert opening == Decimal(100)

    entries = parsed["entries"]
    assert len(entries) == 6  # promotion, four usage charges, adjustment; not April or June
    amounts = [Decimal(entry["Amount"]) for entry in entries]
    assert closing == opening + sum(amounts)
    assert closing == Decimal("100") + Decimal("10") - Decimal("3.703701") - Decimal("0.5") - 2
    by_kind: dict[str, Decimal] = {}
    for entry in entries:
        by_kind[entry["Kind"]] = by_kind.get(entry["Kind"], Decimal(0)) + Decimal(entry["Amount"])
    assert by_kind == parsed["totals"]
    assert parsed["totals"]["Usage"] == Decimal("-4.203701")

    usage = [entry for entry in entries if entry["Kind"] == "Usage"]
    first = usage[0]
    assert first["Time (UTC)"] == "2026-05-06T00:00:00+00:00"
    assert first["From (UTC)"] == "2026-05-05T23:00:00+00:00"
    assert first["Resource"] == "训练-1"
    assert first["Meter"] == "environment:1:run"
    assert first["Seconds"] == "3600"
    assert Decimal(first["Price per hour"]) == Decimal("1.234567")
    # A name a customer typed is never a spreadsheet formula.
    assert usage[-1]["Resource"] == "'=HYPERLINK(evil)"
    assert usage[-1]["Description"] == "'=HYPERLINK(evil)"


def test_csv_of_an_empty_month(lab):
    statement = statement_get(lab, 2026, 3)
    parsed = _parse(statement_csv(statement))
    assert parsed["entries"] == []
    assert parsed["totals"] == {}
    assert parsed["heading"]["Opening balance"] == parsed["heading"]["Closing balance"] == "0"


def test_pdf_renders_chinese_names_and_every_section(lab):
    statement = statement_get(lab, 2026, 5)
    assert [row["name"] for row in statement.usage] == ["=HYPERLINK(evil)", "训练-1"]
    pdf = statement_pdf(statement)
    assert pdf.startswith(b"%PDF")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert len(pdf) > 2000
    # Printed with the reader's built-in CJK font, not an embedded one.
    assert b"STSong-Light" in pdf
    assert b"FontFile" not in pdf


def test_pdf_of_an_empty_month_and_organisation(db):
    organization = OrganizationFactory(name="空的组织")
    pdf = statement_pdf(statement_get(organization, 2026, 1))
    assert pdf.startswith(b"%PDF")
    assert pdf.count(b"/Type /Page\n") == 1


def test_pdf_sums_usage_per_meter_and_day(db):
    """A running meter is charged every minute: the PDF shows a line per meter and UTC day,
    the CSV every entry, and both add up to the same."""
    organization = OrganizationFactory(name="Busy Lab")
    ledger_entry_post(organization, "500.00", created_at=MAY + timedelta(minutes=1))
    for hour in range(1, 3 * 24 + 1):
        for reference in ("environment:1:run", "environment:2:run"):
            usage_entry(
                organization,
                "0.25",
                at=MAY + timedelta(hours=hour),
                seconds=3600,
                reference=reference,
            )
    statement = statement_get(organization, 2026, 5)
    assert len(_parse(statement_csv(statement))["entries"]) == 1 + 144

    lines = _daily_lines(statement.entries)
    assert [line.kind for line in lines] == ["recharge"] + ["usage"] * 6
    usage = lines[1:]
    assert {line.seconds for line in usage} == {24 * 3600}
    assert {line.amount for line in usage} == {Decimal("-6.000000")}
    assert {line.rate for line in usage} == {Decimal("0.250000")}
    first = usage[0]
    assert (first.period_start, first.period_end) == (MAY, MAY + timedelta(days=1))
    assert sum(line.amount for line in lines) == statement.closing_balance

    started = time.monotonic()
    pdf = statement_pdf(statement)
    assert pdf.count(b"/Type /Page\n") == 1
    assert time.monotonic() - started < 5


def test_the_csv_streams_the_month_in_pieces(db, monkeypatch):
    """A month of a busy organisation is hundreds of thousands of entries: the CSV is written
    as it is read, a chunk of entries at a time, never the month held at once."""
    monkeypatch.setattr(statements, "ENTRY_CHUNK", 10)
    organization = OrganizationFactory(name="Streaming Lab")
    for minute in range(35):
        usage_entry(organization, "0.01", at=MAY + timedelta(minutes=minute), seconds=60)
    statement = statement_get(organization, 2026, 5)
    pieces = statements.statement_csv_chunks(statement)
    first = next(pieces)
    assert first.count("\n") == 7 + 5  # the heading rows, then the first half-chunk of entries
    rest = list(pieces)
    assert len(rest) == 7  # six more of five entries each, then the last five and the totals
    assert len(_parse(first + "".join(rest))["entries"]) == 35
