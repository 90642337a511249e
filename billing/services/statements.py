"""A month's statement as files: CSV for spreadsheets and accounting, PDF to keep or forward.

Both are made from the ``Statement`` the selector reads; neither adds a figure of its own, so
the CSV's entries add up to its totals and the totals to the change in balance. Times are UTC.

The CSV has every entry. A running meter is charged every minute (43,200 entries a month), so
the PDF shows its usage as one line per meter and UTC day, and every other entry as it is; a
month stays a few pages, and takes well under a second to make. The PDF prints with
reportlab's built-in CID font ``STSong-Light``: readers carry it, so Chinese names print
without a font file shipped or embedded.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from xml.sax.saxutils import escape

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils import translation
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from ..choices import EntryKind
from ..models import LedgerEntry, Meter
from ..selectors import Statement

FONT = "STSong-Light"
CENT = Decimal("0.01")
# Spreadsheets run a cell that starts with one of these as a formula; names typed by customers
# (environment names, transfer references) are kept as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Rows per table of entries: platypus splits a long table page by page, and splitting one
# table of a month of entries costs far more than laying out many short ones.
ENTRY_ROWS_PER_TABLE = 200


def _text(value) -> str:
    text = str(value or "")
    return "'" + text if text.startswith(FORMULA_START) else text


def _kind(kind: str) -> str:
    return str(EntryKind(kind).label) if kind in EntryKind.values else kind


def _time(moment) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else ""


def _short_time(moment) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if moment else ""


def _money(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):,}"


@dataclass(frozen=True)
class _Line:
    """A line of the PDF's entries: one entry, or a meter's usage over one UTC day."""

    created_at: datetime
    kind: str
    description_text: str
    meter: Meter | None
    period_start: datetime | None
    period_end: datetime | None
    seconds: int | None
    rate: Decimal | None
    amount: Decimal

    @classmethod
    def of(cls, entry: LedgerEntry) -> _Line:
        return cls(
            entry.created_at,
            entry.kind,
            entry.description_text,
            entry.meter,
            entry.period_start,
            entry.period_end,
            entry.seconds,
            entry.rate,
            entry.amount,
        )

    def add(self, entry: LedgerEntry) -> _Line:
        return replace(
            self,
            created_at=max(self.created_at, entry.created_at),
            period_start=min(self.period_start, entry.period_start),
            period_end=max(self.period_end, entry.period_end),
            seconds=(self.seconds or 0) + (entry.seconds or 0),
            rate=self.rate if self.rate == entry.rate else None,  # re-priced that day
            amount=self.amount + entry.amount,
        )


def _daily_lines(entries: Iterable[LedgerEntry]) -> list[_Line]:
    """Usage summed per meter and UTC day (by the start of what it charges); other entries as
    they are; in the order of each line's first entry."""
    lines: list[_Line] = []
    usage: dict[tuple[int, date], int] = {}
    for entry in entries:
        if entry.kind != EntryKind.USAGE or entry.meter_id is None or entry.period_start is None:
            lines.append(_Line.of(entry))
            continue
        key = (entry.meter_id, entry.period_start.astimezone(UTC).date())
        if key in usage:
            lines[usage[key]] = lines[usage[key]].add(entry)
        else:
            usage[key] = len(lines)
            lines.append(_Line.of(entry))
    return lines


def _entry_row(entry: LedgerEntry | _Line, time=_time) -> list:
    meter = entry.meter
    return [
        time(entry.created_at),
        _kind(entry.kind),
        entry.description_text,
        meter.label_text if meter else "",
        meter.reference if meter else "",
        time(entry.period_start),
        time(entry.period_end),
        "" if entry.seconds is None else entry.seconds,
        "" if entry.rate is None else entry.rate,
        entry.amount,
    ]


def _entry_header() -> list[str]:
    return [
        _("Time (UTC)"),
        _("Kind"),
        _("Description"),
        _("Resource"),
        _("Meter"),
        _("From (UTC)"),
        _("To (UTC)"),
        _("Seconds"),
        _("Price per hour"),
        _("Amount"),
    ]


# Entries read from the database at a time, and CSV rows written out at a time: a month of a
# busy organisation is hundreds of thousands of entries, streamed rather than held.
ENTRY_CHUNK = 2000


def statement_entries(statement: Statement) -> Iterator[LedgerEntry]:
    """The month's entries in time order, read in chunks (never all in memory)."""
    return statement.entries.select_related("meter").iterator(chunk_size=ENTRY_CHUNK)


