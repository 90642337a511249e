"""Onboarding a server over SSH (paramiko): read its host key, have an operator confirm it, then
connect, check Python and Docker, install the agent from the wheel this server serves, join,
start the agent and wait for the host to come online.

States (conditional updates, as every state machine of ARCHITECTURE.md §4)::

    pending -> awaiting_confirmation -> running -> succeeded | failed
    pending | awaiting_confirmation -> failed | cancelled

Nothing is trusted silently: the scan reads the host key without authenticating, and the run
compares the key again before it sends the password or signs with the key. The password or
private key lives Fernet-encrypted (a key derived from SECRET_KEY with HKDF) in
``secret_encrypted`` only until the job ends; every terminal transition wipes it. It is never
logged, never stored in a step's output and never shown again; nor is the join token.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.users import user_require_operator
from remotegpu.core.errors import ApplicationError, Conflict, ValidationError
from remotegpu.core.secrets import sealing_key

from ..choices import HostStatus, OnboardingAuth, OnboardingStatus
from ..models import Host, OnboardingJob, Region
from .agent_package import agent_version
from .hosts import labels_parse, labels_validate
from .join import join_token_create, join_token_revoke
from .onboarding_ssh import (
    AGENT_LOG_TAIL,
    CONNECT_ERRORS,
    DOCKER_CHECK,
    INSTALL_SCRIPT,
    JOIN_SCRIPT,
    PYTHON_CHECK,
    START_SCRIPT,
    AuthenticationFailed,
    CommandTimedOut,
    SshConnection,
    SshSecret,
    connect_error_reason,
    host_key_fingerprint,
    private_key_load,
    shell_script,
)

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60
INSTALL_TIMEOUT = 600  # a venv and a pip install from the host's package index
VERIFY_TIMEOUT = 60  # for the host to come online once the agent is started
VERIFY_POLL = 1.0
OUTPUT_TAIL = 4000  # characters of a step's output kept
SAVE_INTERVAL = 0.5  # seconds between saves (and pushes) of streaming output
MIN_PYTHON = (3, 10)  # the agent's requires-python
JOIN_TOKEN_LIFETIME = timedelta(hours=1)
# Jobs nobody moves on: their secret must not stay in the database.
PENDING_TIMEOUT = timedelta(minutes=10)
CONFIRMATION_TIMEOUT = timedelta(hours=1)
RUNNING_TIMEOUT = timedelta(minutes=30)  # without any progress saved

S = OnboardingStatus
TERMINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
TRANSITIONS = {
    S.PENDING: frozenset({S.AWAITING_CONFIRMATION, S.FAILED, S.CANCELLED}),
    S.AWAITING_CONFIRMATION: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED}),
}

# The steps of a run, in order.
CONNECT = "connect"
CHECK_PYTHON = "check_python"
CHECK_DOCKER = "check_docker"
INSTALL_AGENT = "install_agent"
JOIN = "join"
START = "start"
VERIFY = "verify"
STEPS = (CONNECT, CHECK_PYTHON, CHECK_DOCKER, INSTALL_AGENT, JOIN, START, VERIFY)
STEP_LABELS = {
    CONNECT: gettext_lazy("Connect"),
    CHECK_PYTHON: gettext_lazy("Check Python"),
    CHECK_DOCKER: gettext_lazy("Check Docker"),
    INSTALL_AGENT: gettext_lazy("Install the agent"),
    JOIN: gettext_lazy("Join"),
    START: gettext_lazy("Start the agent"),
    VERIFY: gettext_lazy("Verify"),
}
STEP_RUNNING, STEP_SUCCEEDED, STEP_FAILED = "running", "succeeded", "failed"


# The secret --------------------------------------------------------------------------------


def _fernet() -> Fernet:
    return sealing_key(b"remotegpu onboarding secret v1")


def secret_encrypt(secret: SshSecret) -> str:
    payload = {
        "password": secret.password,
        "private_key": secret.private_key,
        "passphrase": secret.passphrase,
    }
    return _fernet().encrypt(json.dumps(payload).encode()).decode()


class SecretUnavailable(Exception):
    """The job's secret was wiped, or SECRET_KEY changed since it was stored."""


def secret_decrypt(token: str) -> SshSecret:
    if not token:
        raise SecretUnavailable
    try:
        payload = json.loads(_fernet().decrypt(token.encode()))
    except (InvalidToken, ValueError) as exc:
        raise SecretUnavailable from exc
    return SshSecret(
        password=payload.get("password", ""),
        private_key=payload.get("private_key", ""),
        passphrase=payload.get("passphrase", ""),
    )


