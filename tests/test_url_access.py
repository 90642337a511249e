"""Every URL of the project, tried as four callers: anonymous, another organisation's owner,
a member of the organisation that owns the data, and an operator.

The fleet (hosts, GPUs, join tokens, credentials, commands, samples) belongs to no organisation
and is the operators' alone: its routes refuse the other organisation's owner *and* the member
(403 or 404), and none of its names ("kestrel") or secrets appear in what they are shown.
Regions are the exception: anyone signed in reads them; and so are whole-machine allocations,
which A's members read (the host lent to A included) while the other organisation gets 404.
The agent's join endpoint is reachable without an account; without a valid join token it
answers 400 and creates nothing; so is the payment provider's webhook, which refuses a call
without a valid signature. Billing's data (wallet, ledger, meters, top-ups, payments) is A's
like the rest; prices, vouchers, revenue and reconciliation are the operators'.

The suite walks ``get_resolver()`` so that a new route is tested the day it is added: a route
whose path parameters this file cannot fill fails loudly with its name. Path parameters are
filled with objects of organisation A ("Acme"); every piece of A's data contains the word
"acme", so "nothing of A leaked" is one substring check on each response.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import pytest
from allauth.account.forms import default_token_generator
from allauth.account.models import EmailAddress, EmailConfirmationHMAC
from allauth.account.utils import user_pk_to_url_str
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.usersessions.models import UserSession
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.apps import apps
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.backends.db import SessionStore
from django.urls import URLResolver, get_resolver, resolve, reverse
from django.utils import timezone
from django.utils.regex_helper import normalize
from rest_framework.test import APIClient

from accounts.choices import AuditAction, Role
from accounts.models import AuditEvent, Membership, Organization, User
from accounts.services.invitations import invitation_create
from accounts.services.notifications import notification_create
from accounts.services.organizations import organization_create
from accounts.services.ssh_keys import ssh_key_add
from accounts.services.tokens import token_create
from accounts.tests.factories import OperatorFactory, UserFactory
from environments.choices import EnvironmentStatus
from environments.models import (
    Environment,
    EnvironmentEvent,
    GPUAssignment,
    Image,
    OrphanContainer,
    PortAllocation,
    RegistryCredential,
    Spec,
)
from machines.choices import AlertMetric, AlertStatus, AllocationStatus, OnboardingAuth, Severity
from machines.models import (
    GPU,
    Alert,
    AlertRule,
    Allocation,
    GPUSample,
    GPUSampleRollup,
    HostCredential,
    HostGPUModel,
    HostSample,
    HostSampleRollup,
    OnboardingJob,
    Region,
)
from machines.services.commands import command_create
from machines.services.join import host_join, join_token_create

MARKER = "acme"  # every name, e-mail and slug of organisation A contains it; nothing else does
FLEET_MARKER = "kestrel"  # every name of the fleet's hosts, GPUs, tokens and commands


# The routes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str  # "namespace:name", or the path template for unnamed routes
    template: str  # "/orgs/%(slug)s/switch/"
    params: tuple[str, ...]
    callback: object
    namespace: str

    @property
    def url_name(self) -> str:
        return self.name.rpartition(":")[2]

    @property
    def kind(self) -> str:
        if self.namespace == "admin":
            return "admin"
        if self.name == AGENT_JOIN:
            return "agent"
        if self.name in WEBHOOK_ROUTES:
            return "webhook"
        if self.namespace == "api":
            return "api"
        if self.callback.__module__.startswith("allauth."):
            return "allauth"
        if self.name in PUBLIC_ROUTES:
            return "public"
        # Anything else is a portal page: signed-in users only. A new public page must be
        # added to PUBLIC_ROUTES on purpose.
        return "portal"


def _walk(resolver, chain=(), namespaces=()):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(
                entry,
                (*chain, entry),
                (*namespaces, entry.namespace) if entry.namespace else namespaces,
            )
        else:
            yield (*chain, entry), namespaces


def _routes() -> list[Route]:
    routes = []
    for chain, namespaces in _walk(get_resolver()):
        regex = "".join(part.pattern.regex.pattern.removeprefix("^") for part in chain)
        template, params = normalize(regex)[0]
        pattern = chain[-1]
        name = ":".join((*namespaces, pattern.name)) if pattern.name else "/" + template
        namespace = namespaces[0] if namespaces else ""
        routes.append(Route(name, "/" + template, tuple(params), pattern.callback, namespace))
    return routes


ROUTES = _routes()

# Reachable without signing in, on purpose.
PUBLIC_ROUTES = {
    "healthz",
    "readyz",
    "schema",  # the OpenAPI schema documents the API; it holds no data
    "swagger-ui",
    "redoc",
    "/api/",  # redirect to the API docs
    "set_language",
    "metrics",  # Prometheus's scrape: its own bearer token (404 when PROMETHEUS_TOKEN is unset)
    "agent_wheel_download",  # the agent's wheel for hosts being onboarded: no secret in it
}

# The fleet is operator-only, except regions (read by everyone signed in) and the agent's join
# endpoint, whose caller authenticates with the join token in the body.
AGENT_JOIN = "api:agent-join"
# Payment providers' notifications: no account, a signature instead; without one (or for a
# provider that is not enabled) refused with a 4xx, nothing changed.
WEBHOOK_ROUTES = {"api:payment-webhook"}
FLEET_FOR_EVERYONE = {"api:region-list", "api:region-detail"}
# Whole-machine allocations are the fleet's, but the organisation a host is lent to reads its
# own: these routes are scoped to the caller's organisations like any of A's data.
FLEET_LENT_TO_ORGANIZATIONS = {
    "api:allocation-list",
    "api:allocation-detail",
    "my_machines:allocation_list",
    "my_machines:allocation_detail",
}
# Specs are offered to everyone signed in; they belong to no organisation.
OFFERED_TO_EVERYONE = {"api:spec-detail"}

# allauth pages a signed-out visitor may open; every other allauth page wants a session.
ALLAUTH_ANONYMOUS = {
    "account_login",
    "account_signup",
    "account_inactive",
    "account_email_verification_sent",
    "account_reset_password",
    "account_reset_password_done",
    "account_reset_password_from_key",
    "account_reset_password_from_key_done",
    "account_confirm_email",
    "account_confirm_login_code",
    "account_logout",
    "mfa_authenticate",
}

# Links that carry a secret key are capabilities: whoever holds the key is its recipient, even
# when signed in as someone else. The page may show what the key itself is about (the
# organisation that invites, the address being confirmed) and must still change nothing.
CAPABILITY_ROUTES = {"accounts:invitation_respond", "account_confirm_email"}

# Which object of organisation A a ``pk`` stands for, by URL name.
PK_OBJECTS = {
    "member_role": "membership",
    "member_remove": "membership",
    "membership-detail": "membership",
    "invitation_resend": "invitation",
    "invitation_revoke": "invitation",
    "invitation-detail": "invitation",
    "invitation-resend": "invitation",
    "token_revoke": "token",
    "token-detail": "token",
    "ssh_key_delete": "ssh_key",
    "ssh-key-detail": "ssh_key",
    "notification_read": "notification",
    "notification-detail": "notification",
    "notification-read": "notification",
    "audit-event-detail": "audit_event",
    # The fleet's API and operator pages.
    "region-detail": "region",
    "host-detail": "host",
    "host-commands": "host",
    "host-drain": "host",
    "host-labels": "host",
    "host-maintenance": "host",
    "host-metrics": "host",
    "host-resume": "host",
    "host-retire": "host",
    "host-revoke-credential": "host",
    "host-rotate-credential": "host",
    "gpu-detail": "gpu",
    "host-command-detail": "command",
    "join-token-detail": "join_token",
    "host_detail": "host",
    "host_labels": "host",
    "host_status": "host",
    "host_command": "host",
    "host_credential_revoke": "host",
    "host_credential_rotate": "host",
    "join_token_revoke": "join_token",
    "alert-detail": "alert",
    "alert-acknowledge": "alert",
    "alert-rule-detail": "alert_rule",
    "alert_detail": "alert",
    "alert_acknowledge": "alert",
    "alert_rule_edit": "alert_rule",
    "alert_rule_enabled": "alert_rule",
    "onboarding_detail": "onboarding_job",
    "onboarding_progress": "onboarding_job",
    "onboarding_confirm": "onboarding_job",
    "onboarding_cancel": "onboarding_job",
    # Whole-machine allocations: A's, of the fleet's host.
    "allocation-detail": "allocation",
    "allocation-reclaim": "allocation",
    "allocation_detail": "allocation",
    "allocation_reclaim": "allocation",
    # Environments: A's environment, A's private image; specs belong to no organisation.
    "environment-detail": "environment",
    "environment-start": "environment",
    "environment-stop": "environment",
    "environment-restart": "environment",
    "environment-logs": "environment",
    "environment-events": "environment",
    "environment-auto-stop": "environment",
    "environment-connection": "environment",
    "environment_auto_stop": "environment",
    "environment_detail": "environment",
    "environment_terminal": "environment",
    "environment_start": "environment",
    "environment_stop": "environment",
    "environment_restart": "environment",
    "environment_delete": "environment",
    "image-detail": "image",
    "image-prepull": "image",
    "image_prepull": "image",
    "spec-detail": "spec",
    "registry-credential-detail": "registry_credential",
    "billing-price-detail": "price",
    "billing-top-up-approve": "top_up",
    "billing-top-up-reject": "top_up",
    "top_up_approve": "top_up",
    "top_up_reject": "top_up",
    "price_edit": "price",
    "price_delete": "price",
    "payment-detail": "payment",
}

# Which object of A the admin's ``<path:object_id>`` routes open, by model.
ADMIN_OBJECTS = {
    "accounts.user": "member",
    "accounts.organization": "organization",
    "accounts.membership": "membership",
    "accounts.invitation": "invitation",
    "accounts.apitoken": "token",
    "accounts.sshkey": "ssh_key",
    "accounts.auditevent": "audit_event",
    "accounts.notification": "notification",
    "account.emailaddress": "email_address",
    "mfa.authenticator": "authenticator",
    "usersessions.usersession": "user_session",
    # Groups belong to no organisation; the object is filled so the routes are still walked.
    "auth.group": "group",
    # The fleet belongs to no organisation either; the admin is operators' only.
    "machines.region": "region",
    "machines.host": "host",
    "machines.gpu": "gpu",
    "machines.jointoken": "join_token",
    "machines.hostcredential": "credential",
    "machines.agentcommand": "command",
    "machines.hostsample": "host_sample",
    "machines.gpusample": "gpu_sample",
    "machines.hostsamplerollup": "host_rollup",
    "machines.gpusamplerollup": "gpu_rollup",
    "machines.alertrule": "alert_rule",
    "machines.alert": "alert",
    "machines.onboardingjob": "onboarding_job",
    "machines.hostgpumodel": "host_gpu_model",
    "machines.allocation": "allocation",
    "environments.image": "image",
    "environments.spec": "spec",
    "environments.registrycredential": "registry_credential",
    "environments.environment": "environment",
    "environments.environmentevent": "environment_event",
    "environments.gpuassignment": "gpu_assignment",
    "environments.portallocation": "port_allocation",
    "environments.orphancontainer": "orphan_container",
    "billing.price": "price",
    "billing.wallet": "wallet",
    "billing.ledgerentry": "ledger_entry",
    "billing.meter": "meter",
    "billing.source": "source",
    "billing.runinterval": "run_interval",
    "billing.topuprequest": "top_up",
    "billing.voucher": "voucher",
    "billing.voucherredemption": "voucher_redemption",
    "billing.payment": "payment",
    "billing.reconciliationrun": "reconciliation_run",
}

# Admin pages that do not answer an operator's GET with 200, and what they answer instead.
OPERATOR_ADMIN_STATUS = {
    "admin:login": 302,  # already signed in: on to the index
    "admin:logout": 405,  # POST only
    "admin:autocomplete": 403,  # without the field it completes for
    "admin:view_on_site": 404,  # organisations have no public page
    "/admin/%(url)s": 404,  # the catch-all
    # Tokens, keys and audit events are created by their services only; audit events are
    # append-only.
    "admin:accounts_apitoken_add": 403,
    "admin:accounts_sshkey_add": 403,
    "admin:accounts_auditevent_add": 403,
    "admin:accounts_auditevent_delete": 403,
    # Join tokens are minted on the operator pages (which show the token once); credentials
    # come from joining; commands from their service.
    "admin:machines_jointoken_add": 403,
    "admin:machines_hostcredential_add": 403,
    "admin:machines_agentcommand_add": 403,
    "admin:machines_alert_add": 403,  # alerts come from rule evaluation
    "admin:machines_onboardingjob_add": 403,  # started from the pages that confirm host keys
    "admin:machines_hostgpumodel_add": 403,  # the database keeps these counts
    "admin:machines_hostgpumodel_delete": 403,
    # Allocations are made where overlaps and the host are checked (pages, API), and their
    # record stays.
    "admin:machines_allocation_add": 403,
    "admin:machines_allocation_delete": 403,
    # Environments are created where they are placed (portal, API); their events, GPU
    # assignments, ports and orphans come from the services that keep them.
    "admin:environments_environment_add": 403,
    "admin:environments_environmentevent_add": 403,
    "admin:environments_gpuassignment_add": 403,
    "admin:environments_portallocation_add": 403,
    "admin:environments_orphancontainer_add": 403,
    "admin:billing_wallet_add": 403,
    "admin:billing_wallet_delete": 403,
    "admin:billing_ledgerentry_add": 403,
    "admin:billing_ledgerentry_delete": 403,
    "admin:billing_meter_add": 403,
    "admin:billing_meter_delete": 403,
    "admin:billing_source_add": 403,
    "admin:billing_source_delete": 403,
    "admin:billing_runinterval_add": 403,
    "admin:billing_runinterval_delete": 403,
    "admin:billing_topuprequest_add": 403,
    "admin:billing_topuprequest_delete": 403,
    "admin:billing_voucherredemption_add": 403,
    "admin:billing_voucherredemption_delete": 403,
    "admin:billing_payment_add": 403,
    "admin:billing_payment_delete": 403,
    "admin:billing_reconciliationrun_add": 403,
    "admin:billing_reconciliationrun_delete": 403,
    "admin:billing_voucher_delete": 403,
}

# Parameters that are no object of A: the admin's catch-all, the admin index of one app, the
# content type of "view on site", the version of the agent's wheel. They are filled, but do not
# make the route "about A".
NEUTRAL_PARAMS = {
    "url",
    "app_label",
    "content_type_id",
    "version",
    # A statement's month and format: always the caller's own organisation's.
    "period",
    "extension",
    "year",
    "month",
    # A payment provider's name (its webhook authenticates with the provider's signature).
    "provider",
}


# The data --------------------------------------------------------------------------------------


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob.decode() + " mia@acme-laptop"


@dataclass
class World:
    organization: Organization
    member: User
    outsider: User
    operator: User
    objects: dict
    invitation_key: str
    # Values of A and of the fleet without a marker: token key, fingerprint, invitation key,
    # join token and host credential.
    secrets: tuple[str, ...]
    join_token: str  # used up by the fleet's one host
    host_credential: str


@pytest.fixture(autouse=True)
def _card_payments(settings):
    """The sandbox payment provider on, so that its pages and webhook exist to be walked."""
    settings.BILLING_PAYMENT_PROVIDER = "sandbox"
    settings.BILLING_PAYMENT_WEBHOOK_SECRET = "whsec-url-access"


@pytest.fixture
def world(db) -> World:
    owner = UserFactory(email="alice@acme.test", name="Alice Acmeowner")
    organization = organization_create(user=owner, name="Acme Quantum Lab", slug="acme-quantum")
    member = UserFactory(email="mia@acme.test", name="Mia Acmemember")
    membership = Membership.objects.create(user=member, organization=organization, role=Role.MEMBER)
    member.current_organization = organization
    member.save(update_fields=["current_organization"])
    invitation, invitation_key = invitation_create(
        actor=owner, organization=organization, email="ivan@acme.test"
    )
    token = token_create(user=member, name="acme deploy", write_enabled=True).token
    ssh_key = ssh_key_add(user=member, name="acme laptop", public_key=_public_key())
    notification = notification_create(
        member, "Acme quota warning", organization=organization, url="/org/members/"
    )
    unverified = EmailAddress.objects.create(user=member, email="mia.alt@acme.test")
    authenticator = RecoveryCodes.activate(member).instance
    user_session = _signed_in_elsewhere(member)

    outsider = UserFactory(email="otto@borealis.test", name="Otto Outsider")
    organization_create(user=outsider, name="Borealis Labs", slug="borealis")
    operator = OperatorFactory(email="olga@operators.test", name="Olga Operator")
    fleet = _fleet(operator)
    environment = _environment(organization, member, fleet.objects["host"], fleet.objects["gpu"])
    now = timezone.now()
    allocation = Allocation.objects.create(
        host=fleet.objects["host"],
        organization=organization,
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=1),
        status=AllocationStatus.ACTIVE,
        tenant_user="rgt1",
    )

    objects = {
        "organization": organization,
        "member": member,
        "membership": membership,
        "invitation": invitation,
        "token": token,
        "ssh_key": ssh_key,
        "notification": notification,
        "audit_event": AuditEvent.objects.filter(organization=organization).earliest("id"),
        "email_address": EmailAddress.objects.get(user=member, primary=True),
        "unverified_email": unverified,
        "authenticator": authenticator,
        "user_session": user_session,
        "group": Group.objects.create(name="operators-on-call"),
        **fleet.objects,
        **environment,
        "allocation": allocation,
        **_billing(organization, member, outsider),
    }
    return World(
        organization=organization,
        member=member,
        outsider=outsider,
        operator=operator,
        objects=objects,
        invitation_key=invitation_key,
        secrets=(token.key, ssh_key.fingerprint, invitation_key, *fleet.secrets),
        join_token=fleet.secrets[0],
        host_credential=fleet.secrets[1],
    )


@dataclass
class Fleet:
    objects: dict
    secrets: tuple[str, ...]  # join token, host credential, then their keys


def _fleet(operator: User) -> Fleet:
    """A host that joined with a join token, with a GPU, a command, samples and their rollups,
    an alert of a rule, and an onboarding job."""
    region = Region.objects.create(name="Nordic Hall", slug="nordic-hall", location="Hall 2")
    issued = join_token_create(
        operator=operator, name="kestrel rack", region=region, labels={"team": "kestrel"}
    )
    joined = host_join(token=issued.plaintext, name="kestrel-gpu-01")
    host = joined.host
    gpu = GPU.objects.create(
        host=host,
        uuid="GPU-kestrel-0001",
        index=0,
        model="Kestrel test GPU",
        memory_total=80 * 2**30,
    )
    now = timezone.now()
    command = command_create(host=host, kind="ping", payload={"note": "kestrel"})
    host_sample = HostSample.objects.create(
        host=host,
        time=now,
        cpu_percent=1,
        memory_used=1,
        memory_total=2,
        disk_used=1,
        disk_total=2,
    )
    gpu_sample = GPUSample.objects.create(
        gpu=gpu, time=now, utilization=1, memory_used=1, temperature=40, power_draw=100
    )
    credential = HostCredential.objects.get(host=host)
    host_rollup = HostSampleRollup.objects.create(
        host=host,
        time=now,
        cpu_percent=1,
        memory_used=1,
        memory_total=2,
        disk_used=1,
        disk_total=2,
    )
    gpu_rollup = GPUSampleRollup.objects.create(
        gpu=gpu, time=now, utilization=1, memory_used=1, temperature=40, power_draw=100
    )
    alert_rule = AlertRule.objects.create(
        name="kestrel hot GPU", metric=AlertMetric.GPU_TEMPERATURE, threshold=85
    )
    alert = Alert.objects.create(
        rule=alert_rule,
        host=host,
        gpu=gpu,
        status=AlertStatus.FIRING,
        severity=Severity.WARNING,
        value=90,
        message="kestrel GPU at 90 °C",
        since=now,
        fired_at=now,
    )
    onboarding_job = OnboardingJob.objects.create(
        name="kestrel-gpu-02",
        address="kestrel-02.lan",
        username="kestrel",
        auth_method=OnboardingAuth.PASSWORD,
        created_by=operator,
    )
    return Fleet(
        objects={
            "region": region,
            "host": host,
            "gpu": gpu,
            "join_token": issued.join_token,
            "credential": credential,
            "command": command,
            "host_sample": host_sample,
            "gpu_sample": gpu_sample,
            "host_rollup": host_rollup,
            "gpu_rollup": gpu_rollup,
            "alert_rule": alert_rule,
            "alert": alert,
            "onboarding_job": onboarding_job,
            "host_gpu_model": HostGPUModel.objects.get(host=host),
        },
        secrets=(issued.plaintext, joined.credential, issued.join_token.key, credential.key),
    )


def _environment(organization, member, host, gpu) -> dict:
    """A's running environment on the fleet's host, from A's private image, with its event, GPU
    assignment and port; a spec, a registry login and an orphan container."""
    image = Image.objects.create(
        name="Acme private trainer",
        reference="registry.acme.test/acme/trainer:1",
        organization=organization,
    )
    spec = Spec.objects.create(name="One test GPU", gpu_model="Test GPU 80GB", gpu_count=1)
    environment = Environment.objects.create(
        organization=organization,
        created_by=member,
        name="acme-train",
        spec=spec,
        image=image,
        image_reference=image.reference,
        host=host,
        status=EnvironmentStatus.RUNNING,
    )
    return {
        "image": image,
        "spec": spec,
        "environment": environment,
        "environment_event": EnvironmentEvent.objects.create(
            environment=environment, status=EnvironmentStatus.RUNNING, message="acme running"
        ),
        "gpu_assignment": GPUAssignment.objects.create(environment=environment, gpu=gpu),
        "port_allocation": PortAllocation.objects.create(
            environment=environment, host=host, host_port=40001, container_port=8888, role="http"
        ),
        "registry_credential": RegistryCredential.objects.create(
            registry="registry.kestrel.test", username="kestrel-bot", password_encrypted="x"
        ),
        "orphan_container": OrphanContainer.objects.create(
            host=host, container_id="kestrel" + "0" * 57, environment_label="1"
        ),
    }


def _param_value(route: Route, param: str, world: World) -> str | None:
    objects = world.objects
    if param in {"slug", "organization_slug"}:
        return world.organization.slug
    if param == "url":
        return "no-such-page/"  # the admin's catch-all
    if param == "app_label":
        return "accounts"
    if param == "version" and route.name == "agent_wheel_download":
        return "0.0.0"  # no such build: the walk checks the route, not the wheel builder
    if param == "key" and route.name == "accounts:invitation_respond":
        return world.invitation_key
    if param == "key" and route.name == "account_confirm_email":
        return EmailConfirmationHMAC(objects["unverified_email"]).key
    if route.name == "account_reset_password_from_key":
        return {
            "uidb36": user_pk_to_url_str(world.member),
            "key": default_token_generator.make_token(world.member),
        }.get(param)
    if param == "id" and route.name == "admin:auth_user_password_change":
        return str(world.member.pk)
    if route.name == "admin:view_on_site":
        organization = world.organization
        return {
            "content_type_id": str(ContentType.objects.get_for_model(organization).pk),
            "object_id": str(organization.pk),
        }.get(param)
    if param == "object_id":
        model_admin = getattr(route.callback, "model_admin", None)
        if model_admin is not None:
            key = ADMIN_OBJECTS.get(model_admin.model._meta.label_lower)
            return str(objects[key].pk) if key else None
    if param == "organization_id":
        return str(world.organization.pk)
    if param == "period":
        return timezone.now().strftime("%Y-%m")
    if param == "extension":
        return "csv" if route.name.endswith("file") else "pdf"
    if param in ("year", "month"):
        return timezone.now().strftime("%Y" if param == "year" else "%m")
    if param == "provider":
        return "sandbox"
    if param == "reference":
        return objects["payment"].provider_reference
    if param == "pk" and route.url_name in PK_OBJECTS:
        return str(objects[PK_OBJECTS[route.url_name]].pk)
    return None


def _url(route: Route, world: World) -> str:
    values = {}
    for param in route.params:
        value = _param_value(route, param, world)
        if value is None:
            pytest.fail(
                f"{route.name}: no value for path parameter {param!r}. Teach "
                f"tests/test_url_access.py which object of organisation A it stands for.",
                pytrace=False,
            )
        values[param] = value
    url = route.template % values
    match = resolve(url)
    assert match.func == route.callback, f"{route.name}: {url} resolves to {match.view_name}"
    return url


def _is_about_a(route: Route) -> bool:
    if route.name in FLEET_FOR_EVERYONE | OFFERED_TO_EVERYONE:
        return False  # regions and specs belong to no organisation; everyone signed in reads
    return any(param not in NEUTRAL_PARAMS for param in route.params)


# Billing's operator side: prices, credits, top-up decisions, vouchers, revenue.
BILLING_OPERATOR_API = {
    "api:billing-price-list",
    "api:billing-price-detail",
    "api:billing-wallet-credit",
    "api:billing-top-up-list",
    "api:billing-top-up-approve",
    "api:billing-top-up-reject",
    "api:billing-voucher-list",
    "api:billing-revenue",
}


def _is_fleet(route: Route) -> bool:
    """Operator-only routes of the fleet (its API and pages; the admin is checked as admin),
    and billing's operator side."""
    if route.namespace == "billing_operator" or route.name in BILLING_OPERATOR_API:
        return True
    module = getattr(route.callback, "__module__", "") or ""
    return module.startswith("machines.") and route.name not in {
        *FLEET_FOR_EVERYONE,
        *FLEET_LENT_TO_ORGANIZATIONS,
        AGENT_JOIN,
        *PUBLIC_ROUTES,
    }


