"""House rules that a reviewer would otherwise have to remember (STYLE.md).

- Dependencies point one way (rule 2), checked on the imports of every source file.
- Every model of the project has an admin an operator can search and filter.
- Every API route is in the OpenAPI schema, with every method it answers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import URLResolver, get_resolver
from django.utils.regex_helper import normalize
from drf_spectacular.generators import SchemaGenerator

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".venv", "static", "staticfiles", "media", "migrations", "node_modules"}

APPS = ("accounts", "machines", "environments", "billing", "tasks")
DJANGO_WORLD = {
    "django",
    "rest_framework",
    "channels",
    "channels_redis",
    "daphne",
    "allauth",
    "drf_spectacular",
    "django_filters",
    "django_htmx",
    "celery",
    "remotegpu",
}

# Where a module lives -> top-level packages it may not import. The chain is
# remotegpu.core <- accounts <- machines <- environments <- tasks; billing is told about usage
# by reference and imports none of the apps it bills; agent/ runs on GPU hosts without Django.
FORBIDDEN = {
    "remotegpu.core": {*APPS},
    "accounts": {"machines", "environments", "billing", "tasks"},
    "machines": {"environments", "billing", "tasks"},
    "environments": {"tasks"},
    "billing": {"machines", "environments", "tasks"},
    "agent": {*APPS, *DJANGO_WORLD},
}
# The shared base imports nothing of the wiring above it (settings, urls, asgi, celery), and
# neither do the apps: only the wiring imports the apps. An app's tests may drive the whole
# project through the wiring (the ASGI application, the Celery app).
CORE_MAY_IMPORT_FROM_PROJECT = ("remotegpu.core",)
# Of the agent's package (agent/remotegpu_agent), the server imports the message contract only.
AGENT_PACKAGE = "remotegpu_agent"
SERVER_MAY_IMPORT_FROM_AGENT = {AGENT_PACKAGE, f"{AGENT_PACKAGE}.protocol"}


def _source_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in parts[:-1]):
            continue
        files.append(path)
    return sorted(files)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of the modules ``source`` (the module ``module``) imports."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            names.add(prefix)
            # ``from package import module`` imports the module too.
            names.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _scope(module: str) -> str | None:
    for scope in sorted(FORBIDDEN, key=len, reverse=True):
        if module == scope or module.startswith(scope + "."):
            return scope
    return None


def forbidden_import(module: str, name: str) -> bool:
    """Whether ``module`` may not import ``name`` under the rules above."""
    scope = _scope(module)
    if scope is None:
        return False
    top = name.split(".")[0]
    if top in FORBIDDEN[scope]:
        return True
    if scope != "agent" and top == AGENT_PACKAGE:
        return name not in SERVER_MAY_IMPORT_FROM_AGENT
    if top == "remotegpu" and scope in {"remotegpu.core", *APPS}:
        is_app_test = scope in APPS and module.startswith(f"{scope}.tests")
        return not (name.startswith(CORE_MAY_IMPORT_FROM_PROJECT) or is_app_test)
    return False


def _violations() -> list[str]:
    violations = []
    for path in _source_files():
        module = _module_name(path)
        scope = _scope(module)
        if scope is None:
            continue
        imports = imported_modules(path.read_text(), module, is_package=path.name == "__init__.py")
        for name in sorted(imports):
            if forbidden_import(module, name):
                violations.append(f"{path.relative_to(ROOT)} imports {name} ({scope} may not)")
    return violations


def test_dependencies_point_one_way():
    scanned = {_scope(_module_name(path)) for path in _source_files()}
    assert {"remotegpu.core", "accounts", "machines", "agent"} <= scanned, "the scan missed apps"
    assert _violations() == []


@pytest.mark.parametrize(
    ("module", "name", "forbidden"),
    [
        ("machines.services.hosts", "accounts.services.audit", False),
        ("machines.services.hosts", "remotegpu.core.errors", False),
        ("machines.consumers.agent", "remotegpu_agent.protocol", False),
        ("machines.consumers.agent", "remotegpu_agent", False),
        ("machines.consumers.agent", "remotegpu_agent.client", True),
        ("remotegpu.core.local_agent", "remotegpu_agent.state", True),
        ("machines.views.hosts", "environments.models", True),
        ("machines.views.hosts", "remotegpu.urls", True),
        ("accounts.services.audit", "remotegpu.settings.base", True),
        ("machines.tests.test_consumers", "remotegpu.asgi", False),
        ("accounts.models", "machines.models", True),
        ("billing.services", "machines.models", True),
        ("remotegpu.core.errors", "accounts.models", True),
        ("remotegpu.core.errors", "remotegpu.settings", True),
        ("remotegpu.urls", "machines.urls", False),
        ("agent.remotegpu_agent.client", "django.conf", True),
        ("agent.remotegpu_agent.client", "machines.models", True),
        ("agent.remotegpu_agent.client", "remotegpu.core.secrets", True),
        ("agent.remotegpu_agent.client", "agent.remotegpu_agent.protocol", False),
        ("agent.remotegpu_agent.client", "remotegpu_agent.protocol", False),
    ],
)
def test_dependency_rules(module, name, forbidden):
    """The rules themselves (STYLE.md rule 2), one case each."""
    assert forbidden_import(module, name) is forbidden


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from ..models import User", "accounts.api.views", "accounts.models"),
        ("from . import views", "accounts.api.urls", "accounts.api.views"),
        ("from .tasks import x", "accounts", "accounts.tasks"),
        ("import machines.models", "accounts.views", "machines.models"),
        ("from billing import services", "accounts.views", "billing.services"),
    ],
)
def test_import_resolution(source, module, expected):
    """The checker itself: relative imports resolve to the modules they name."""
    is_package = module == "accounts"
    assert expected in imported_modules(source, module, is_package=is_package)


# Admin ------------------------------------------------------------------------------------------


def _project_models():
    return [model for model in apps.get_models() if model._meta.app_label in APPS]


@pytest.mark.parametrize("model", _project_models(), ids=lambda model: model._meta.label)
def test_every_model_has_a_searchable_admin(model):
    model_admin = admin.site._registry.get(model)
    assert model_admin is not None, f"{model._meta.label} is not registered in the admin"
    assert list(model_admin.list_display) != ["__str__"], f"{model._meta.label}: list_display"
    assert model_admin.list_filter, f"{model._meta.label}: list_filter is empty"
    assert model_admin.search_fields, f"{model._meta.label}: search_fields is empty"


# OpenAPI ----------------------------------------------------------------------------------------


def _api_routes():
    """(OpenAPI path, methods) of every route under the ``api`` namespace."""

    def walk(resolver, regex="", in_api=False):
        for entry in resolver.url_patterns:
            pattern = entry.pattern.regex.pattern.removeprefix("^")
            if isinstance(entry, URLResolver):
                yield from walk(entry, regex + pattern, in_api or entry.namespace == "api")
            elif in_api:
                yield regex + pattern, entry.callback

    routes = []
    for regex, callback in walk(get_resolver()):
        template, params = normalize(regex)[0]
        # drf-spectacular names a primary key "id" (SCHEMA_COERCE_PATH_PK).
        path = "/" + template % {p: "{%s}" % ("id" if p == "pk" else p) for p in params}
        view = callback.cls
        if getattr(callback, "actions", None) is not None:
            # A viewset's router maps PUT to ``update`` even when http_method_names refuses it
            # (405): only the methods it answers need documenting.
            methods = set(callback.actions) & set(view.http_method_names)
        else:
            methods = {m for m in view.http_method_names if hasattr(view, m)}
        methods -= {"head", "options"}
        routes.append((path, callback, methods))
    return routes


def test_every_api_route_is_in_the_schema():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    routes = _api_routes()
    assert len(routes) > 10, "the walk found no API routes"
    missing = []
    for path, callback, methods in routes:
        if callback.cls.__name__ == "APIRootView":
            continue  # the router's index page; the schema is the index
        documented = set(schema["paths"].get(path, {}))
        missing += [f"{method.upper()} {path}" for method in sorted(methods - documented)]
    assert missing == [], f"API operations missing from the OpenAPI schema: {missing}"
