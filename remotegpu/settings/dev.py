"""Local development (`make run`): debug on, e-mails printed to the console."""

from .base import *  # noqa: F403
from .base import env, env_bool

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env("SECRET_KEY") or "dev-only-insecure-key-change-me-in-production-0123456789"
API_TOKEN_PEPPER = env("API_TOKEN_PEPPER") or SECRET_KEY
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
# WhiteNoise serves static files straight from the finders: no `collectstatic` needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