# Requests and checks ---------------------------------------------------------------------------


def _methods(route: Route) -> tuple[str, ...]:
    if route.kind in {"api", "agent", "webhook"}:
        return ("get", "post", "patch", "delete")
    if route.kind == "portal":
        return ("get", "post")
    if route.kind == "admin" and route.name not in {"admin:login", "admin:logout"}:
        return ("get", "post")
    return ("get",)


def _send(client, method: str, url: str):
    if method == "get":
        return client.get(url)
    # An empty body: enough to reach every permission check, never enough to create anything.
    return getattr(client, method)(url, {}, format="json")


def _body(response) -> str:
    if response.streaming:
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def _assert_nothing_of_a(route: Route, method: str, url: str, response, world: World) -> None:
    # The page may echo the path the caller asked for (language switcher, login "next").
    body = _body(response).replace(url, "").lower()
    leaks = [marker for marker in (MARKER, FLEET_MARKER) if marker in body]
    leaks += [secret for secret in world.secrets if secret.lower() in body]
    assert not leaks, f"{method.upper()} {url} ({route.name}) shows {leaks} of A or of the fleet"


def _assert_login_redirect(route, method, url, response, login_url: str) -> None:
    assert response.status_code == 302, (
        f"{method.upper()} {url} ({route.name}): {response.status_code}, expected a redirect "
        f"to {login_url}"
    )
    assert response["Location"].startswith(login_url), (
        f"{method.upper()} {url} ({route.name}) redirects to {response['Location']}"
    )


