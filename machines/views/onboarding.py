"""Operator pages for onboarding a server over SSH, and the agent's wheel that such a server
downloads. Thin: forms in, services called, templates out."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_safe

from remotegpu.core.errors import ApplicationError, NotFound
from remotegpu.core.pages import ScopedDetailView, ServiceActionView, ServiceFormView
from remotegpu.core.portal import apply_error_to_form

from ..choices import OnboardingStatus
from ..forms.onboarding import OnboardingConfirmForm, OnboardingForm
from ..links import server_url
from ..models import OnboardingJob
from ..services import agent_package
from ..services import onboarding as onboarding_services
from .base import operator_required, paginate

LIVE_STATES = frozenset(
    {OnboardingStatus.PENDING, OnboardingStatus.AWAITING_CONFIRMATION, OnboardingStatus.RUNNING}
)


def progress_context(job: OnboardingJob) -> dict:
    """Every step of a run, recorded or still to come, ready for the page."""
    recorded = {step.get("name"): step for step in job.steps if isinstance(step, dict)}
    steps = []
    for name in onboarding_services.STEPS:
        step = recorded.get(name, {})
        started = parse_datetime(step.get("started_at") or "")
        finished = parse_datetime(step.get("finished_at") or "")
        steps.append(
            {
                "name": name,
                "label": onboarding_services.STEP_LABELS[name],
                "status": step.get("status", "waiting"),
                "output": step.get("output", ""),
                "warning": step.get("warning", ""),
                "seconds": (finished - started).total_seconds() if started and finished else None,
            }
        )
    return {"job": job, "steps": steps, "live": job.status in LIVE_STATES}


def render_progress(job: OnboardingJob) -> str:
    """The live part of the job's page (also pushed over the job's WebSocket)."""
    return render_to_string("machines/partials/onboarding_progress.html", progress_context(job))


class OnboardingListView(ServiceFormView):
    """The jobs, and the form that starts one (the job's page then shows the host key)."""

    operator_only = True
    template_name = "machines/onboarding_list.html"
    form_class = OnboardingForm
    success_message = gettext_lazy("Reading the host key of %(address)s…")

    def get_context_data(self, **kwargs):
        page = paginate(self.request, onboarding_services.onboarding_job_list())
        return {**super().get_context_data(**kwargs), "page": page}

    def perform(self, form):
        return onboarding_services.onboarding_create(
            operator=self.request.user, **form.cleaned_data
        )

    def get_success_url(self):
        return reverse("machines:onboarding_detail", args=[self.result.pk])


class OnboardingPageMixin:
    operator_only = True

    def scoped_queryset(self):
        return onboarding_services.onboarding_job_list()


class OnboardingDetailView(OnboardingPageMixin, ScopedDetailView):
    template_name = "machines/onboarding_detail.html"
    context_object_name = "job"

    def get_context_data(self, confirm_form=None, **kwargs):
        job = self.object
        if confirm_form is None and job.status == OnboardingStatus.AWAITING_CONFIRMATION:
            confirm_form = OnboardingConfirmForm(
                initial={
                    "fingerprint": job.host_key_fingerprint,
                    "server_url": server_url(self.request),
                }
            )
        return {
            **super().get_context_data(**kwargs),
            **progress_context(job),
            "confirm_form": confirm_form,
        }


class OnboardingConfirmView(OnboardingDetailView):
    """The operator's yes to the host key shown. A refusal shows the page again (400) while
    there is still something to confirm, else says why on the page it sends back to."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        self.object = job = self.get_object()
        form = OnboardingConfirmForm(request.POST)
        if form.is_valid():
            try:
                onboarding_services.onboarding_confirm(
                    operator=request.user,
                    job=job,
                    fingerprint=form.cleaned_data["fingerprint"],
                    server_url=form.cleaned_data["server_url"],
                )
            except ApplicationError as error:
                apply_error_to_form(form, error)
            else:
                messages.success(
                    request, _("Host key confirmed: onboarding %(name)s.") % {"name": job.name}
                )
                return redirect("machines:onboarding_detail", pk=job.pk)
        job.refresh_from_db()
        if job.status != OnboardingStatus.AWAITING_CONFIRMATION:
            messages.error(request, " ".join(form.non_field_errors()) or _("Nothing to confirm."))
            return redirect("machines:onboarding_detail", pk=job.pk)
        return self.render_to_response(self.get_context_data(confirm_form=form), status=400)


@operator_required
def onboarding_progress(request, pk):
    """The live part alone, for pages that poll; a page rendered for another status reloads."""
    job = get_object_or_404(onboarding_services.onboarding_job_list(), pk=pk)
    shown = request.GET.get("status")
    if shown and shown != job.status:
        response = HttpResponse(status=204)
        response["HX-Refresh"] = "true"
        return response
    return HttpResponse(render_progress(job))


class OnboardingCancelView(OnboardingPageMixin, ServiceActionView):
    success_message = gettext_lazy("Onboarding cancelled; its secret was wiped.")

    def perform(self, obj):
        return onboarding_services.onboarding_cancel(operator=self.request.user, job=obj)

    def get_success_url(self, obj):
        return reverse("machines:onboarding_detail", args=[obj.pk])


@require_safe
def agent_wheel_download(request, version):
    """The agent's wheel, for ``pip install`` on a host being onboarded. Public: it holds no
    secret, and the host has no account to sign in with."""
    try:
        wheel = agent_package.agent_wheel_get(version)
    except NotFound as error:
        raise Http404(str(error.message)) from error
    except agent_package.AgentBuildError as error:
        return HttpResponse(str(error.message), status=503, content_type="text/plain")
    return FileResponse(
        wheel.path.open("rb"),
        as_attachment=True,
        filename=wheel.filename,
        content_type="application/octet-stream",
    )
