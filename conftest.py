"""Fixtures shared by every test: people in organisations, and clients signed in as them."""

import pytest
from rest_framework.test import APIClient

from accounts.choices import Role
from accounts.services.tokens import token_create
from accounts.tests.factories import MembershipFactory, OperatorFactory, OrganizationFactory


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate limits and other cached state never leak from one test into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets a channel layer of its own. channels-redis keeps an asyncio lock per
    channel it receives on, and a lock still held when an earlier test's event loop closed
    belongs to that loop: the next test's receive on it fails ("bound to a different event
    loop"). A new layer has a new process channel, so new locks."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def organization(db):
    return OrganizationFactory()


@pytest.fixture
def owner(organization):
    return MembershipFactory(organization=organization, role=Role.OWNER).user


@pytest.fixture
def admin_user(organization):
    return MembershipFactory(organization=organization, role=Role.ADMIN).user


@pytest.fixture
def member(organization):
    return MembershipFactory(organization=organization, role=Role.MEMBER).user


@pytest.fixture
def other_organization(db):
    return OrganizationFactory()


@pytest.fixture
def outsider(other_organization):
    """Owner of another organisation: must never see anything of ``organization``."""
    return MembershipFactory(organization=other_organization, role=Role.OWNER).user


@pytest.fixture
def operator(db):
    return OperatorFactory()


@pytest.fixture
def default_alert_rules(db):
    """The rules a data migration gives every fleet. A transactional test flushes tables, and
    with them these rows, for the tests that come after it in the same database."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("machines.migrations.0004_default_alert_rules")
    migration.create_default_alert_rules(apps, None)


@pytest.fixture
def api_client():
    return APIClient()


def _token_client(user, *, write=True):
    client = APIClient()
    issued = token_create(user=user, name="test", write_enabled=write)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    return client


@pytest.fixture
def token_client_for():
    """``token_client_for(user, write=True)``: an API client authenticated by a fresh token."""
    return _token_client
