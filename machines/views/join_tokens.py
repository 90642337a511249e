"""Operator pages of join tokens: issue one (shown once, with its join command), revoke one."""

from __future__ import annotations

from datetime import timedelta

from django.shortcuts import render
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _

from remotegpu.core.errors import ApplicationError
from remotegpu.core.pages import ServiceActionView
from remotegpu.core.portal import apply_error_to_form

from .. import selectors
from ..forms.join_tokens import JoinTokenForm
from ..links import join_command
from ..models import JoinToken
from ..services import join as join_services
from .base import operator_required, paginate


@operator_required
def join_token_list(request):
    """The tokens and the form to mint one; a minted token's page, answered to the POST itself,
    is the only place its secret is ever shown."""
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


class JoinTokenRevokeView(ServiceActionView):
    operator_only = True
    success_url = reverse_lazy("machines:join_token_list")

    def scoped_queryset(self):
        return JoinToken.objects.all()

    def perform(self, obj):
        join_services.join_token_revoke(operator=self.request.user, join_token=obj)

    def get_success_message(self, obj):
        return _("Join token %(name)s revoked.") % {"name": obj.name}
