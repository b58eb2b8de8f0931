"""Publishing `vmorch.advance` messages from asyncio code without blocking the event loop.

kombu's publish is blocking I/O, so it runs on a small thread pool. A publish that is lost
(the process dies first) is not a lost job: the job is already in Redis with a dispatch
timer, and the router publishes it again when the timer passes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from workers.celery_app import ADVANCE_TASK


class Dispatcher:
    def __init__(self, celery: Celery, threads: int = 4):
        self.celery = celery
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vmorch-publish")

    def send(self, job_id: str, queue: str) -> None:
        self.celery.send_task(ADVANCE_TASK, args=[job_id], queue=queue)

    async def dispatch(self, job_id: str, queue: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.send, job_id, queue)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
