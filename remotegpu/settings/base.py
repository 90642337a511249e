"""Settings shared by every environment. Values come from the environment (see README)."""

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from remotegpu.core.embedded import read_env_file

BASE_DIR = Path(__file__).resolve().parents[2]


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Embedded services write their URLs here; an explicit environment variable always wins.
_embedded = read_env_file()
DATABASE_URL = env("DATABASE_URL") or _embedded.get("DATABASE_URL")
REDIS_URL = env("REDIS_URL") or _embedded.get("REDIS_URL")
if not DATABASE_URL or not REDIS_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL and REDIS_URL are not set and no embedded services are running: "
        "use `make run` / `make test`, or `python -m remotegpu.core.embedded start`."
    )

SECRET_KEY = env("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env("SITE_URL", "http://localhost:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "remotegpu.core",
    "accounts",
    "machines",
    "environments",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the application server itself (daphne serves no files of its own).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.UserLanguageMiddleware",
    "remotegpu.core.middleware.RequestContextMiddleware",
    "accounts.middleware.CurrentOrganizationMiddleware",
]

ROOT_URLCONF = "remotegpu.urls"
ASGI_APPLICATION = "remotegpu.asgi.application"
WSGI_APPLICATION = "remotegpu.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "accounts.context_processors.portal",
                "billing.context_processors.wallet",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "remotegpu",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "accounts:dashboard"

SESSION_COOKIE_AGE = 60 * 60 * 24 * 14
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# django-allauth: e-mail is the login; verification is mandatory; sign-in is rate limited.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_RATE_LIMITS = {
    "login_failed": "5/5m/ip,5/5m/key",
    "signup": "20/h/ip",
    "reset_password": "20/m/ip,5/m/key",
    "confirm_email": "1/3m/key",
}
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
# False: only people holding an invitation link can sign up.
SIGNUP_OPEN = env_bool("SIGNUP_OPEN", True)
ACCOUNT_DEFAULT_HTTP_PROTOCOL = env("ACCOUNT_DEFAULT_HTTP_PROTOCOL", "http")
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "RemoteGPU"

EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env("EMAIL_PORT", "25"))
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "RemoteGPU <noreply@localhost>")

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(BASE_DIR / "media")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.api.permissions.TokenWritePermission",
    ],
    "DEFAULT_PAGINATION_CLASS": "remotegpu.core.api.pagination.StandardPagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "remotegpu.core.api.exceptions.exception_handler",
    "DEFAULT_VERSIONING_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_RATES": {"agent_join": "120/minute"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RemoteGPU API",
    "DESCRIPTION": "Rent GPU environments and machines on your organisation's own hardware.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "InvitationStatusEnum": "accounts.choices.InvitationStatus",
        "HostStatusEnum": "machines.choices.HostStatus",
        "CommandStatusEnum": "machines.choices.CommandStatus",
        "RoleEnum": "accounts.choices.Role",
        "PortRoleEnum": "environments.choices.PortRole",
        "EnvironmentStatusEnum": "environments.choices.EnvironmentStatus",
        # Three fields called "kind" would otherwise get numbered names (Kind103Enum).
        "KindEnum": "machines.choices.CommandKind",
        "EntryKindEnum": "billing.choices.EntryKind",
        "CreditKindEnum": "billing.api.serializers.CREDIT_KINDS",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "remotegpu.core.api.schema.add_error_responses",
    ],
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "rgpu_..."}
        }
    },
}

# API tokens: the HMAC key that digests token secrets. Rotating it invalidates every token.
API_TOKEN_PEPPER = env("API_TOKEN_PEPPER") or SECRET_KEY
API_TOKEN_LAST_USED_INTERVAL = 60
INVITATION_EXPIRY_DAYS = 7

CHANNEL_LAYERS = {
    "default": {
        # channels-redis's layer with a receive that ends when cancelled (see the module).
        "BACKEND": "remotegpu.core.channel_layers.RedisChannelLayer",
        # redis-py 8 defaults would break the layer under real load: reads time out after 5 s,
        # exactly channels-redis's BZPOPMIN wait, and a pool holds at most 100 connections, so
        # a reconnect storm of agents (each joins a group on connect) fails with "Too many
        # connections". Reads get more room and the pool more connections.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 2000}],
            "prefix": "remotegpu",
        },
    }
}


