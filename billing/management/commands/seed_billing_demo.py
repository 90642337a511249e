from django.core.management.base import BaseCommand

from billing.services.demo import billing_demo_seed


class Command(BaseCommand):
    help = "Give the demo a price list (if it has none) and its organisation credit (once)."

    def add_arguments(self, parser):
        parser.add_argument("--organization", default="demo-lab", help="its slug")

    def handle(self, *args, **options):
        seeded = billing_demo_seed(options["organization"])
        self.stdout.write(f"Prices: {seeded['prices']}; demo balance: {seeded['balance']}")
