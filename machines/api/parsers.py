from rest_framework.parsers import BaseParser

from ..services.imports import MAX_BYTES


class CSVParser(BaseParser):
    """A ``text/csv`` body, as bytes: the import service decodes it and says what is wrong.

    At most one byte more than the service accepts is read, so that it can refuse an oversized
    file without the whole of it in memory."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read(MAX_BYTES + 1)
