"""Schemathesis against the real schema of a running server: no input makes the API fail.

Every operation of ``/api/schema/`` is called with generated input (valid and invalid) as the
owner of an organisation with members, invitations, tokens, keys, notifications and audit
events; the fleet's operations (operators only) are called again as an operator, over a fleet
with hosts, GPUs, samples, commands and join tokens, and billing's operator side (prices,
credits, top-ups, vouchers, revenue) over wallets with usage. A 5xx is a bug to fix at its cause; a
response that does not match the schema is a bug in the schema or the serializer.

The command-line runner is used rather than ``schemathesis.pytest.from_fixture``: the lazy
fixture loader of schemathesis 4 does not work with pytest 9, and the runner also brings the
coverage phase (boundary values, missing fields) that hand-written strategies would not.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.utils import timezone

from accounts.choices import Role
from accounts.models import APIToken
from accounts.services.invitations import invitation_create
from accounts.services.notifications import notification_create
from accounts.services.organizations import organization_create
from accounts.services.ssh_keys import ssh_key_add
from accounts.services.tokens import IssuedToken, token_create
from accounts.tests.factories import MembershipFactory, OperatorFactory, UserFactory
from billing.services.metering import billing_tick, meter_open
from billing.services.prices import Quantities, price_set
from billing.services.recharge import top_up_request, voucher_create
from billing.services.wallets import wallet_credit
from environments.services.lifecycle import environment_create
from environments.tests.factories import ImageFactory, SpecFactory, host_with_gpus
from machines.choices import AlertStatus, CommandStatus, GPUHealth, HostStatus
from machines.models import AgentCommand, Alert, AlertRule, GPUSample, HostSample
from machines.services.commands import command_finish
from machines.tests.factories import (
    AgentCommandFactory,
    AllocationFactory,
    GPUFactory,
    HostFactory,
    RuntimeHostFactory,
    host_joined,
    join_token_issue,
)

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Every check but the two about generated data's acceptance: DRF is lenient by design (a number
# where a string is expected is coerced), and business rules (last owner, taken slug) answer 400
# to input the schema alone cannot rule out.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
        "use_after_free",
        "ensure_resource_availability",
    ]
)
MAX_EXAMPLES = 25
# Revoking the token the run signs in with would silently turn the rest of the run into 401s,
# so that one operation runs on its own, last.
TOKEN_REVOKE = "DELETE /api/v1/tokens/{id}/"
FLEET_PATHS = (
    r"^/api/v1/(regions|hosts|gpus|host-commands|join-tokens|fleet|agent|alerts|alert-rules"
    r"|images|specs|environments|registry-credentials|allocations"
    r"|billing/(prices|wallets|top-ups|vouchers|revenue))/"
)


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob.decode() + " owner@laptop"


@pytest.fixture(autouse=True)
def _join_unthrottled(monkeypatch):
    """The agent's join endpoint allows 120 attempts a minute per address; the fuzzer makes more
    and would test nothing but the 429 (which the schema documents)."""
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, "agent_join", "100000/minute")


@pytest.fixture
def owner_token(transactional_db) -> IssuedToken:
    """A read-write token of the owner of an organisation that has a bit of everything."""
    owner = UserFactory(email="owner@example.com")
    organization = organization_create(user=owner, name="Fuzzed Lab", slug="fuzzed-lab")
    MembershipFactory(organization=organization, role=Role.ADMIN)
    MembershipFactory(organization=organization, role=Role.MEMBER)
    invitation_create(actor=owner, organization=organization, email="invitee@example.com")
    ssh_key_add(user=owner, name="laptop", public_key=_public_key())
    notification_create(owner, "Welcome", organization=organization, url="/")
    token_create(user=owner, name="read only")
    # A host with free GPUs, a spec, an image and a running environment: creates can place.
    host_with_gpus(4)
    spec, image = SpecFactory(), ImageFactory()
    environment = environment_create(
        user=owner, organization=organization, name="fuzzed-env", spec=spec, image=image
    )
    command = AgentCommand.objects.get(payload__environment_id=environment.pk)
    command_finish(command.host_id, str(command.pk), ok=True, result={"time": 1.0}, error="")
    # A whole machine lent to the organisation, with its GPUs and how to connect.
    allocation = AllocationFactory(organization=organization)
    GPUFactory(host=allocation.host)
    _money(organization, owner)
    return token_create(user=owner, name="fuzzer", write_enabled=True)


def _money(organization, user) -> None:
    """A price list, a balance, charged usage and a bank top-up waiting for approval."""
    operator = OperatorFactory()
    price_set(operator=operator, resource="gpu_hour", amount="2.5")
    wallet_credit(
        operator=operator,
        organization=organization,
        amount="100",
        reason="opening",
        kind="recharge",
    )
    start = timezone.now() - timedelta(hours=2)
    meter_open(
        reference="environment:fuzzed:run",
        organization=organization,
        label="fuzzed-run",
        quantities=Quantities(kind="compute", gpu_count=1),
        at=start,
    )
    billing_tick(start + timedelta(hours=1))
    top_up_request(user=user, organization=organization, amount="50", reference="FUZZ-1")


def _schemathesis(url: str, token: str, *selection: str, cwd: Path, timeout: int) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        url,
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        # Kept-alive connections to Django's test server wait ~40 ms a response for the
        # delayed ACK; a fresh connection per request is ten times faster.
        "--header",
        "Connection: close",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20240601",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
        *selection,
    ]
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"schemathesis ran past {timeout} s:\n{output}", pytrace=False)
    # Exit status 1: a check failed; the output says which request and how to reproduce it.
    assert result.returncode == 0, result.stdout + result.stderr


# Generous limits: on the 2-core CI machine a run takes about half of them, and a busy machine
# must not fail a run that finds nothing wrong.
@pytest.mark.timeout(420)
def test_api_survives_generated_input(live_server, owner_token, tmp_path):
    assert SCHEMATHESIS.exists(), f"{SCHEMATHESIS} is missing: pip install -e '.[dev]'"
    url = f"{live_server.url}/api/schema/"
    _schemathesis(
        url, owner_token.plaintext, "--exclude-name", TOKEN_REVOKE, cwd=tmp_path, timeout=330
    )
    # The run really signed in and reached the operations: an unauthenticated run would
    # "pass" on nothing but 401s.
    assert APIToken.objects.get(pk=owner_token.token.pk).last_used_at is not None
    _schemathesis(
        url, owner_token.plaintext, "--include-name", TOKEN_REVOKE, cwd=tmp_path, timeout=60
    )


@pytest.fixture
def operator_token(transactional_db) -> IssuedToken:
    """A read-write token of an operator, over a fleet with a bit of everything."""
    operator = OperatorFactory(email="operator@example.com")
    joined = host_joined("fuzzed-host", operator=operator, labels={"gpu": "a100"})
    gpu = GPUFactory(host=joined.host)
    GPUFactory(host=joined.host, health=GPUHealth.LOST)
    for status in (HostStatus.MAINTENANCE, HostStatus.OFFLINE, HostStatus.RETIRED):
        GPUFactory(host=HostFactory(status=status))
    AgentCommandFactory(host=joined.host)
    AgentCommandFactory(host=joined.host, status=CommandStatus.SUCCEEDED, result={"pong": True})
    join_token_issue(operator, max_uses=5)
    now = timezone.now()
    HostSample.objects.create(
        host=joined.host,
        time=now,
        cpu_percent=10,
        memory_used=1,
        memory_total=2,
        disk_used=1,
        disk_total=2,
    )
    GPUSample.objects.create(
        gpu=gpu, time=now, utilization=50, memory_used=1, temperature=60, power_draw=100
    )
    # A GPU whose driver gives no temperature, power, utilisation or ECC: nulls in responses.
    blind = GPUFactory(host=joined.host, memory_used=1)
    GPUSample.objects.create(
        gpu=blind, time=now, utilization=None, memory_used=1, temperature=None, power_draw=None
    )
    # Whole-machine allocations: one active, one reclaimed with its report, and a free host
    # with a container runtime that a generated allocation may take.
    GPUFactory(host=AllocationFactory().host)
    AllocationFactory(
        status="reclaimed",
        reclaim_report={"removed": {"account": True}, "remaining": {}, "clean": True},
    )
    RuntimeHostFactory()
    # Billing's operator side: prices, a wallet with usage, a pending top-up, a voucher.
    customer = MembershipFactory(role=Role.OWNER)
    _money(customer.organization, customer.user)
    voucher_create(operator=operator, amount="10", code="FUZZ-VOUCHER")
    rule = AlertRule.objects.create(name="fuzzed rule", metric="gpu_temperature", threshold=50)
    for status in (AlertStatus.FIRING, AlertStatus.RESOLVED):
        Alert.objects.create(
            rule=rule,
            host=joined.host,
            gpu=gpu,
            status=status,
            severity=rule.severity,
            value=60,
            since=now,
            fired_at=now,
            resolved_at=now if status == AlertStatus.RESOLVED else None,
        )
    return token_create(user=operator, name="fuzzer", write_enabled=True)


@pytest.mark.timeout(360)
def test_fleet_api_survives_generated_input_as_an_operator(live_server, operator_token, tmp_path):
    url = f"{live_server.url}/api/schema/"
    _schemathesis(
        url,
        operator_token.plaintext,
        "--include-path-regex",
        FLEET_PATHS,
        cwd=tmp_path,
        timeout=330,
    )
    assert APIToken.objects.get(pk=operator_token.token.pk).last_used_at is not None
