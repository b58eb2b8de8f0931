"""The router: dispatches jobs whose timer passed (lost messages, dead workers, retries).

Issue 3 adds the event stream (waits, hooks) to the same process. Several routers may run:
`claim_due` moves each claimed timer forward atomically, so they do not share a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aredis

from orchestrator import keys
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import NotFound
from orchestrator.jobstore import JobStore
from orchestrator.leases import Leases
from orchestrator.settings import Settings
from schemas.jobs import JobState

log = logging.getLogger("vmorch.router")


class Router:
    def __init__(self, settings: Settings, redis: aredis.Redis, dispatcher: Dispatcher):
        self.settings = settings
        self.jobs = JobStore(redis, redispatch_after_s=settings.redispatch_after_s)
        self.leases = Leases(redis, settings.lease_ms)
        self.dispatcher = dispatcher

    async def sweep(self) -> int:
        """Dispatch every due job no worker holds. Returns how many were dispatched."""
        sent = 0
        for job_id in await self.jobs.claim_due(limit=500):
            if await self.leases.held(job_id):
                continue  # its worker's heartbeat keeps the timer ahead
            try:
                job = await self.jobs.get(job_id)
            except NotFound:
                await self.jobs.redis.zrem(keys.JOBS_DUE, job_id)
                continue
            if job.state.terminal:
                await self.jobs.redis.zrem(keys.JOBS_DUE, job_id)
                continue
            if job.state == JobState.QUEUED and job.links.vm_id:
                queue = await self.jobs.vm_queue(job.links.vm_id)
                if queue and queue[0] != job_id:
                    continue  # parked behind another job on its VM
            log.info("job=%s redispatch state=%s queue=%s", job_id, job.state.value, job.queue)
            await self.dispatcher.dispatch(job_id, job.queue)
            sent += 1
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        log.info("router started, sweep every %.2fs", self.settings.sweep_interval_s)
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:  # Redis or broker down, a record it cannot read: keep going
                log.warning("router sweep failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_s)
