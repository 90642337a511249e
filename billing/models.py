"""Money: prices, one wallet per organisation, an append-only ledger, and what is metered.

The billing app bills things it does not import (ARCHITECTURE.md §6): an environment or an
allocation is a *meter* named by a reference (``environment:12:gpu``), with the quantities
its price needs, and *run intervals* that the app owning it opens and closes. A *source* (a
host) says up to when the resources on it were seen running; the tick never bills past it.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from remotegpu.core.deferred_text import deferred_text
from remotegpu.core.models import AppendOnlyModel, TimeStampedModel

from .choices import EntryKind, MeterKind, PaymentStatus, PriceResource, TopUpStatus

# Money is fixed-scale Decimal: six places (a millionth of the currency's unit) keeps a
# second of the cheapest resource exact enough; pages show two.
MONEY = {"max_digits": 20, "decimal_places": 6}
# A price per unit is at most ten million an hour (ample in any currency); a resource's rate
# (prices times quantities: GPUs, vCPUs, GiB) has money's width, so no spec can overflow it.
MAX_PRICE = Decimal("10000000")
PRICE = {"max_digits": 14, "decimal_places": 6}
RATE = MONEY


class Price(TimeStampedModel):
    """An amount per unit for one resource, in one region (or every region) and, for GPUs
    and whole machines, one GPU model (or every model). The most specific price wins."""

    resource = models.CharField(_("resource"), max_length=24, choices=PriceResource.choices)
    region = models.SlugField(
        _("region"), max_length=60, blank=True, help_text=_("A region's slug; empty: every region.")
    )
    gpu_model = models.CharField(
        _("GPU model"),
        max_length=100,
        blank=True,
        help_text=_("For GPU and whole-machine prices; empty: every model."),
    )
    amount = models.DecimalField(
        _("amount"),
        **PRICE,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_PRICE)],
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = _("price")
        verbose_name_plural = _("prices")
        ordering = ["resource", "region", "gpu_model"]
        constraints = [
            models.UniqueConstraint(
                fields=["resource", "region", "gpu_model"], name="unique_price"
            ),
        ]

    def __str__(self):
        where = " / ".join(part for part in (self.region, self.gpu_model) if part)
        return f"{self.get_resource_display()} {where}: {self.amount}".replace("  ", " ")


class Wallet(TimeStampedModel):
    """An organisation's prepaid balance. ``balance`` is the sum of its ledger entries, kept
    up to date in the transaction that adds each entry; the row is the lock every debit
    and credit takes."""

    organization = models.OneToOneField(
        Organization,
        verbose_name=_("organisation"),
        on_delete=models.PROTECT,
        related_name="wallet",
    )
    currency = models.CharField(_("currency"), max_length=3)
    balance = models.DecimalField(_("balance"), **MONEY, default=Decimal(0))
    low_balance_threshold = models.DecimalField(
        _("low-balance threshold"),
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text=_("Empty: one hour at the current burn rate."),
    )
    spend_limit_per_hour = models.DecimalField(
        _("spend limit per hour"),
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text=_("Starting more than this burn rate per hour is refused; empty: no limit."),
    )
    low_balance_notified_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the balance was first seen at or below zero; cleared by a credit.
    depleted_at = models.DateTimeField(null=True, blank=True, editable=False)
    out_of_balance_stop_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("wallet")
        verbose_name_plural = _("wallets")
        ordering = ["organization__name"]

    def __str__(self):
        return f"{self.organization} ({self.currency})"


class Meter(models.Model):
    """One billable thing, named by the app that owns it, with what its price depends on.
    ``rate`` is its price per hour now, kept in step with the price list."""

    reference = models.CharField(_("reference"), max_length=100, unique=True)
    organization = models.ForeignKey(
        Organization, verbose_name=_("organisation"), on_delete=models.PROTECT, related_name="+"
    )
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="meters")
    kind = models.CharField(_("kind"), max_length=10, choices=MeterKind.choices)
    # A message id and its arguments (``deferred_text``): read in each reader's language.
    label = models.CharField(_("name"), max_length=200)
    label_args = models.JSONField(default=dict, blank=True, editable=False)
    region = models.SlugField(_("region"), max_length=60, blank=True)
    gpu_model = models.CharField(_("GPU model"), max_length=100, blank=True)
    gpu_count = models.PositiveSmallIntegerField(_("GPUs"), default=0)
    vcpu = models.PositiveIntegerField(_("vCPUs"), default=0)
    memory_gib = models.PositiveIntegerField(_("memory (GiB)"), default=0)
    storage_gib = models.PositiveIntegerField(_("storage (GiB)"), default=0)
    rate = models.DecimalField(_("price per hour"), **RATE, default=Decimal(0))
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("meter")
        verbose_name_plural = _("meters")
        ordering = ["-created_at"]

    def __str__(self):
        return self.reference

    @property
    def label_text(self) -> str:
        return deferred_text(self.label, self.label_args)


class Source(models.Model):
    """Where metered things run (a host), and up to when they were last seen running."""

    key = models.CharField(_("key"), max_length=100, unique=True)
    seen_until = models.DateTimeField(_("seen until"), null=True, blank=True)

    class Meta:
        verbose_name = _("source")
        verbose_name_plural = _("sources")

    def __str__(self):
        return self.key


class RunInterval(models.Model):
    """A stretch of time a meter ran; ``billed_until`` is how far the ticks have charged it.
    Whole seconds: starts are rounded up and ends down, so billed time never exceeds it."""

    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="intervals")
    source = models.ForeignKey(
        Source, on_delete=models.PROTECT, null=True, blank=True, related_name="intervals"
    )
    started_at = models.DateTimeField(_("started"))
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    billed_until = models.DateTimeField(_("billed until"))
    # The price per hour its seconds are charged at: the meter's when it opened, moved by a
    # price change while it is open. A meter opened again at another price (another spec or
    # region) leaves its last run's unbilled seconds at the old one.
    rate = models.DecimalField(_("price per hour"), **RATE, default=Decimal(0))

    class Meta:
        verbose_name = _("run interval")
        verbose_name_plural = _("run intervals")
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["meter"], condition=Q(ended_at__isnull=True), name="one_open_interval"
            ),
            models.CheckConstraint(
                condition=Q(billed_until__gte=models.F("started_at")),
                name="billed_from_start",
            ),
        ]

    def __str__(self):
        return f"{self.meter_id} {self.started_at:%Y-%m-%d %H:%M:%S}"


class LedgerEntry(AppendOnlyModel):
    """A movement of money, never changed or removed: a correction is a new entry. The
    idempotency key makes a retried charge, approval or webhook count once."""

    # Indexes cost every tick (100,000 inserts a minute at scale): the wallet is covered by
    # (wallet, -created_at), the key by its unique constraint, and actors are rarely looked up.
    wallet = models.ForeignKey(
        Wallet,
        verbose_name=_("wallet"),
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
    )
    kind = models.CharField(_("kind"), max_length=12, choices=EntryKind.choices)
    amount = models.DecimalField(_("amount"), **MONEY)
    currency = models.CharField(_("currency"), max_length=3)
    idempotency_key = models.CharField(_("idempotency key"), max_length=200)
    # A message id and its arguments (``deferred_text``), or an operator's words as written.
    description = models.CharField(_("description"), max_length=300, blank=True)
    description_args = models.JSONField(default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    # Usage: what ran, when, for how long, at which price per hour.
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, null=True, blank=True, related_name="entries"
    )
    interval = models.ForeignKey(
        RunInterval, on_delete=models.PROTECT, null=True, blank=True, related_name="entries"
    )
    period_start = models.DateTimeField(_("from"), null=True, blank=True)
    period_end = models.DateTimeField(_("to"), null=True, blank=True)
    seconds = models.PositiveIntegerField(_("seconds"), null=True, blank=True)
    rate = models.DecimalField(_("price per hour"), **RATE, null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="unique_idempotency_key"),
        ]
        indexes = [models.Index(fields=["wallet", "-created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} {self.amount} {self.currency}"

    @property
    def description_text(self) -> str:
        return deferred_text(self.description, self.description_args)


class TopUpRequest(TimeStampedModel):
    """A customer says they paid by bank transfer; an operator approves (crediting the
    wallet once) or rejects."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="top_ups")
    amount = models.DecimalField(_("amount"), **MONEY)
    currency = models.CharField(_("currency"), max_length=3)
    reference = models.CharField(
        _("transfer reference"),
        max_length=200,
        help_text=_("What the bank statement shows, so the operator can match it."),
    )
    status = models.CharField(
        _("status"), max_length=10, choices=TopUpStatus.choices, default=TopUpStatus.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    note = models.CharField(_("note"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("bank top-up")
        verbose_name_plural = _("bank top-ups")
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.wallet.organization} {self.amount} {self.currency}"


class Voucher(TimeStampedModel):
    """A code worth an amount of promotional credit, redeemable a number of times."""

    code = models.CharField(_("code"), max_length=40, unique=True)
    amount = models.DecimalField(_("amount"), **MONEY)
    currency = models.CharField(_("currency"), max_length=3)
    max_redemptions = models.PositiveIntegerField(
        _("redemptions in all"), default=1, validators=[MinValueValidator(1)]
    )
    per_organization_limit = models.PositiveIntegerField(
        _("redemptions per organisation"), default=1, validators=[MinValueValidator(1)]
    )
    redemptions = models.PositiveIntegerField(_("redeemed"), default=0, editable=False)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = _("voucher")
        verbose_name_plural = _("vouchers")
        ordering = ["-created_at"]

    def __str__(self):
        return self.code


class VoucherRedemption(models.Model):
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="uses")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="+")
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    redeemed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(_("redeemed"), default=timezone.now)

    class Meta:
        verbose_name = _("voucher redemption")
        verbose_name_plural = _("voucher redemptions")
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.voucher} → {self.wallet}"


