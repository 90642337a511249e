from django.db import models
from django.utils.translation import gettext_lazy as _


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", _("Admin")
    MEMBER = "member", _("Member")


# Roles that may manage members, invitations and read the audit log.
MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class InvitationStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    ACCEPTED = "accepted", _("Accepted")
    DECLINED = "declined", _("Declined")
    REVOKED = "revoked", _("Revoked")
    EXPIRED = "expired", _("Expired")


class NotificationLevel(models.TextChoices):
    INFO = "info", _("Information")
    SUCCESS = "success", _("Success")
    WARNING = "warning", _("Warning")
    ERROR = "error", _("Error")


class AuditAction(models.TextChoices):
    LOGIN = "user.login", _("Signed in")
    LOGIN_FAILED = "user.login_failed", _("Failed sign-in")
    LOGOUT = "user.logout", _("Signed out")
    SIGNUP = "user.signup", _("Signed up")
    PASSWORD_CHANGED = "user.password_changed", _("Password changed")
    PASSWORD_RESET = "user.password_reset", _("Password reset")
    MFA_ADDED = "user.mfa_added", _("Two-factor method added")
    MFA_REMOVED = "user.mfa_removed", _("Two-factor method removed")
    MFA_RECOVERY_CODES = "user.mfa_recovery_codes", _("Recovery codes regenerated")
    USER_DISABLED = "user.disabled", _("User disabled")
    USER_ENABLED = "user.enabled", _("User enabled")
    TOKEN_CREATED = "token.created", _("API token created")
    TOKEN_REVOKED = "token.revoked", _("API token revoked")
    SSH_KEY_ADDED = "ssh_key.added", _("SSH key added")
    SSH_KEY_REMOVED = "ssh_key.removed", _("SSH key removed")
    ORGANIZATION_CREATED = "organization.created", _("Organisation created")
    ORGANIZATION_UPDATED = "organization.updated", _("Organisation updated")
    ORGANIZATION_DISABLED = "organization.disabled", _("Organisation disabled")
    ORGANIZATION_ENABLED = "organization.enabled", _("Organisation enabled")
    MEMBER_ADDED = "member.added", _("Member added")
    MEMBER_ROLE_CHANGED = "member.role_changed", _("Member role changed")
    MEMBER_REMOVED = "member.removed", _("Member removed")
    INVITATION_SENT = "invitation.sent", _("Invitation sent")
    INVITATION_RESENT = "invitation.resent", _("Invitation resent")
    INVITATION_REVOKED = "invitation.revoked", _("Invitation revoked")
    INVITATION_ACCEPTED = "invitation.accepted", _("Invitation accepted")
    INVITATION_DECLINED = "invitation.declined", _("Invitation declined")
    JOIN_TOKEN_CREATED = "join_token.created", _("Join token created")
    JOIN_TOKEN_REVOKED = "join_token.revoked", _("Join token revoked")
    HOST_JOINED = "host.joined", _("Host joined")
    HOST_IMPORTED = "host.imported", _("Hosts imported")
    HOST_STATUS_CHANGED = "host.status_changed", _("Host status changed")
    HOST_LABELS_CHANGED = "host.labels_changed", _("Host labels changed")
    HOST_CREDENTIAL_REVOKED = "host.credential_revoked", _("Host credential revoked")
    HOST_CREDENTIAL_ROTATED = "host.credential_rotated", _("Host credential rotated")
    ALERT_RULE_CREATED = "alert_rule.created", _("Alert rule created")
    ALERT_RULE_UPDATED = "alert_rule.updated", _("Alert rule updated")
    ALERT_RULE_DELETED = "alert_rule.deleted", _("Alert rule deleted")
    ALERT_ACKNOWLEDGED = "alert.acknowledged", _("Alert acknowledged")
    ONBOARDING_STARTED = "onboarding.started", _("Onboarding over SSH started")
    ONBOARDING_HOST_KEY_CONFIRMED = "onboarding.host_key_confirmed", _("Host key confirmed")
    ONBOARDING_CANCELLED = "onboarding.cancelled", _("Onboarding cancelled")
    ONBOARDING_SUCCEEDED = "onboarding.succeeded", _("Onboarding succeeded")
    ONBOARDING_FAILED = "onboarding.failed", _("Onboarding failed")
    REGION_CREATED = "region.created", _("Region created")
    REGION_UPDATED = "region.updated", _("Region updated")
    IMAGE_CREATED = "image.created", _("Image added")
    IMAGE_UPDATED = "image.updated", _("Image updated")
    IMAGE_PREPULL = "image.prepull", _("Image pre-pull requested")
    SPEC_CREATED = "spec.created", _("Spec added")
    SPEC_UPDATED = "spec.updated", _("Spec updated")
    REGISTRY_CREDENTIAL_SAVED = "registry_credential.saved", _("Registry credential saved")
    REGISTRY_CREDENTIAL_DELETED = "registry_credential.deleted", _("Registry credential deleted")
    ENVIRONMENT_CREATED = "environment.created", _("Environment created")
    ENVIRONMENT_STARTED = "environment.started", _("Environment started")
    ENVIRONMENT_STOPPED = "environment.stopped", _("Environment stopped")
    ENVIRONMENT_RESTARTED = "environment.restarted", _("Environment restarted")
    ENVIRONMENT_DELETED = "environment.deleted", _("Environment deleted")
    ENVIRONMENT_STATUS_CHANGED = "environment.status_changed", _("Environment status changed")
