import pytest

from accounts.choices import Role
from accounts.tests.factories import MembershipFactory
from environments.models import GPUAssignment
from machines.models import AgentCommand
from machines.services.commands import command_finish

from .factories import ImageFactory, SpecFactory, host_with_gpus


@pytest.fixture
def host(db):
    return host_with_gpus(4)


@pytest.fixture
def spec(db):
    return SpecFactory()


@pytest.fixture
def image(db):
    return ImageFactory()


@pytest.fixture
def customer(organization):
    return MembershipFactory(organization=organization, role=Role.MEMBER).user


def latest_command(environment) -> AgentCommand:
    return AgentCommand.objects.filter(payload__environment_id=environment.pk).latest("created_at")


def answer(command: AgentCommand, *, ok: bool = True, result: dict | None = None, error: str = ""):
    """The agent's result for ``command``, as the consumer hands it to the service."""
    command_finish(command.host_id, str(command.pk), ok=ok, result=result or {}, error=error)


def run_succeeds(environment, at: float = 1000.0):
    command = latest_command(environment)
    answer(command, result={"container_id": "c" * 64, "state": "running", "time": at})
    environment.refresh_from_db()
    return command


def holds_gpus(environment) -> bool:
    return GPUAssignment.objects.filter(environment=environment, released_at__isnull=True).exists()
