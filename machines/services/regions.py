"""Regions: where hosts are. Operators create and edit them; every change is audited."""

from __future__ import annotations

from django.db import transaction

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator

from ..models import Region

EDITABLE_FIELDS = ("name", "slug", "location", "description")


@transaction.atomic
def region_save(*, operator: User, region: Region) -> Region:
    """Create or update ``region`` (already validated by its form or serializer)."""
    user_require_operator(operator)
    created = region.pk is None
    before = {}
    if not created:
        stored = Region.objects.get(pk=region.pk)
        before = {field: getattr(stored, field) for field in EDITABLE_FIELDS}
    region.save()
    after = {field: getattr(region, field) for field in EDITABLE_FIELDS}
    changes = {
        field: [before.get(field), value]
        for field, value in after.items()
        if before.get(field) != value
    }
    audit_record(
        AuditAction.REGION_CREATED if created else AuditAction.REGION_UPDATED,
        actor=operator,
        target=region,
        details={"changes": changes},
    )
    return region
