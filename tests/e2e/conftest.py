"""Real Chromium, driven by Playwright for Python, against pytest-django's live server (WSGI)
or, for pages that need WebSockets or a real agent, against a real daphne process."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from remotegpu.core.testing import require_executable
from tests.integration import conftest as integration

# The real daphne process of the integration tests, for the pages that need it.
process_env = integration.process_env
daphne_server = integration.daphne_server

# Playwright's sync API keeps an event loop running in the test thread, and Django refuses ORM
# calls from a thread with a running loop unless told that this is deliberate.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Short enough that a broken step fails fast, long enough for a loaded CI machine.
STEP_TIMEOUT_MS = 15_000


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell whether the test failed, and
    add what running product processes printed to a failing test's report."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    integration.attach_process_output(report)
    return report


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium (Debian's build) per test module.

    Not per session: Playwright's sync API keeps an event loop running in this thread while it
    is started, which would break later tests that call ``asyncio.run``.
    """
    executable = require_executable("chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(
        executable_path=executable, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def artifacts_dir(request):
    path = request.config.rootpath / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def _page_opener(request, chromium, base_url: str, artifacts_dir) -> Iterator:
    contexts = []

    def open_page():
        context = chromium.new_context(base_url=base_url, locale="en-GB")
        context.set_default_timeout(STEP_TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page

    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        for number, context in enumerate(contexts, start=1):
            for page in context.pages:
                page.screenshot(path=artifacts_dir / f"{name}-failure-{number}.png", full_page=True)
    for context in contexts:
        context.close()


@pytest.fixture
def new_page(request, chromium, live_server, transactional_db, artifacts_dir):
    """``new_page()``: a page in a fresh browser context (its own cookies and storage).

    Relative URLs resolve against the live server. When the test fails, every page it opened
    is saved as a screenshot in ``test-artifacts/``.
    """
    with _page_opener(request, chromium, live_server.url, artifacts_dir) as open_page:
        yield open_page


@pytest.fixture
def new_daphne_page(request, chromium, daphne_server, transactional_db, artifacts_dir):
    """``new_daphne_page()``: as ``new_page()``, with relative URLs resolved against a real
    daphne process (HTTP and WebSockets, static files through WhiteNoise) on the test database.
    """
    with _page_opener(request, chromium, daphne_server.base_url, artifacts_dir) as open_page:
        yield open_page
