"""A minimal Django project on PostgreSQL: one app, no admin, no auth.

DATABASE_URL names the database (the test passes a fresh one per run).
"""

import os
from urllib.parse import unquote, urlsplit

_db = urlsplit(os.environ["DATABASE_URL"])

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "shopsite.urls"
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}