def statement_csv_chunks(statement: Statement) -> Iterator[str]:
    """The statement as CSV, in pieces of a thousand rows or so: a few heading rows
    (organisation, period, currency, balances), one row per ledger entry, then the totals by
    kind. Amounts are exact (six places)."""
    out = io.StringIO()
    writer = csv.writer(out)

    def taken() -> str:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text

    writer.writerow([_("Organisation"), _text(statement.organization.name)])
    writer.writerow([_("Period"), statement.period])
    writer.writerow([_("Currency"), statement.currency])
    writer.writerow([_("Opening balance"), statement.opening_balance])
    writer.writerow([_("Closing balance"), statement.closing_balance])
    writer.writerow([])
    writer.writerow(_entry_header())
    for count, entry in enumerate(statement_entries(statement), start=1):
        row = _entry_row(entry)
        row[2:5] = [_text(cell) for cell in row[2:5]]
        writer.writerow(row)
        if count % (ENTRY_CHUNK // 2) == 0:
            yield taken()
    writer.writerow([])
    writer.writerow([_("Totals by kind")])
    for kind, total in statement.totals.items():
        writer.writerow([_kind(kind), total])
    yield taken()


def statement_csv(statement: Statement) -> str:
    return "".join(statement_csv_chunks(statement))


def _in_language(chunks: Iterator[str], language: str) -> Iterator[str]:
    """``chunks`` made in ``language`` (the request's) whenever the server reads them: a
    streamed response is read after the view has returned."""
    while True:
        with translation.override(language):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


def statement_response(statement: Statement, extension: str) -> HttpResponseBase:
    """The statement as a download (``csv``, streamed, with a BOM so that Excel reads UTF-8;
    or ``pdf``), for the billing page and the API alike."""
    if extension == "csv":
        chunks = _in_language(statement_csv_chunks(statement), translation.get_language())
        response = StreamingHttpResponse(
            itertools.chain(["\ufeff"], chunks), content_type="text/csv; charset=utf-8"
        )
    else:
        response = HttpResponse(statement_pdf(statement), content_type="application/pdf")
    filename = f"statement-{statement.organization.slug}-{statement.period}.{extension}"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response


def _register_font() -> None:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))


def statement_pdf(statement: Statement) -> bytes:
    """The statement as a landscape A4 PDF: title, organisation, period, balances, totals by kind,
    usage by resource, then the entries, usage per meter and day (tables repeat their heading
    on each page)."""
    _register_font()
    title_style = ParagraphStyle("title", fontName=FONT, fontSize=16, leading=20, spaceAfter=6)
    heading_style = ParagraphStyle("heading", fontName=FONT, fontSize=11, leading=14)
    cell_style = ParagraphStyle("cell", fontName=FONT, fontSize=7, leading=9)

    def paragraph(text, style=cell_style):
        return Paragraph(escape(str(text)), style)

    def table(rows, widths, *, numeric_from=1, heading=True):
        """A table in the statement's font; numbers (columns from ``numeric_from``) right."""
        style = [
            ("FONT", (0, 0), (-1, -1), FONT, 8),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
        if numeric_from is not None:
            style.append(("ALIGN", (numeric_from, int(heading)), (-1, -1), "RIGHT"))
        if heading:
            style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")))
        result = Table(rows, colWidths=widths, repeatRows=int(heading), hAlign="LEFT")
        result.setStyle(TableStyle(style))
        return result

    currency = statement.currency
    story = [
        paragraph(_("Statement %(period)s") % {"period": statement.period}, title_style),
        table(
            [
                [_("Organisation"), paragraph(statement.organization.name)],
                [_("Period"), statement.period],
                [_("Currency"), currency],
                [_("Opening balance"), _money(statement.opening_balance)],
                [_("Closing balance"), _money(statement.closing_balance)],
            ],
            [40 * mm, 120 * mm],
            numeric_from=None,
            heading=False,
        ),
        Spacer(1, 6 * mm),
        paragraph(_("Totals by kind"), heading_style),
        table(
            [
                [_("Kind"), _("Amount")],
                *[[_kind(kind), _money(total)] for kind, total in statement.totals.items()],
            ],
            [60 * mm, 40 * mm],
        ),
        Spacer(1, 6 * mm),
        paragraph(_("Usage by resource"), heading_style),
        table(
            [
                [_("Name"), _("Resource"), _("Hours"), _("Amount")],
                *[
                    [
                        paragraph(row["name"]),
                        paragraph(row["resource"]),
                        f"{Decimal(row['seconds']) / 3600:.2f}",
                        _money(row["amount"]),
                    ]
                    for row in statement.usage
                ],
            ],
            [90 * mm, 70 * mm, 30 * mm, 30 * mm],
            numeric_from=2,
        ),
        Spacer(1, 6 * mm),
        paragraph(_("Entries (usage: per resource and UTC day)"), heading_style),
    ]
    header = [paragraph(label) for label in _entry_header()]
    widths = [m * mm for m in (28, 18, 50, 32, 34, 28, 28, 15, 19, 22)]
    lines = _daily_lines(statement_entries(statement))
    for start in range(0, max(len(lines), 1), ENTRY_ROWS_PER_TABLE):
        rows = [header]
        for line in lines[start : start + ENTRY_ROWS_PER_TABLE]:
            row = _entry_row(line, _short_time)
            row[2:5] = [paragraph(cell) for cell in row[2:5]]
            rows.append(row)
        story.append(table(rows, widths, numeric_from=7))

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=landscape(A4),
        leftMargin=10 * mm,
        rightMargin=10 * mm,
        topMargin=12 * mm,
        bottomMargin=12 * mm,
        title=_("Statement %(period)s") % {"period": statement.period},
        author=statement.organization.name,
    )
    document.build(story)
    return buffer.getvalue()
