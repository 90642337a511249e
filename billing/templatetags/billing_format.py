"""How billing pages write money and billed time."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template
from django.utils.translation import gettext as _

from ..services.wallets import CENT

register = template.Library()


@register.filter
def money(value, currency=""):
    """``12.3|money:"USD"`` → ``12.30 USD``: two decimals, halves away from zero, thousands
    grouped; "—" for no amount."""
    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        return "—"
    if amount == 0:
        amount = abs(amount)  # never "-0.00"
    return f"{amount:,.2f} {currency}".strip()


@register.filter
def duration(seconds):
    """Billed seconds as hours, minutes and seconds: ``3725`` → ``1 h 2 min 5 s``."""
    if seconds is None or seconds == "":
        return "—"
    hours, rest = divmod(int(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(_("%(count)d h") % {"count": hours})
    if minutes:
        parts.append(_("%(count)d min") % {"count": minutes})
    if seconds or not parts:
        parts.append(_("%(count)d s") % {"count": seconds})
    return " ".join(parts)
