"""Operator pages for onboarding over SSH, under ``/operator/onboarding/`` (namespace
``machines``)."""

from django.urls import path

from ..views import onboarding as views

urlpatterns = [
    path("", views.onboarding_list, name="onboarding_list"),
    path("<int:pk>/", views.onboarding_detail, name="onboarding_detail"),
    path("<int:pk>/progress/", views.onboarding_progress, name="onboarding_progress"),
    path("<int:pk>/confirm/", views.onboarding_confirm, name="onboarding_confirm"),
    path("<int:pk>/cancel/", views.onboarding_cancel, name="onboarding_cancel"),
]
