from django.db import models
from django.utils.translation import gettext_lazy as _


class PriceResource(models.TextChoices):
    """What a price is for; every amount is per hour except storage, per GiB-month."""

    GPU_HOUR = "gpu_hour", _("GPU-hour")
    VCPU_HOUR = "vcpu_hour", _("vCPU-hour")
    MEMORY_GIB_HOUR = "memory_gib_hour", _("GiB of memory per hour")
    CPU_ONLY_HOUR = "cpu_only_hour", _("Hour without GPU")
    STORAGE_GIB_MONTH = "storage_gib_month", _("GiB of kept volume per month")
    MACHINE_HOUR = "machine_hour", _("Whole machine per hour")


class MeterKind(models.TextChoices):
    COMPUTE = "compute", _("GPU environment")
    CPU_ONLY = "cpu_only", _("Environment without GPU")
    STORAGE = "storage", _("Kept volume")
    MACHINE = "machine", _("Whole machine")


class EntryKind(models.TextChoices):
    RECHARGE = "recharge", _("Recharge")
    USAGE = "usage", _("Usage")
    REFUND = "refund", _("Refund")
    ADJUSTMENT = "adjustment", _("Adjustment")
    PROMOTION = "promotion", _("Promotional credit")


class TopUpStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for approval")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")


class PaymentStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