class Payment(TimeStampedModel):
    """A card (or other) payment through a payment provider; credited once, when the
    provider's signed notification says it succeeded."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="payments")
    provider = models.CharField(_("provider"), max_length=30)
    provider_reference = models.CharField(_("provider reference"), max_length=200)
    amount = models.DecimalField(_("amount"), **MONEY)
    currency = models.CharField(_("currency"), max_length=3)
    status = models.CharField(
        _("status"), max_length=10, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )

    class Meta:
        verbose_name = _("payment")
        verbose_name_plural = _("payments")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_reference"], name="unique_provider_payment"
            ),
        ]

    def __str__(self):
        return f"{self.provider} {self.provider_reference}"


class ReconciliationRun(models.Model):
    """What the nightly reconciliation found; an operator alert when ``differences``."""

    started_at = models.DateTimeField(_("started"), default=timezone.now, db_index=True)
    wallets_checked = models.PositiveIntegerField(_("wallets checked"), default=0)
    intervals_checked = models.PositiveIntegerField(_("intervals checked"), default=0)
    differences = models.JSONField(_("differences"), default=list, blank=True)

    class Meta:
        verbose_name = _("reconciliation run")
        verbose_name_plural = _("reconciliation runs")
        ordering = ["-started_at"]

    def __str__(self):
        return f"{self.started_at:%Y-%m-%d %H:%M}"

    @property
    def is_clean(self) -> bool:
        return not self.differences
