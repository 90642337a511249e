import factory

from accounts.tests.factories import OrganizationFactory, UserFactory
from machines.tests.factories import GPUFactory, HostFactory

from ..models import Environment, Image, Spec

GPU_MODEL = "NVIDIA A100-SXM4-80GB"


class DockerHostFactory(HostFactory):
    """A host whose agent drives a Docker Engine: placement considers it."""

    docker_version = "20.10.24"
    gpu_backend = "fake"
    containers_known = True


def host_with_gpus(count: int = 4, model: str = GPU_MODEL, **host_fields):
    host = DockerHostFactory(**host_fields)
    for index in range(count):
        GPUFactory(host=host, index=index, model=model)
    return host


class ImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Image

    name = factory.Sequence(lambda n: f"PyTorch {n}")
    reference = factory.Sequence(lambda n: f"registry.example.com/ml/pytorch:2.{n}")
    framework = "PyTorch"
    cuda_version = "12.4"
    ports = factory.LazyFunction(lambda: [{"port": 8888, "role": "jupyter", "name": "Jupyter"}])


class SpecFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Spec

    name = factory.Sequence(lambda n: f"1x A100 #{n}")
    gpu_model = GPU_MODEL
    gpu_count = 1
    vcpu = 8
    memory_gib = 32
    disk_gib = 100


class EnvironmentFactory(factory.django.DjangoModelFactory):
    """A bare row (no placement): for lists, access checks and admin."""

    class Meta:
        model = Environment

    organization = factory.SubFactory(OrganizationFactory)
    created_by = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"env-{n}")
    spec = factory.SubFactory(SpecFactory)
    image = factory.SubFactory(ImageFactory)
    image_reference = factory.SelfAttribute("image.reference")