def celery_url(url: str) -> str:
    """Kombu spells a Unix-socket Redis URL ``redis+socket://``; redis-py spells it ``unix://``."""
    return "redis+socket://" + url.removeprefix("unix://") if url.startswith("unix://") else url


CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = celery_url(REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "expire-invitations": {
        "task": "accounts.tasks.invitation_expire_task",
        "schedule": 60 * 60,
    },
    "detect-offline-hosts": {
        "task": "machines.tasks.host_detect_offline_task",
        "schedule": 5,
    },
    "expire-host-commands": {
        "task": "machines.tasks.command_expire_task",
        "schedule": 30,
    },
    "prune-host-commands": {
        "task": "machines.tasks.command_prune_task",
        "schedule": 60 * 60,
    },
    "roll-up-metrics": {
        "task": "machines.tasks.metric_rollup_task",
        "schedule": 60,
    },
    "prune-metric-samples": {
        "task": "machines.tasks.metric_retention_task",
        "schedule": 60 * 60,
    },
    "evaluate-alerts": {
        "task": "machines.tasks.alert_evaluate_task",
        "schedule": 15,
        # A pass queued behind a stopped worker is worthless once the next one is due.
        "options": {"expires": 15},
    },
    "expire-onboarding-jobs": {
        "task": "machines.tasks.onboarding_expire_task",
        "schedule": 60,
    },
    "sweep-environments": {
        "task": "environments.tasks.environment_sweep_task",
        "schedule": 5,
        "options": {"expires": 5},
    },
    "sweep-allocations": {
        "task": "machines.tasks.allocation_sweep_task",
        "schedule": 30,
        "options": {"expires": 30},
    },
    "billing-tick": {
        "task": "billing.tasks.billing_tick_task",
        "schedule": 60,
        "options": {"expires": 60},
    },
    "billing-reconcile": {
        "task": "billing.tasks.billing_reconcile_task",
        "schedule": crontab(hour=3, minute=17),
    },
}
# Environments: how long provisioning (a pull included) may take before it fails with
# provision_timeout; the pids limit of every container; how long a labelled container that no
# environment owns is left before it is removed (it may be a create the database has not seen).
ENVIRONMENT_PROVISION_TIMEOUT = int(env("ENVIRONMENT_PROVISION_TIMEOUT", "900"))

ENVIRONMENT_PIDS_LIMIT = int(env("ENVIRONMENT_PIDS_LIMIT", "4096"))
ENVIRONMENT_ORPHAN_GRACE_SECONDS = int(env("ENVIRONMENT_ORPHAN_GRACE_SECONDS", "300"))
# Seconds a request for an environment's output waits for its host to answer.
ENVIRONMENT_LOGS_TIMEOUT = float(env("ENVIRONMENT_LOGS_TIMEOUT", "10"))
# A live agent connection re-joins its channel group and sends commands whose push was lost
# (a Redis restart) this often.
AGENT_RESYNC_SECONDS = int(env("AGENT_RESYNC_SECONDS", "60"))
# Raw heartbeat samples are kept this long; 5-minute rollups of them much longer.
METRIC_RAW_RETENTION_HOURS = int(env("METRIC_RAW_RETENTION_HOURS", "48"))
METRIC_ROLLUP_RETENTION_DAYS = int(env("METRIC_ROLLUP_RETENTION_DAYS", "35"))
# Bearer token Prometheus scrapes /metrics with; unset, the endpoint does not exist (404).
PROMETHEUS_TOKEN = env("PROMETHEUS_TOKEN", "")

# Billing: one currency for every wallet (ISO 4217), and what happens at zero balance.
BILLING_CURRENCY = env("BILLING_CURRENCY", "USD").upper()
BILLING_GRACE_SECONDS = int(env("BILLING_GRACE_SECONDS", "300"))
# The payment provider customers pay by card through ("" for none) and its webhook secret.
BILLING_PAYMENT_PROVIDER = env("BILLING_PAYMENT_PROVIDER", "")
BILLING_PAYMENT_WEBHOOK_SECRET = env("BILLING_PAYMENT_WEBHOOK_SECRET", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
