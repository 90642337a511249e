from __future__ import annotations

from typing import Any

from django.db import models

from remotegpu.core import request_context

from ..models import AuditEvent, Organization, User


def audit_record(
    action: str,
    *,
    actor: User | None = None,
    organization: Organization | None = None,
    target: models.Model | None = None,
    details: dict[str, Any] | None = None,
    actor_email: str = "",
) -> AuditEvent:
    """Append one event; IP and user agent come from the current request, when there is one."""
    context = request_context.get()
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    return AuditEvent.objects.create(
        actor=actor,
        actor_email=actor.email if actor else actor_email[:254],
        organization=organization,
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        ip=context.ip,
        user_agent=context.user_agent,
        details=details or {},
    )
