"""Messages of Django and its apps that their own zh-hans catalogues leave in English.

Our catalogue (``LOCALE_PATHS``) is searched before theirs, so a translation of the very same
message id here is the one shown. ``makemessages`` finds the ids in this module; nothing calls
it. Keep each id exactly as the upstream source spells it.
"""

from django.utils.translation import ngettext


def _messages() -> None:  # pragma: no cover - read by makemessages, never run
    # django.contrib.auth.password_validation.MinimumLengthValidator.get_error_message (Django 5.2
    # turned %(min_length)d into %d; the zh-hans catalogue still has the old id)
    ngettext(
        "This password is too short. It must contain at least %d character.",
        "This password is too short. It must contain at least %d characters.",
        0,
    )
