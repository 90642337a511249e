from __future__ import annotations

from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from remotegpu.core.errors import PermissionDenied

from ..choices import AuditAction
from ..models import User
from .audit import audit_record


def user_require_operator(user: User) -> None:
    """Operators are staff users; anyone else is refused with one clear message."""
    if not user.is_staff:
        raise PermissionDenied(_("Only operators can do this."))


def user_end_sessions(user: User) -> int:
    """Delete every live session of ``user``. Sessions are signed blobs, so each is decoded."""
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk):
            session.delete()
            ended += 1
    return ended


@transaction.atomic
def user_set_active(*, operator: User, user: User, active: bool) -> None:
    """Disable a user (no sign-in, sessions ended, tokens refused at once) or enable them again."""
    user_require_operator(operator)
    if operator.pk == user.pk and not active:
        raise PermissionDenied(_("You cannot disable yourself."))
    # Read the flag under a row lock: the caller's object may be stale.
    current = User.objects.select_for_update().values_list("is_active", flat=True).get(pk=user.pk)
    user.is_active = active
    if current == active:
        return
    user.save(update_fields=["is_active"])
    if not active:
        from ..tasks import user_end_sessions_task

        transaction.on_commit(lambda: user_end_sessions_task.delay(user.pk))
    audit_record(
        AuditAction.USER_ENABLED if active else AuditAction.USER_DISABLED,
        actor=operator,
        target=user,
    )


def user_set_language(user: User, language: str) -> bool:
    """Remember the language ``user`` chose; False (nothing stored) for one the site lacks."""
    if language not in dict(settings.LANGUAGES):
        return False
    if user.language != language:
        user.language = language
        user.save(update_fields=["language"])
    return True


def user_language(user: User) -> str:
    """The language to write to ``user`` in when no request says (e-mails, notifications)."""
    return user.language or settings.LANGUAGE_CODE


def users_by_language(users) -> dict[str, list[User]]:
    """``users`` grouped by the language to write to them in, for texts made once per language."""
    groups: dict[str, list[User]] = {}
    for user in users:
        groups.setdefault(user_language(user), []).append(user)
    return groups
