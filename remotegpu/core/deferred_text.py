"""Text written now and read later by people of other languages (a ledger an organisation
shares): kept as a message id and its arguments, translated when it is read.

Write it with ``gettext_noop`` (so ``makemessages`` finds the id) and keep the arguments
beside it; read it with ``deferred_text``.
"""

from django.utils.translation import gettext


def deferred_text(message: str, args: dict | None = None) -> str:
    """``message`` in the reader's language with ``args`` filled in. Plain text (an operator's
    reason) and text kept before its arguments were are shown as written."""
    if not message:
        return ""
    translated = gettext(message)
    if not args:
        return translated
    for text in (translated, message):
        try:
            return text % args
        except (KeyError, TypeError, ValueError):  # a translation that lost a placeholder
            continue
    return message