# Progress ----------------------------------------------------------------------------------


def onboarding_group(job_id: int) -> str:
    """Pages showing this job listen here (machines.consumers.onboarding)."""
    return f"onboarding.job.{job_id}"


def onboarding_notify(job_id: int) -> None:
    """Tell open pages the job changed, once the change is committed."""
    layer = get_channel_layer()
    if layer is None:
        return

    def send():
        try:
            async_to_sync(layer.group_send)(
                onboarding_group(job_id), {"type": "onboarding.changed", "job_id": job_id}
            )
        except Exception:  # a page missing one push falls back to polling; the job goes on
            logger.warning("onboarding %s: could not push progress", job_id, exc_info=True)

    transaction.on_commit(send)


def _transition(job_id: int, source: str, target: str, **fields) -> bool:
    """Move the job from ``source`` to ``target`` if it is still in ``source``; a terminal
    state wipes the secret. Whether this call made the move."""
    assert target in TRANSITIONS[source], f"{source} -> {target}"
    now = timezone.now()
    if target in TERMINAL_STATES:
        fields.update(secret_encrypted="", finished_at=now)
    moved = OnboardingJob.objects.filter(pk=job_id, status=source).update(
        status=target, updated_at=now, **fields
    )
    if moved:
        onboarding_notify(job_id)
    return bool(moved)


def step_error(step: str, reason: str) -> str:
    return _("%(step)s failed: %(reason)s") % {"step": step, "reason": reason}


class StepFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Progress:
    """The steps of a running job: saved (at most every SAVE_INTERVAL while output streams)
    and pushed to open pages. Secrets are redacted before anything is stored."""

    def __init__(self, job_id: int, secrets: list[str]):
        self.job_id = job_id
        self.steps: list[dict] = []
        self.secrets = secrets
        self._raw = ""
        self._saved_at = 0.0

    @property
    def current(self) -> dict | None:
        return self.steps[-1] if self.steps else None

    def begin(self, name: str) -> None:
        self._raw = ""
        self.steps.append(
            {
                "name": name,
                "status": STEP_RUNNING,
                "started_at": timezone.now().isoformat(),
                "finished_at": None,
                "output": "",
                "warning": "",
            }
        )
        self.save(step=name)

    def output(self, text: str) -> None:
        if not text or self.current is None:
            return
        self._raw = (self._raw + text)[-2 * OUTPUT_TAIL :]
        self.current["output"] = self.redact(self._raw)[-OUTPUT_TAIL:]
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self.save()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[hidden]")
        return text

    def finish(self, status: str, warning: str = "") -> None:
        step = self.current
        if step is None or step["status"] != STEP_RUNNING:
            return
        step.update(status=status, finished_at=timezone.now().isoformat(), warning=warning)
        self.save()

    def save(self, **fields) -> None:
        OnboardingJob.objects.filter(pk=self.job_id, status=S.RUNNING).update(
            steps=self.steps, updated_at=timezone.now(), **fields
        )
        self._saved_at = time.monotonic()
        onboarding_notify(self.job_id)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _command_failed(status: int, output: str) -> str:
    line = _last_line(output)
    if line:
        return _("exit status %(status)s: %(line)s") % {"status": status, "line": line}
    return _("exit status %(status)s") % {"status": status}


