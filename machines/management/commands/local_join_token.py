from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from machines.models import Region
from machines.services.join import join_token_create


class Command(BaseCommand):
    help = (
        "Mint a single-use join token for the agent `make run` starts on this machine and "
        "print it (the only output). Needs an operator: run seed_demo or createsuperuser first."
    )

    def handle(self, *args, **options):
        operator = get_user_model().objects.filter(is_staff=True, is_active=True).first()
        if operator is None:
            raise CommandError("No operator exists; run `manage.py seed_demo` first.")
        region, _ = Region.objects.get_or_create(
            slug="local", defaults={"name": "Local", "location": "this machine"}
        )
        issued = join_token_create(
            operator=operator,
            name="make run local agent",
            region=region,
            labels={"demo": "true"},
            expires_at=timezone.now() + timedelta(minutes=10),
        )
        self.stdout.write(issued.plaintext)
