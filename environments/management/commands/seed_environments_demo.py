from django.core.management.base import BaseCommand

from environments.services.demo import environment_demo_seed


class Command(BaseCommand):
    help = "Create the demo specs and, given its reference, the demo image (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--gpu-model", default="NVIDIA A100-SXM4-80GB")
        parser.add_argument("--image", default="", help="the demo image's reference")

    def handle(self, *args, **options):
        seeded = environment_demo_seed(
            gpu_model=options["gpu_model"], image_reference=options["image"] or None
        )
        names = ", ".join(spec.name for spec in seeded["specs"])
        self.stdout.write(f"Demo specs: {names}")
        if seeded["image"] is not None:
            self.stdout.write(f"Demo image: {seeded['image'].reference}")