class _Run:
    """One run of the steps against one job's server."""

    def __init__(self, job: OnboardingJob, server_url: str):
        self.job = job
        self.server_url = server_url
        self.ssh: SshConnection | None = None
        self.secret: SshSecret | None = None
        self.progress = _Progress(job.pk, secrets=[])

    def execute(self) -> None:
        for name in STEPS:
            self.progress.begin(name)
            warning = getattr(self, f"_{name}")()
            self.progress.finish(STEP_SUCCEEDED, warning=warning or "")

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()

    def _run(
        self, command: str, timeout: float = COMMAND_TIMEOUT, stdin: str = ""
    ) -> tuple[int, str]:
        output: list[str] = []

        def collect(text: str) -> None:
            output.append(text)
            self.progress.output(text)

        try:
            status = self.ssh.run(command, timeout=timeout, on_output=collect, stdin=stdin)
        except CommandTimedOut:
            raise StepFailed(_("timed out after %(seconds)s s") % {"seconds": timeout}) from None
        except CONNECT_ERRORS as exc:
            raise StepFailed(_("the SSH connection was lost: %(error)s") % {"error": exc}) from exc
        return status, self.progress.redact("".join(output))

    def _checked(self, command: str, timeout: float = COMMAND_TIMEOUT, stdin: str = "") -> str:
        status, output = self._run(command, timeout, stdin)
        if status != 0:
            raise StepFailed(_command_failed(status, output))
        return output

    # The steps, in STEPS order; each returns a warning or nothing, or raises StepFailed.

    def _connect(self) -> None:
        job = self.job
        try:
            self.secret = secret_decrypt(job.secret_encrypted)
        except SecretUnavailable:
            raise StepFailed(_("the password or key is no longer available")) from None
        self.progress.secrets.extend(self.secret.values)
        try:
            self.ssh = SshConnection(job.address, job.port)
        except CONNECT_ERRORS as exc:
            raise StepFailed(connect_error_reason(exc)) from exc
        key = self.ssh.host_key()
        fingerprint = host_key_fingerprint(key)
        if (key.get_name(), fingerprint) != (job.host_key_type, job.host_key_fingerprint):
            raise StepFailed(
                _(
                    "host key changed: the server presented %(type)s %(fingerprint)s, not the "
                    "confirmed %(confirmed_type)s %(confirmed)s; nothing was sent to it"
                )
                % {
                    "type": key.get_name(),
                    "fingerprint": fingerprint,
                    "confirmed_type": job.host_key_type,
                    "confirmed": job.host_key_fingerprint,
                }
            )
        try:
            self.ssh.authenticate(job.username, self.secret)
        except AuthenticationFailed:
            what = _("key") if job.auth_method == OnboardingAuth.PRIVATE_KEY else _("password")
            raise StepFailed(
                _("authentication failed: the server refused the %(what)s of %(user)s")
                % {"what": what, "user": job.username}
            ) from None
        except ValidationError as exc:  # a stored key that no longer loads
            raise StepFailed(str(exc.message)) from exc
        except CONNECT_ERRORS as exc:
            raise StepFailed(connect_error_reason(exc)) from exc
        self.progress.output(
            f"{job.username}@{job.address}:{job.port}: host key {key.get_name()} {fingerprint}"
            " (confirmed), authenticated\n"
        )

    def _check_python(self) -> None:
        status, output = self._run(PYTHON_CHECK)
        if status == 127:
            raise StepFailed(_("python3 was not found: install Python 3.10 or newer"))
        match = re.search(r"\((\d+), (\d+)\)", output)
        if status != 0 or match is None:
            raise StepFailed(_command_failed(status, output))
        found = (int(match.group(1)), int(match.group(2)))
        if found < MIN_PYTHON:
            raise StepFailed(
                _("Python %(found)s is too old: the agent needs %(needed)s or newer")
                % {"found": "{}.{}".format(*found), "needed": "{}.{}".format(*MIN_PYTHON)}
            )

    def _check_docker(self) -> str:
        status, _output = self._run(DOCKER_CHECK)
        if status != 0:
            return _(
                "Docker was not found: the agent runs without it, but environments need Docker "
                "on this host."
            )
        return ""

    def _install_agent(self) -> None:
        path = reverse("agent_wheel_download", kwargs={"version": agent_version()})
        script = shell_script(INSTALL_SCRIPT, wheel_url=self.server_url + path)
        self._checked(script, timeout=INSTALL_TIMEOUT)

    def _join(self) -> None:
        job = self.job
        if job.created_by is None:
            raise StepFailed(_("the operator who started this onboarding no longer exists"))
        try:
            issued = join_token_create(
                operator=job.created_by,
                name=f"onboarding {job.name}"[:100],
                region=job.region,
                labels=job.labels,
                expires_at=timezone.now() + JOIN_TOKEN_LIFETIME,
                max_uses=1,
            )
        except ApplicationError as exc:
            raise StepFailed(str(exc.message)) from exc
        self.progress.secrets.append(issued.plaintext)
        script = shell_script(JOIN_SCRIPT, server_url=self.server_url, name=job.name)
        try:
            self._checked(script, stdin=issued.plaintext + "\n")
        except StepFailed:
            join_token_revoke(operator=job.created_by, join_token=issued.join_token)
            raise

    def _start(self) -> None:
        self._checked(START_SCRIPT)

    def _verify(self) -> None:
        deadline = time.monotonic() + VERIFY_TIMEOUT
        while True:
            host = Host.objects.filter(name=self.job.name, status=HostStatus.ONLINE).first()
            if host is not None:
                break
            if time.monotonic() > deadline:
                self.progress.output(_("The agent's last log lines:") + "\n")
                self._run(AGENT_LOG_TAIL)
                raise StepFailed(
                    _("the host did not come online within %(seconds)s s")
                    % {"seconds": VERIFY_TIMEOUT}
                )
            time.sleep(VERIFY_POLL)
        OnboardingJob.objects.filter(pk=self.job.pk).update(host=host)
        if not Host.objects.filter(address=self.job.address).exists():
            Host.objects.filter(pk=host.pk, address__isnull=True).update(address=self.job.address)
        self.progress.output(
            _("%(name)s is online (host %(id)s).") % {"name": host.name, "id": host.pk} + "\n"
        )


