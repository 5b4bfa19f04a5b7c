"""POST two orders through the real URL conf and view with Django's test client; print JSON.

One commits; one raises inside transaction.atomic() after enqueueing.
"""

import json
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
django.setup()

from django.test import Client  # noqa: E402

client = Client(raise_request_exception=False)
ok = client.post("/orders", {"total": 42})
declined = client.post("/orders", {"total": -1})
print(json.dumps({"ok": ok.json(), "declined_status": declined.status_code}))
