"""``soniq.features.webhooks``: the published import path of ``WebhookEvent``."""

from soniq.webhooks import WebhookEvent

__all__ = ["WebhookEvent"]