def _assert_api_refusal(route, method, url, response) -> None:
    assert response.status_code in (401, 403), (
        f"{method.upper()} {url} ({route.name}): {response.status_code}, expected 401/403"
    )
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}, error


def _assert_admin_refuses(route, method, url, response) -> None:
    """The admin serves nothing but its login page to anyone who is not staff."""
    if route.name == "admin:login":
        assert response.status_code == 200
    elif route.name == "admin:logout":
        assert response.status_code in (302, 405)
    elif route.name == "/admin/%(url)s":
        assert response.status_code in (302, 404)
    else:
        _assert_login_redirect(route, method, url, response, reverse("admin:login"))


def _signed_in_elsewhere(user: User) -> UserSession:
    """A live session of ``user`` on another browser, as allauth tracks it at sign-in: a real
    session row, so the sessions page keeps it rather than purging it."""
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return UserSession.objects.create(
        user=user, session_key=store.session_key, ip="198.51.100.7", user_agent="Firefox/140.0"
    )


def _table_fingerprint(ignore_logout_of: User | None = None) -> dict[str, tuple[int, str]]:
    """Row count and a hash of every row of the accounts and machines tables (and allauth's and
    auth's)."""
    state = {}
    for model in apps.get_models():
        if model._meta.app_label not in {
            "accounts",
            "machines",
            "environments",
            "billing",
            "account",
            "mfa",
            "auth",
            "usersessions",
        }:
            continue
        queryset = model._base_manager.order_by("pk")
        if model is AuditEvent and ignore_logout_of is not None:
            queryset = queryset.exclude(action=AuditAction.LOGOUT, actor=ignore_logout_of)
        rows = list(queryset.values_list())
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()
        state[model._meta.label] = (len(rows), digest)
    return state


