"""The published package's import path for webhooks (``soniq.features.webhooks``).

Soniq's webhooks live in :mod:`soniq.webhooks`; this module re-exports them so
code written for the published package imports unchanged.
"""

from __future__ import annotations

from soniq.webhooks import WebhookEvent, Webhooks, verify_signature

__all__ = ["WebhookEvent", "Webhooks", "verify_signature"]
