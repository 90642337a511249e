"""Operator pages of join tokens: issue one (shown once, with its join command), revoke one."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from remotegpu.core.errors import ApplicationError
from remotegpu.core.portal import apply_error_to_form, service_messages

from .. import selectors
from ..forms.join_tokens import JoinTokenForm
from ..links import join_command
from ..models import JoinToken
from ..services import join as join_services
from .base import operator_required, paginate


@operator_required
def join_token_list(request):
    form = JoinTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            issued = join_services.join_token_create(
                operator=request.user,
                name=data["name"],
                region=data["region"],
                labels=data["labels"],
                expires_at=timezone.now() + timedelta(hours=data["expires_in_hours"]),
                max_uses=data["max_uses"],
            )
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            return render(
                request,
                "machines/join_token_created.html",
                {
                    "join_token": issued.join_token,
                    "plaintext": issued.plaintext,
                    "join_command": join_command(request, issued.plaintext),
                },
            )
    return render(
        request,
        "machines/join_token_list.html",
        {
            "form": form,
            "page": paginate(request, selectors.join_token_list()),
            "now": timezone.now(),
        },
    )


@operator_required
@require_POST
def join_token_revoke(request, pk):
    join_token = get_object_or_404(JoinToken, pk=pk)
    with service_messages(request):
        join_services.join_token_revoke(operator=request.user, join_token=join_token)
        messages.success(request, _("Join token %(name)s revoked.") % {"name": join_token.name})
    return redirect("machines:join_token_list")
