"""Portal pages of accounts. Thin: forms in, services called, templates out."""

from __future__ import annotations

import csv

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from remotegpu.core.errors import ApplicationError, NotFound
from remotegpu.core.forms import style_widgets
from remotegpu.core.portal import apply_error_to_form, service_messages

from . import selectors
from .choices import MANAGER_ROLES
from .filters import AuditEventFilter
from .forms import (
    APITokenForm,
    InvitationForm,
    OrganizationForm,
    OrganizationRenameForm,
    ProfileForm,
    RoleForm,
    SSHKeyForm,
)
from .services import invitations as invitation_services
from .services import notifications as notification_services
from .services import organizations as organization_services
from .services import ssh_keys as ssh_key_services
from .services import tokens as token_services
from .services.ssh_keys import ssh_keygen_line
from .services.users import user_set_language

PAGE_SIZE = 50
INVITATION_SESSION_KEY = "invitation_key"


def _current_organization(request):
    if request.organization is None:
        raise Http404(_("You are not a member of any organisation."))
    return request.organization


def _is_manager(request) -> bool:
    return request.membership_role in MANAGER_ROLES or request.user.is_staff


def _page(request, queryset):
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


@require_POST
def language_set(request):
    """Django's language switch, which also remembers the choice for a signed-in user: their next
    browser starts in it, and their e-mails and notifications are written in it."""
    response = set_language(request)
    if request.user.is_authenticated:
        user_set_language(request.user, request.POST.get("language", ""))
    return response


@login_required
def dashboard(request):
    organization = request.organization
    context = {"organization": organization}
    if organization is not None:
        context["figures"] = selectors.dashboard_figures(organization)
        context["my_tokens"] = (
            selectors.token_list(request.user).filter(revoked_at__isnull=True).count()
        )
        context["my_ssh_keys"] = selectors.ssh_key_list(request.user).count()
        if _is_manager(request):
            context["recent_events"] = selectors.audit_event_list_for_user(request.user).filter(
                organization=organization
            )[:8]
    context["pending_invitations"] = selectors.invitation_list_pending_for_user(request.user)
    return render(request, "accounts/dashboard.html", context)


@login_required
def profile(request):
    form = ProfileForm(request.POST or None, initial={"name": request.user.name})
    if request.method == "POST" and form.is_valid():
        request.user.name = form.cleaned_data["name"]
        request.user.save(update_fields=["name"])
        messages.success(request, _("Profile saved."))
        return redirect("accounts:profile")
    return render(request, "accounts/profile.html", {"form": form})


# Organisations -----------------------------------------------------------------------------


@login_required
def organization_list(request):
    organizations = selectors.organization_list_for_user(request.user).filter(
        memberships__user=request.user
    )
    return render(request, "accounts/organization_list.html", {"organizations": organizations})


@login_required
def organization_create(request):
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization = organization_services.organization_create(
                user=request.user, **form.cleaned_data
            )
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(
                request, _("Organisation %(name)s created.") % {"name": organization.name}
            )
            return redirect("accounts:dashboard")
    return render(request, "accounts/organization_form.html", {"form": form})


@login_required
@require_POST
def organization_switch(request, slug):
    organization = selectors.organization_get_for_user(request.user, slug)
    if organization is None:
        raise Http404
    with service_messages(request):
        organization_services.organization_switch(user=request.user, organization=organization)
    target = request.POST.get("next") or ""
    if not target.startswith("/") or target.startswith("//"):
        target = "accounts:dashboard"
    return redirect(target)


@login_required
def organization_settings(request):
    organization = _current_organization(request)
    form = OrganizationRenameForm(request.POST or None, initial={"name": organization.name})
    if request.method == "POST" and form.is_valid():
        try:
            organization_services.organization_update(
                actor=request.user, organization=organization, name=form.cleaned_data["name"]
            )
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(request, _("Organisation saved."))
            return redirect("accounts:organization_settings")
    return render(
        request,
        "accounts/organization_settings.html",
        {"organization": organization, "form": form, "can_manage": _is_manager(request)},
    )


