from django.core.management.base import BaseCommand

from accounts.services.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo operator, organisation, owner and member (idempotent)."

    def handle(self, *args, **options):
        credentials = demo_seed()
        password = credentials["password"]
        self.stdout.write(self.style.SUCCESS(f"Demo logins (password: {password})"))
        for role in ("operator", "owner", "member"):
            self.stdout.write(f"  {role:<9} {credentials[role]}")
