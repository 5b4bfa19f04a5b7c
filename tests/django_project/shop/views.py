"""A plain sync Django view: the order and its invoice job commit together, or neither."""

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse

from shop.jobs import send_invoice, soniq_app
from shop.models import Order


class PaymentDeclined(Exception):
    pass


def create_order(request: HttpRequest) -> JsonResponse:
    total = int(request.POST["total"])
    with transaction.atomic():
        order = Order.objects.create(total=total)
        job_id = soniq_app.enqueue_sync(send_invoice, connection=connection, order_id=order.id)
        if total < 0:  # after the enqueue: the rollback must take the job with it
            raise PaymentDeclined(f"order {order.id}, job {job_id}")
    return JsonResponse({"order_id": order.id, "job_id": job_id})
