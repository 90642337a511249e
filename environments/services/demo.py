"""The demo's catalogue (``make run``): specs that the local agent's GPUs fit, and a small
image that serves a page, so that a newcomer can start an environment at once."""

from __future__ import annotations

from django.db import transaction

from ..models import Image, Spec

DEMO_SERVE = (
    "mkdir -p /workspace/www && "
    "[ -f /workspace/www/index.html ] || echo 'Hello from your RemoteGPU environment' "
    "> /workspace/www/index.html; exec httpd -f -p 8080 -h /workspace/www"
)


@transaction.atomic
def environment_demo_seed(*, gpu_model: str, image_reference: str | None) -> dict[str, object]:
    """Idempotent: specs of one and two ``gpu_model`` GPUs and a CPU-only one, and, when the
    engine could build it, the demo image."""
    specs = [
        Spec.objects.update_or_create(
            name=name,
            defaults={
                "gpu_model": model,
                "gpu_count": count,
                "vcpu": vcpu,
                "memory_gib": memory,
                "disk_gib": 20,
                "description": description,
            },
        )[0]
        for name, model, count, vcpu, memory, description in (
            ("1 GPU demo", gpu_model, 1, 1, 1, "One GPU of the local demo host"),
            ("2 GPU demo", gpu_model, 2, 1, 1, "Two GPUs of the local demo host"),
            ("CPU only demo", "", 0, 1, 1, "No GPU: for data preparation"),
        )
    ]
    image = None
    if image_reference:
        image, _created = Image.objects.update_or_create(
            name="Demo web server",
            organization=None,
            defaults={
                "reference": image_reference,
                "description": "busybox serving /workspace/www on port 8080",
                "framework": "busybox",
                "command": ["sh", "-c", DEMO_SERVE],
                "ports": [{"port": 8080, "role": "http", "name": "web"}],
            },
        )
    return {"specs": specs, "image": image}