def _client(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


# The test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_url_access(route: Route, world: World):
    url = _url(route, world)
    about_a = _is_about_a(route)
    login_url = reverse(settings.LOGIN_URL)

    # Sign-ins write audit rows and last_login; do them before the snapshot.
    anonymous, outsider = _client(), _client(world.outsider)
    member, operator = _client(world.member), _client(world.operator)
    # allauth signs out whoever opens another account's e-mail confirmation link; the audit
    # row of that sign-out is the one change a capability link may cause.
    logout_of = world.outsider if route.name in CAPABILITY_ROUTES else None
    before = _table_fingerprint(logout_of)

    for method in _methods(route):
        response = _send(anonymous, method, url)
        assert response.status_code < 500, f"anonymous {method.upper()} {url}: 5xx"
        if route.name not in CAPABILITY_ROUTES:
            _assert_nothing_of_a(route, method, url, response, world)
        if route.kind == "portal":
            _assert_login_redirect(route, method, url, response, login_url)
        elif route.kind == "api":
            _assert_api_refusal(route, method, url, response)
        elif route.kind == "agent":
            _assert_agent_join_refuses(method, url, response)
        elif route.kind == "webhook":
            assert response.status_code in (400, 404, 405), (method, url, response.status_code)
        elif route.kind == "admin":
            _assert_admin_refuses(route, method, url, response)
        elif route.kind == "allauth" and route.url_name not in ALLAUTH_ANONYMOUS:
            _assert_login_redirect(route, method, url, response, login_url)

    if route.kind == "agent":
        # Well-formed, but no valid join token: refused on the token field, nothing created.
        for token in (
            "rjt_garbage",
            world.join_token,
            world.host_credential,
            world.objects["join_token"].key,
        ):
            response = anonymous.post(url, {"token": token, "name": "intruder"}, format="json")
            assert response.status_code == 400, (token, response.content)
            assert set(response.json()["error"]["fields"]) == {"token"}

    outsider_statuses = []
    for method in _methods(route):
        response = _send(outsider, method, url)
        status = response.status_code
        outsider_statuses.append(status)
        assert status < 500, f"other organisation {method.upper()} {url}: {status}"
        if route.kind == "admin":
            _assert_admin_refuses(route, method, url, response)
        if route.name in CAPABILITY_ROUTES:
            continue
        _assert_nothing_of_a(route, method, url, response, world)
        if about_a and route.kind in {"api", "portal"}:
            assert status in (403, 404, 405), (
                f"other organisation {method.upper()} {url} ({route.name}): {status}"
            )
    if about_a and route.kind in {"api", "portal"} and route.name not in CAPABILITY_ROUTES:
        assert {403, 404} & set(outsider_statuses), (
            f"{route.name}: the other organisation was never refused: {outsider_statuses}"
        )

    assert _table_fingerprint(logout_of) == before, (
        f"{route.name}: anonymous or other-organisation requests changed the database"
    )

    if _is_fleet(route):
        _assert_fleet_refuses(route, url, "other organisation", outsider, world)
        _assert_fleet_refuses(route, url, "member", member, world)
        assert _table_fingerprint() == before, (
            f"{route.name}: a member's requests changed the fleet or accounts tables"
        )
    if route.name in FLEET_FOR_EVERYONE:
        for who, client in (("other organisation", outsider), ("member", member)):
            response = client.get(url)
            assert response.status_code == 200, f"{who} GET {url}: {response.status_code}"
            assert world.objects["region"].name in response.content.decode()
            for method in ("post", "patch", "delete"):
                status = _send(client, method, url).status_code
                assert status in (403, 405), f"{who} {method.upper()} {url}: {status}"
        assert _table_fingerprint() == before, f"{route.name}: a customer changed a region"

    insider_statuses = []
    for who, client in (("member", member), ("operator", operator)):
        for method in _methods(route):
            response = _send(client, method, url)
            status = response.status_code
            insider_statuses.append(status)
            assert status < 500, f"{who} {method.upper()} {url} ({route.name}): {status}"
            if route.kind == "admin" and who == "member":
                _assert_admin_refuses(route, method, url, response)
            if route.kind == "admin" and who == "operator" and method == "get":
                _assert_operator_admin(route, url, response)
    if about_a and route.kind in {"api", "portal"}:
        # The URL really names A's object: someone entitled to it is not told "not found".
        assert set(insider_statuses) - {403, 404, 405}, (
            f"{route.name}: even the member and the operator were refused: {insider_statuses}"
        )


def _assert_agent_join_refuses(method: str, url: str, response) -> None:
    """No account needed, but nothing without a join token: 400 to an empty POST, 405 else."""
    expected = 400 if method == "post" else 405
    assert response.status_code == expected, (
        f"anonymous {method.upper()} {url}: {response.status_code}, expected {expected}"
    )
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}, error
    if method == "post":
        assert {"token", "name"} <= set(error["fields"]), error


