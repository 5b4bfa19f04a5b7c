"""Soniq in one file, on the embedded SQLite backend (no server needed).

Run: python examples/demo.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from soniq import JobContext, Soniq


async def main() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="soniq-demo-"), "soniq.db")
    async with Soniq(database_url=path, poll_interval=0.1) as app:

        @app.job()
        async def add(a: int, b: int) -> int:
            return a + b

        @app.job(queue="emails", retries=2)
        async def send_welcome(to: str, ctx: JobContext) -> str:
            print(f"  [worker] sending welcome email to {to} (attempt {ctx.attempt})")
            return f"sent to {to}"

        @app.job(retries=1)
        async def flaky(order_id: int) -> None:
            raise RuntimeError(f"payment gateway refused order {order_id}")

        await app.setup()
        sums = [await app.enqueue(add, a=i, b=i * 10) for i in range(3)]
        email = await app.enqueue(send_welcome, to="dev@example.com")
        failing = await app.enqueue(flaky, order_id=42)
        print(f"Enqueued {len(sums) + 2} jobs into {path}")

        await app.run_worker(concurrency=4, run_once=True)

        for job_id in sums:
            print(f"add -> {await app.get_result(job_id)}")
        print(f"send_welcome -> {await app.get_result(email)}")
        status = await app.get_job_status(failing)
        assert status is not None
        print(f"flaky -> status={status['status']} after {status['attempts']} attempts")
        print(f"         last error: {status['last_error']}")

        dead = await app.dead_letter.list_jobs()
        print(f"Dead-letter queue holds {len(dead)} job(s); replaying {failing[:8]}...")
        new_id = await app.dead_letter.replay(failing)
        replayed = await app.get_job(new_id) or {}
        print(f"Replayed as {new_id[:8]}... with status {replayed.get('status')}")
        for row in await app.get_queue_stats():
            print(f"queue {row['queue']}: {row}")


if __name__ == "__main__":
    asyncio.run(main())
