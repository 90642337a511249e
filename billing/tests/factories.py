import uuid
from datetime import timedelta
from decimal import Decimal

import factory
from django.conf import settings

from accounts.tests.factories import OrganizationFactory
from billing.choices import EntryKind, MeterKind, PriceResource
from billing.models import Meter, Price, TopUpRequest, Voucher, Wallet
from billing.services.wallets import wallet_get, wallet_post


class PriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Price
        django_get_or_create = ("resource", "region", "gpu_model")

    resource = PriceResource.GPU_HOUR
    region = ""
    gpu_model = ""
    amount = Decimal("1.000000")


class WalletFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Wallet
        django_get_or_create = ("organization",)

    organization = factory.SubFactory(OrganizationFactory)
    currency = factory.LazyFunction(lambda: settings.BILLING_CURRENCY)


class VoucherFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Voucher

    code = factory.Sequence(lambda n: f"WELCOME{n:04d}")
    amount = Decimal("10.00")
    currency = factory.LazyFunction(lambda: settings.BILLING_CURRENCY)


class TopUpRequestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TopUpRequest

    wallet = factory.SubFactory(WalletFactory)
    amount = Decimal("50.00")
    currency = factory.LazyFunction(lambda: settings.BILLING_CURRENCY)
    reference = factory.Sequence(lambda n: f"TRANSFER-{n:04d}")


class MeterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Meter

    reference = factory.Sequence(lambda n: f"test:{n}:run")
    organization = factory.SubFactory(OrganizationFactory)
    wallet = factory.LazyAttribute(lambda meter: WalletFactory(organization=meter.organization))
    kind = MeterKind.COMPUTE
    label = factory.Sequence(lambda n: f"train-{n}")
    gpu_model = "NVIDIA H100 80GB HBM3"
    gpu_count = 1
    rate = Decimal("2.000000")


def ledger_entry_post(organization, amount, *, kind=EntryKind.RECHARGE, **fields):
    """One ledger entry through the wallet service, so the balance follows it."""
    return wallet_post(
        wallet_get(organization),
        kind=kind,
        amount=Decimal(amount),
        key=f"test:{uuid.uuid4()}",
        **fields,
    )


def usage_entry(organization, amount, *, at, seconds=60, reference="", label="train", **meter):
    """A usage charge of ``amount`` for ``seconds`` ending at ``at``, on a meter (made on first
    use) named ``reference``."""
    reference = reference or f"environment:{organization.pk}:run"
    meter_object, _created = Meter.objects.get_or_create(
        reference=reference,
        defaults={
            "organization": organization,
            "wallet": wallet_get(organization),
            "kind": MeterKind.COMPUTE,
            "label": label,
            **meter,
        },
    )
    rate = Decimal(amount) * 3600 / seconds
    return ledger_entry_post(
        organization,
        -Decimal(amount),
        kind=EntryKind.USAGE,
        created_at=at,
        description=label,
        meter=meter_object,
        period_start=at - timedelta(seconds=seconds),
        period_end=at,
        seconds=seconds,
        rate=rate.quantize(Decimal("0.000001")),
    )
