import pytest


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate limits and other cached state never leak from one test into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
