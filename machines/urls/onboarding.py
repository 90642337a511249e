"""Operator pages for onboarding over SSH, under ``/operator/onboarding/`` (namespace
``machines``)."""

from django.urls import path

from ..views import onboarding as views

urlpatterns = [
    path("", views.OnboardingListView.as_view(), name="onboarding_list"),
    path("<int:pk>/", views.OnboardingDetailView.as_view(), name="onboarding_detail"),
    path("<int:pk>/progress/", views.onboarding_progress, name="onboarding_progress"),
    path("<int:pk>/confirm/", views.OnboardingConfirmView.as_view(), name="onboarding_confirm"),
    path("<int:pk>/cancel/", views.OnboardingCancelView.as_view(), name="onboarding_cancel"),
]
