"""Wiring only: allauth and Django sign-in signals are recorded through the audit service."""

from allauth.account.signals import password_changed, password_reset, user_signed_up
from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .choices import AuditAction
from .services.audit import audit_record
from .services.organizations import organization_create_personal


@receiver(user_signed_up)
def on_signed_up(sender, request, user, **kwargs):
    organization_create_personal(user)
    audit_record(AuditAction.SIGNUP, actor=user, organization=user.current_organization)


@receiver(user_logged_in)
def on_logged_in(sender, request, user, **kwargs):
    audit_record(AuditAction.LOGIN, actor=user)


@receiver(user_logged_out)
def on_logged_out(sender, request, user, **kwargs):
    if user is not None:
        audit_record(AuditAction.LOGOUT, actor=user)


@receiver(user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs):
    email = str(credentials.get("email") or credentials.get("username") or "")
    audit_record(AuditAction.LOGIN_FAILED, actor_email=email, details={"email": email[:254]})


@receiver(password_changed)
def on_password_changed(sender, request, user, **kwargs):
    audit_record(AuditAction.PASSWORD_CHANGED, actor=user)


@receiver(password_reset)
def on_password_reset(sender, request, user, **kwargs):
    audit_record(AuditAction.PASSWORD_RESET, actor=user)


@receiver(authenticator_added)
def on_mfa_added(sender, request, user, authenticator, **kwargs):
    audit_record(AuditAction.MFA_ADDED, actor=user, details={"type": authenticator.type})


@receiver(authenticator_removed)
def on_mfa_removed(sender, request, user, authenticator, **kwargs):
    audit_record(AuditAction.MFA_REMOVED, actor=user, details={"type": authenticator.type})


@receiver(authenticator_reset)
def on_mfa_reset(sender, request, user, authenticator, **kwargs):
    audit_record(AuditAction.MFA_RECOVERY_CODES, actor=user, details={"type": authenticator.type})
