"""Specs: what operators offer (GPU model and count, vCPUs, memory, disk, regions)."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator
from machines.services.hosts import labels_validate
from remotegpu.core.errors import ValidationError

from ..models import Spec


@transaction.atomic
def spec_save(*, operator: User, spec: Spec) -> Spec:
    """Create or update a spec; a spec with GPUs names their model, a CPU-only one none."""
    user_require_operator(operator)
    if spec.gpu_count and not spec.gpu_model:
        raise ValidationError.for_field("gpu_model", _("Name the GPU model of a spec with GPUs."))
    if not spec.gpu_count and spec.gpu_model:
        raise ValidationError.for_field("gpu_model", _("A CPU-only spec names no GPU model."))
    spec.host_labels = labels_validate(spec.host_labels)
    created = spec.pk is None
    spec.save()
    audit_record(
        AuditAction.SPEC_CREATED if created else AuditAction.SPEC_UPDATED,
        actor=operator,
        target=spec,
        details={"gpu_model": spec.gpu_model, "gpu_count": spec.gpu_count},
    )
    return spec
