import pytest
from django.template import Context, Template
from django.utils import translation

from remotegpu.core.templatetags.units import binary_size

GIB = 1024**3


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KiB"),
        (80 * GIB, "80.0 GiB"),
        (int(10.7 * GIB), "10.7 GiB"),
        (2 * 1024 * GIB, "2.0 TiB"),
        (None, "—"),
        ("n/a", "—"),
    ],
)
def test_binary_size(value, text):
    assert binary_size(value) == text


def test_binary_size_in_a_template():
    with translation.override("en"):
        rendered = Template("{% load units %}{{ size|binary_size }}").render(
            Context({"size": 141 * GIB})
        )
    assert rendered == "141.0 GiB"
