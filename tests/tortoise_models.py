"""A Tortoise model for the connection tests: Tortoise.init wants at least one models module."""

from tortoise import fields
from tortoise.models import Model


class Order(Model):
    id = fields.IntField(primary_key=True)

    class Meta:
        table = "orders"