# Members and invitations -------------------------------------------------------------------


@login_required
def member_list(request):
    organization = _current_organization(request)
    can_manage = _is_manager(request)
    context = {
        "organization": organization,
        "memberships": selectors.membership_list(organization),
        "can_manage": can_manage,
        "invitation_form": InvitationForm(),
        "roles": RoleForm.base_fields["role"].choices,
    }
    if can_manage:
        context["invitations"] = selectors.invitation_list(organization).filter(
            status__in=["pending", "expired"]
        )
    return render(request, "accounts/member_list.html", context)


def _membership_in_current(request, pk):
    organization = _current_organization(request)
    return get_object_or_404(selectors.membership_list(organization), pk=pk)


@login_required
@require_POST
def member_role(request, pk):
    membership = _membership_in_current(request, pk)
    form = RoleForm(request.POST)
    if form.is_valid():
        with service_messages(request):
            organization_services.membership_change_role(
                actor=request.user, membership=membership, role=form.cleaned_data["role"]
            )
            messages.success(request, _("Role changed."))
    return redirect("accounts:member_list")


@login_required
@require_POST
def member_remove(request, pk):
    membership = _membership_in_current(request, pk)
    leaving = membership.user_id == request.user.pk
    try:
        organization_services.membership_remove(actor=request.user, membership=membership)
    except ApplicationError as error:
        messages.error(request, str(error.message))
        return redirect("accounts:member_list")
    if leaving:
        messages.success(request, _("You left %(name)s.") % {"name": membership.organization.name})
        return redirect("accounts:dashboard")
    messages.success(request, _("Member removed."))
    return redirect("accounts:member_list")


@login_required
@require_POST
def invitation_create(request):
    organization = _current_organization(request)
    form = InvitationForm(request.POST)
    if form.is_valid():
        try:
            invitation_services.invitation_create(
                actor=request.user, organization=organization, **form.cleaned_data
            )
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(
                request, _("Invitation sent to %(email)s.") % {"email": form.cleaned_data["email"]}
            )
            return redirect("accounts:member_list")
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)
    return redirect("accounts:member_list")


def _invitation_in_current(request, pk):
    organization = _current_organization(request)
    return get_object_or_404(selectors.invitation_list(organization), pk=pk)


@login_required
@require_POST
def invitation_resend(request, pk):
    invitation = _invitation_in_current(request, pk)
    with service_messages(request):
        invitation_services.invitation_resend(actor=request.user, invitation=invitation)
        messages.success(request, _("Invitation sent again."))
    return redirect("accounts:member_list")


@login_required
@require_POST
def invitation_revoke(request, pk):
    invitation = _invitation_in_current(request, pk)
    with service_messages(request):
        invitation_services.invitation_revoke(actor=request.user, invitation=invitation)
        messages.success(request, _("Invitation revoked."))
    return redirect("accounts:member_list")


def invitation_respond(request, key):
    try:
        invitation = invitation_services.invitation_get_by_key(key)
    except NotFound as error:
        raise Http404(str(error.message)) from error
    if not request.user.is_authenticated:
        # Remembered so that an invitation-only installation still lets this person sign up.
        request.session[INVITATION_SESSION_KEY] = key
        return redirect_to_login(request.get_full_path())
    if request.method == "POST":
        try:
            if request.POST.get("decision") == "accept":
                invitation_services.invitation_accept(user=request.user, key=key)
                messages.success(
                    request,
                    _("Welcome to %(name)s.") % {"name": invitation.organization.name},
                )
                return redirect("accounts:dashboard")
            invitation_services.invitation_decline(user=request.user, key=key)
            messages.info(request, _("Invitation declined."))
            return redirect("accounts:dashboard")
        except ApplicationError as error:
            messages.error(request, str(error.message))
    wrong_recipient = invitation.email.lower() != request.user.email.lower()
    return render(
        request,
        "accounts/invitation_respond.html",
        {"invitation": invitation, "wrong_recipient": wrong_recipient},
    )


# API tokens --------------------------------------------------------------------------------


