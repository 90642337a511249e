"""Portal pages of accounts. Thin: forms in, services called, templates out."""

from __future__ import annotations

import csv

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from remotegpu.core.errors import ApplicationError, NotFound
from remotegpu.core.pages import ScopedListView, ServiceActionView, ServiceFormView
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

INVITATION_SESSION_KEY = "invitation_key"


def _current_organization(request):
    if request.organization is None:
        raise Http404(_("You are not a member of any organisation."))
    return request.organization


def _is_manager(request) -> bool:
    return request.membership_role in MANAGER_ROLES or request.user.is_staff


class CurrentOrganizationMixin:
    """Pages of the organisation the user works in: 404 to a user who belongs to none."""

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            self.organization = _current_organization(request)
        return super().dispatch(request, *args, **kwargs)


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


class OrganizationCreateView(ServiceFormView):
    template_name = "accounts/organization_form.html"
    form_class = OrganizationForm
    success_url = reverse_lazy("accounts:dashboard")

    def perform(self, form):
        return organization_services.organization_create(
            user=self.request.user, **form.cleaned_data
        )

    def get_success_message(self, cleaned_data):
        return _("Organisation %(name)s created.") % {"name": self.result.name}


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


class OrganizationSettingsView(CurrentOrganizationMixin, ServiceFormView):
    template_name = "accounts/organization_settings.html"
    form_class = OrganizationRenameForm
    success_url = reverse_lazy("accounts:organization_settings")
    success_message = gettext_lazy("Organisation saved.")

    def get_initial(self):
        return {"name": self.organization.name}

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "organization": self.organization,
            "can_manage": _is_manager(self.request),
        }

    def perform(self, form):
        organization_services.organization_update(
            actor=self.request.user,
            organization=self.organization,
            name=form.cleaned_data["name"],
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


class MemberRoleView(CurrentOrganizationMixin, ServiceActionView):
    success_url = reverse_lazy("accounts:member_list")

    def scoped_queryset(self):
        return selectors.membership_list(self.organization)

    def perform(self, obj):
        # A role the form's select does not offer changes nothing and says nothing.
        form = RoleForm(self.request.POST)
        if form.is_valid():
            organization_services.membership_change_role(
                actor=self.request.user, membership=obj, role=form.cleaned_data["role"]
            )
            messages.success(self.request, _("Role changed."))


@login_required
@require_POST
def member_remove(request, pk):
    """Removing oneself is leaving: the organisation's pages are no longer there to go back to."""
    organization = _current_organization(request)
    membership = get_object_or_404(selectors.membership_list(organization), pk=pk)
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


class InvitationCreateView(CurrentOrganizationMixin, ServiceFormView):
    """The invitation form of the members page: its errors are shown there, as messages."""

    http_method_names = ["post"]
    form_class = InvitationForm
    success_url = reverse_lazy("accounts:member_list")
    success_message = gettext_lazy("Invitation sent to %(email)s.")

    def perform(self, form):
        invitation_services.invitation_create(
            actor=self.request.user, organization=self.organization, **form.cleaned_data
        )

    def form_invalid(self, form):
        for errors in form.errors.values():
            for error in errors:
                messages.error(self.request, error)
        return HttpResponseRedirect(self.get_success_url())


class InvitationActionView(CurrentOrganizationMixin, ServiceActionView):
    success_url = reverse_lazy("accounts:member_list")

    def scoped_queryset(self):
        return selectors.invitation_list(self.organization)


class InvitationResendView(InvitationActionView):
    success_message = gettext_lazy("Invitation sent again.")

    def perform(self, obj):
        invitation_services.invitation_resend(actor=self.request.user, invitation=obj)


class InvitationRevokeView(InvitationActionView):
    success_message = gettext_lazy("Invitation revoked.")

    def perform(self, obj):
        invitation_services.invitation_revoke(actor=self.request.user, invitation=obj)


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


class TokenRevokeView(ServiceActionView):
    success_url = reverse_lazy("accounts:token_list")

    def scoped_queryset(self):
        return selectors.token_list(self.request.user)

    def perform(self, obj):
        token_services.token_revoke(actor=self.request.user, token=obj)

    def get_success_message(self, obj):
        return _("Token %(name)s revoked.") % {"name": obj.name}


# SSH keys ----------------------------------------------------------------------------------


@login_required
def ssh_key_list(request):
    keys = [(key, ssh_keygen_line(key)) for key in selectors.ssh_key_list(request.user)]
    return render(request, "accounts/ssh_key_list.html", {"keys": keys, "form": SSHKeyForm()})


class SSHKeyCreateView(ServiceFormView):
    template_name = "accounts/ssh_key_form.html"
    form_class = SSHKeyForm
    success_url = reverse_lazy("accounts:ssh_key_list")

    def perform(self, form):
        return ssh_key_services.ssh_key_add(user=self.request.user, **form.cleaned_data)

    def get_success_message(self, cleaned_data):
        return _("SSH key %(name)s added.") % {"name": self.result.name}


class SSHKeyDeleteView(ServiceActionView):
    success_url = reverse_lazy("accounts:ssh_key_list")

    def scoped_queryset(self):
        return selectors.ssh_key_list(self.request.user)

    def perform(self, obj):
        ssh_key_services.ssh_key_delete(actor=self.request.user, key=obj)

    def get_success_message(self, obj):
        return _("SSH key %(name)s removed.") % {"name": obj.name}


# Audit log ---------------------------------------------------------------------------------


def _audit_events(request):
    """The events this user may read; the log is for managers and operators only."""
    if not _is_manager(request):
        raise Http404
    return selectors.audit_event_list_for_user(request.user)


class AuditListView(ScopedListView):
    template_name = "accounts/audit_list.html"
    filterset_class = AuditEventFilter

    def scoped_queryset(self):
        return _audit_events(self.request)


class _Echo:
    def write(self, value):
        return value


@login_required
def audit_export(request):
    """Streamed, so that a year of events never sits in memory."""
    event_filter = AuditEventFilter(request.GET or None, queryset=_audit_events(request))
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


class NotificationListView(ScopedListView):
    template_name = "accounts/notification_list.html"

    def scoped_queryset(self):
        return selectors.notification_list(self.request.user)


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