# Services ----------------------------------------------------------------------------------


def onboarding_job_list() -> QuerySet[OnboardingJob]:
    return OnboardingJob.objects.select_related("region", "host", "created_by")


def _clean_server_url(server_url: str) -> str:
    server_url = server_url.strip().rstrip("/")
    parts = urlsplit(server_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValidationError.for_field(
            "server_url", _("Give the http:// or https:// address hosts reach this server at.")
        )
    return server_url


@transaction.atomic
def onboarding_create(
    *,
    operator: User,
    name: str,
    address: str,
    username: str,
    port: int = 22,
    password: str = "",
    private_key: str = "",
    passphrase: str = "",
    region: Region | None = None,
    labels: dict[str, str] | str | None = None,
) -> OnboardingJob:
    """Start onboarding a server: its host key is read next (nothing authenticates yet) for
    an operator to confirm. Give a password or a private key, not both."""
    user_require_operator(operator)
    name, address, username = name.strip(), address.strip(), username.strip()
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = [_("A name is required.")]
    elif Host.objects.filter(name=name).exists():
        errors["name"] = [_("A host named “%(name)s” already exists.") % {"name": name}]
    if not address or any(character.isspace() for character in address):
        errors["address"] = [_("Give the server's host name or IP address.")]
    elif Host.objects.filter(address=address).exists():
        errors["address"] = [_("A host with this address already exists.")]
    if not 1 <= port <= 65535:
        errors["port"] = [_("A port is a number from 1 to 65535.")]
    if not username or any(character.isspace() for character in username):
        errors["username"] = [_("Give the user to sign in as.")]
    if bool(password) == bool(private_key.strip()):
        errors["password"] = [_("Give a password or a private key (one of them).")]
    if errors:
        raise ValidationError(fields=errors)
    if private_key.strip():
        private_key_load(private_key, passphrase)
    labels = labels_parse(labels) if isinstance(labels, str) else labels_validate(labels or {})
    secret = SshSecret(password=password, private_key=private_key.strip(), passphrase=passphrase)
    job = OnboardingJob.objects.create(
        name=name,
        address=address,
        port=port,
        username=username,
        auth_method=OnboardingAuth.PRIVATE_KEY if private_key.strip() else OnboardingAuth.PASSWORD,
        secret_encrypted=secret_encrypt(secret),
        region=region,
        labels=labels,
        created_by=operator,
    )
    audit_record(
        AuditAction.ONBOARDING_STARTED,
        actor=operator,
        target=job,
        details={"address": address, "port": port, "username": username},
    )
    from ..tasks import onboarding_scan_task

    transaction.on_commit(lambda: onboarding_scan_task.delay(job.pk))
    return job


def _in_language_of_creator(function):
    """Run a job's task in the language of the operator who started it: the steps' progress and
    errors are stored as text, for them to read."""

    @functools.wraps(function)
    def wrapper(job_id: int, *args, **kwargs):
        jobs = OnboardingJob.objects.filter(pk=job_id)
        language = jobs.values_list("created_by__language", flat=True).first()
        with translation.override(language or settings.LANGUAGE_CODE):
            return function(job_id, *args, **kwargs)

    return wrapper


@_in_language_of_creator
def onboarding_scan(job_id: int) -> str:
    """Read the server's host key for an operator to confirm. Nothing authenticates: the
    secret is not sent before the key is confirmed. The job's status afterwards."""
    job = OnboardingJob.objects.filter(pk=job_id).first()
    if job is None or job.status != S.PENDING:
        return job.status if job else ""
    try:
        connection = SshConnection(job.address, job.port)
    except CONNECT_ERRORS as exc:
        _transition(
            job.pk,
            S.PENDING,
            S.FAILED,
            step=CONNECT,
            error=step_error(CONNECT, connect_error_reason(exc)),
        )
        return S.FAILED
    try:
        key = connection.host_key()
    finally:
        connection.close()
    _transition(
        job.pk,
        S.PENDING,
        S.AWAITING_CONFIRMATION,
        host_key_type=key.get_name(),
        host_key_fingerprint=host_key_fingerprint(key),
    )
    return S.AWAITING_CONFIRMATION


@transaction.atomic
def onboarding_confirm(
    *, operator: User, job: OnboardingJob, fingerprint: str, server_url: str
) -> OnboardingJob:
    """The operator confirms the host key shown (``fingerprint``): the run starts, and the
    agent will reach this server at ``server_url``."""
    user_require_operator(operator)
    server_url = _clean_server_url(server_url)
    job = OnboardingJob.objects.select_for_update().get(pk=job.pk)
    if job.status != S.AWAITING_CONFIRMATION:
        raise Conflict(_("This onboarding is not waiting for a host key confirmation."))
    if fingerprint.strip() != job.host_key_fingerprint:
        raise ValidationError.for_field(
            "fingerprint",
            _("The host key changed since the page was shown: reload it and check again."),
        )
    _transition(job.pk, S.AWAITING_CONFIRMATION, S.RUNNING, host_key_confirmed=True)
    audit_record(
        AuditAction.ONBOARDING_HOST_KEY_CONFIRMED,
        actor=operator,
        target=job,
        details={"fingerprint": job.host_key_fingerprint},
    )
    from ..tasks import onboarding_run_task

    transaction.on_commit(lambda: onboarding_run_task.delay(job.pk, server_url))
    job.refresh_from_db()
    return job


@transaction.atomic
def onboarding_cancel(*, operator: User, job: OnboardingJob) -> OnboardingJob:
    """Cancel before the run starts (a running job finishes or fails on its own)."""
    user_require_operator(operator)
    for source in (S.PENDING, S.AWAITING_CONFIRMATION):
        if _transition(job.pk, source, S.CANCELLED, error=_("Cancelled by an operator.")):
            job.refresh_from_db()
            audit_record(AuditAction.ONBOARDING_CANCELLED, actor=operator, target=job)
            return job
    raise Conflict(_("Only an onboarding that has not started running can be cancelled."))


@_in_language_of_creator
def onboarding_run(job_id: int, server_url: str) -> str:
    """Run every step against a confirmed job's server; the job's status afterwards."""
    job = OnboardingJob.objects.select_related("created_by", "region").filter(pk=job_id).first()
    if job is None or job.status != S.RUNNING:
        return job.status if job else ""
    if job.steps:  # a redelivered task: its first run was interrupted half-way
        reason = _("the run was interrupted (its worker stopped); start a new onboarding")
        _transition(job.pk, S.RUNNING, S.FAILED, error=step_error(job.step or CONNECT, reason))
        return S.FAILED
    run = _Run(job, server_url)
    try:
        run.execute()
    except StepFailed as failure:
        return _run_failed(run, failure.reason)
    except Exception as exc:
        current = run.progress.current
        logger.exception("onboarding %s: step %s crashed", job.pk, current and current["name"])
        return _run_failed(run, _("unexpected error (%(error)s)") % {"error": type(exc).__name__})
    finally:
        run.close()
    if _transition(job.pk, S.RUNNING, S.SUCCEEDED, error=""):
        _audit_outcome(job, AuditAction.ONBOARDING_SUCCEEDED)
    return S.SUCCEEDED


def _audit_outcome(job: OnboardingJob, action: str, **details) -> None:
    """The run happens in a worker, on behalf of the operator who started it."""
    audit_record(action, actor=job.created_by, target=job, details=details)


def _run_failed(run: _Run, reason: str) -> str:
    current = run.progress.current
    name = current["name"] if current else CONNECT
    run.progress.finish(STEP_FAILED)
    if _transition(run.job.pk, S.RUNNING, S.FAILED, step=name, error=step_error(name, reason)):
        _audit_outcome(run.job, AuditAction.ONBOARDING_FAILED, step=name, reason=str(reason)[:500])
    return S.FAILED


def onboarding_expire_stale(now=None) -> int:
    """Jobs nobody moves on end, so their secret does not stay: a scan that never ran, a host
    key nobody confirmed, a run whose worker died. How many ended."""
    now = now or timezone.now()
    rules = (
        (
            S.PENDING,
            S.FAILED,
            PENDING_TIMEOUT,
            _("the host key was never read: is a worker running?"),
        ),
        (
            S.AWAITING_CONFIRMATION,
            S.CANCELLED,
            CONFIRMATION_TIMEOUT,
            _("nobody confirmed the host key in time"),
        ),
        (S.RUNNING, S.FAILED, RUNNING_TIMEOUT, _("the run stopped making progress")),
    )
    ended = 0
    for source, target, timeout, reason in rules:
        stale = OnboardingJob.objects.filter(status=source, updated_at__lt=now - timeout)
        for job in stale.only("pk", "step"):
            error = step_error(job.step, reason) if job.step else reason
            ended += _transition(job.pk, source, target, error=error)
    return ended