@login_required
def token_list(request):
    return render(
        request, "accounts/token_list.html", {"tokens": selectors.token_list(request.user)}
    )


@login_required
def token_create(request):
    form = APITokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = token_services.token_create(user=request.user, **form.cleaned_data)
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            # The plaintext is rendered once, in this response, and never stored.
            return render(
                request,
                "accounts/token_created.html",
                {"token": issued.token, "plaintext": issued.plaintext},
            )
    return render(request, "accounts/token_form.html", {"form": form})


@login_required
@require_POST
def token_revoke(request, pk):
    token = get_object_or_404(selectors.token_list(request.user), pk=pk)
    token_services.token_revoke(actor=request.user, token=token)
    messages.success(request, _("Token %(name)s revoked.") % {"name": token.name})
    return redirect("accounts:token_list")


# SSH keys ----------------------------------------------------------------------------------


@login_required
def ssh_key_list(request):
    keys = [(key, ssh_keygen_line(key)) for key in selectors.ssh_key_list(request.user)]
    return render(request, "accounts/ssh_key_list.html", {"keys": keys, "form": SSHKeyForm()})


@login_required
def ssh_key_create(request):
    form = SSHKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            key = ssh_key_services.ssh_key_add(user=request.user, **form.cleaned_data)
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(request, _("SSH key %(name)s added.") % {"name": key.name})
            return redirect("accounts:ssh_key_list")
    return render(request, "accounts/ssh_key_form.html", {"form": form})


@login_required
@require_POST
def ssh_key_delete(request, pk):
    key = get_object_or_404(selectors.ssh_key_list(request.user), pk=pk)
    ssh_key_services.ssh_key_delete(actor=request.user, key=key)
    messages.success(request, _("SSH key %(name)s removed.") % {"name": key.name})
    return redirect("accounts:ssh_key_list")


# Audit log ---------------------------------------------------------------------------------


def _audit_queryset(request):
    queryset = selectors.audit_event_list_for_user(request.user)
    if not request.user.is_staff and not _is_manager(request):
        raise Http404
    event_filter = AuditEventFilter(request.GET or None, queryset=queryset)
    style_widgets(event_filter.form)
    return event_filter


@login_required
def audit_list(request):
    event_filter = _audit_queryset(request)
    return render(
        request,
        "accounts/audit_list.html",
        {"filter": event_filter, "page": _page(request, event_filter.qs)},
    )


class _Echo:
    def write(self, value):
        return value


@login_required
def audit_export(request):
    event_filter = _audit_queryset(request)
    writer = csv.writer(_Echo())
    header = [
        "time",
        "actor",
        "organization",
        "action",
        "target_type",
        "target_id",
        "target",
        "ip",
        "user_agent",
        "details",
    ]

    def rows():
        yield writer.writerow(header)
        for event in event_filter.qs.iterator(chunk_size=1000):
            yield writer.writerow(
                [
                    event.created_at.isoformat(),
                    event.actor_email,
                    event.organization.slug if event.organization else "",
                    event.action,
                    event.target_type,
                    event.target_id,
                    event.target_repr,
                    event.ip or "",
                    event.user_agent,
                    event.details,
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    return response


# Notifications -----------------------------------------------------------------------------


@login_required
def notification_list(request):
    notifications = selectors.notification_list(request.user)
    return render(
        request, "accounts/notification_list.html", {"page": _page(request, notifications)}
    )


@login_required
@require_POST
def notification_read(request, pk):
    notification = get_object_or_404(selectors.notification_list(request.user), pk=pk)
    notification_services.notification_mark_read(request.user, [notification.pk])
    if request.htmx:
        # Swap the row in place; the bell's count follows over the WebSocket.
        notification.refresh_from_db()
        return render(
            request, "accounts/partials/notification_item.html", {"notification": notification}
        )
    if notification.url.startswith("/") and not notification.url.startswith("//"):
        return redirect(notification.url)
    return redirect("accounts:notification_list")


@login_required
@require_POST
def notification_read_all(request):
    notification_services.notification_mark_all_read(request.user)
    return redirect("accounts:notification_list")
