"""Customers' pages of whole-machine allocations, under ``/machines/`` (namespace
``my_machines``): the fleet's other pages are operators' (``/operator/``)."""

from django.urls import path

from ..views import allocations

app_name = "my_machines"

urlpatterns = [
    path("", allocations.MyMachineListView.as_view(), name="allocation_list"),
    path("<int:pk>/", allocations.MyMachineDetailView.as_view(), name="allocation_detail"),
]
