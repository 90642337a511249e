"""pytest: the real PostgreSQL and Redis, in-memory e-mail, fast password hashing, eager Celery."""

from .base import *  # noqa: F403
from .base import env

DEBUG = False
SECRET_KEY = "test-only-insecure-key-0123456789-abcdefghijklmnopqrstuvwxyz"
API_TOKEN_PEPPER = SECRET_KEY
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
CELERY_TASK_ALWAYS_EAGER = env("CELERY_TASK_ALWAYS_EAGER", "1") == "1"
CELERY_TASK_EAGER_PROPAGATES = True
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# WhiteNoise serves static files straight from the finders: no `collectstatic` needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# A host the tests mark connected has no agent behind it: its answer would never come.
ENVIRONMENT_LOGS_TIMEOUT = float(env("ENVIRONMENT_LOGS_TIMEOUT", "1"))
