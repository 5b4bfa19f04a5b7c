"""The shop's jobs: Django-free, so `soniq worker` imports them without Django set up."""

import os

from soniq import Soniq

soniq_app = Soniq(database_url=os.environ["DATABASE_URL"])


@soniq_app.job(name="shop.send_invoice", queue="invoices")
def send_invoice(order_id: int) -> str:  # a plain def handler: runs on a worker thread
    return f"invoice for order {order_id}"
