"""Units in pages: sizes in binary units, as the charts and the API's documentation use them.

Django's ``filesizeformat`` divides by 1024 but writes "GB"; an 80 GiB GPU must not read
"80.0 GB" in one place and "80 GiB" in another.
"""

from django import template
from django.utils.formats import number_format

register = template.Library()

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


@register.filter
def binary_size(value) -> str:
    """``85899345920`` → ``80.0 GiB``; ``512`` → ``512 B``; anything not a number → ``—``."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "—"
    unit = 0
    while abs(size) >= 1024 and unit < len(UNITS) - 1:
        size /= 1024
        unit += 1
    if unit == 0:
        return f"{int(size)} B"
    return f"{number_format(round(size, 1), 1)} {UNITS[unit]}"
