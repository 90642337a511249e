from django.core.management.base import BaseCommand, CommandError

from billing.services.reconciliation import billing_reconcile


class Command(BaseCommand):
    help = "Recompute every balance from the ledger and every charge from the run intervals."

    def handle(self, *args, **options):
        run = billing_reconcile()
        self.stdout.write(
            f"checked {run.wallets_checked} wallets and {run.intervals_checked} intervals: "
            f"{len(run.differences)} differences"
        )
        for difference in run.differences:
            self.stdout.write(
                f"  {difference['check']} #{difference['id']}: "
                f"found {difference['found']}, expected {difference['expected']}"
            )
        if run.differences:
            raise CommandError("billing does not reconcile; operators were alerted")
