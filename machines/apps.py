from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MachinesConfig(AppConfig):
    name = "machines"
    verbose_name = _("Hosts and GPUs")

    def ready(self):
        # Registers what the hosts' answers to tenant commands mean for allocations.
        from .services import allocations  # noqa: F401
