"""A small FastAPI shop with Soniq: signup sends a welcome email, orders commit with their job.

Run it:   SHOP_DATABASE_URL=postgresql://localhost/shop uvicorn shop:api
Worker:   SONIQ_DATABASE_URL=postgresql://localhost/shop SONIQ_JOBS_MODULES=shop soniq worker
Tests:    pytest -p soniq.testing examples/shop   (test_shop.py)
"""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI

from soniq import Soniq
from soniq.integrations.fastapi import dependency, lifespan

# In-memory unless told otherwise, so the tests need no server.
eq = Soniq(database_url=os.environ.get("SHOP_DATABASE_URL", "memory:"))
api = FastAPI(lifespan=lifespan(eq))
get_soniq = dependency(eq)
sent: list[str] = []  # what send_welcome "sent" (a real app would call its mailer)


@eq.job(queue="emails", retries=2)
async def send_welcome(email: str) -> str:
    sent.append(email)
    return f"welcome sent to {email}"


@api.post("/signup")
async def signup(email: str, soniq: Soniq = Depends(get_soniq)) -> dict[str, str]:  # noqa: B008
    return {"job_id": await soniq.enqueue(send_welcome, email=email)}
