from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class EnvironmentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "environments"
    verbose_name = _("Environments")

    def ready(self):
        # Registers what the fleet tells this app (command outcomes, progress, inventories), and
        # what the hosts' SSH gateways may open, and what billing meters.
        from . import selectors  # noqa: F401
        from .services import access, billing, reconciliation, results  # noqa: F401