def _assert_fleet_refuses(route: Route, url: str, who: str, client, world: World) -> None:
    """Fleet routes are operators' only: 403 or 404 (405 for a method the route lacks), and
    nothing of the fleet in the answer."""
    statuses = []
    for method in _methods(route):
        response = _send(client, method, url)
        statuses.append(response.status_code)
        assert response.status_code in (403, 404, 405), (
            f"{who} {method.upper()} {url} ({route.name}): {response.status_code}"
        )
        _assert_nothing_of_a(route, method, url, response, world)
    assert {403, 404} & set(statuses), f"{route.name}: {who} was never refused: {statuses}"


def _assert_operator_admin(route: Route, url: str, response) -> None:
    """Operators reach every admin page (redirects and read-only models excepted)."""
    if route.name in OPERATOR_ADMIN_STATUS:
        expected = OPERATOR_ADMIN_STATUS[route.name]
    elif route.name.startswith("/admin/"):  # <object_id>/ redirects to <object_id>/change/
        expected = 302
    else:
        expected = 200
    assert response.status_code == expected, (
        f"operator GET {url} ({route.name}): {response.status_code}, expected {expected}"
    )


def _billing(organization, member, outsider) -> dict:
    from billing.models import Payment, ReconciliationRun, RunInterval, Source
    from billing.services.metering import meter_open
    from billing.services.prices import Quantities, price_set
    from billing.services.recharge import top_up_request, voucher_create, voucher_redeem
    from billing.services.wallets import wallet_credit, wallet_get

    operator = OperatorFactory(email="bill@operators.test")
    price = price_set(operator=operator, resource="gpu_hour", amount="2")
    wallet_get(outsider.memberships.get().organization)
    wallet = wallet_get(organization)
    entry = wallet_credit(
        operator=operator,
        organization=organization,
        amount="100",
        reason="acme opening",
        kind="recharge",
    )
    meter = meter_open(
        reference="environment:acme:run",
        organization=organization,
        label="acme-train",
        quantities=Quantities(kind="compute", gpu_count=1),
        source="host:acme",
    )
    top_up = top_up_request(user=member, organization=organization, amount="5", reference="ACME-T")
    voucher = voucher_create(operator=operator, amount="5", code="ACME-WELCOME", max_redemptions=9)
    redemption = voucher_redeem(user=member, organization=organization, code="ACME-WELCOME")
    payment = Payment.objects.create(
        wallet=wallet, provider="sandbox", provider_reference="acme-pay", amount=5, currency="USD"
    )
    return {
        "price": price,
        "wallet": wallet,
        "ledger_entry": entry,
        "meter": meter,
        "source": Source.objects.get(key="host:acme"),
        "run_interval": RunInterval.objects.get(meter=meter),
        "top_up": top_up,
        "voucher": voucher,
        "voucher_redemption": redemption,
        "payment": payment,
        "reconciliation_run": ReconciliationRun.objects.create(differences=[]),
    }
