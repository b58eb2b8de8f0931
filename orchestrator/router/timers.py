"""The router: dispatches jobs whose timer passed (lost messages, dead workers, retries).

Issue 3 adds the event stream (waits, hooks) to the same process. Several routers may run:
`claim_due` moves each claimed timer forward atomically, so they do not share a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aredis

from orchestrator.errors import NotFound
from orchestrator.jobs.dispatch import Dispatcher
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.jobs import JobStore
from orchestrator.store.leases import Leases
from schemas.base import utcnow
from schemas.jobs import Job, JobState, StepState

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
            if await self._probably_in_line(job):
                continue
            log.info("job=%s redispatch state=%s queue=%s", job_id, job.state.value, job.queue)
            await self.dispatcher.dispatch(job_id, job.queue)
            sent += 1
        return sent

    async def _probably_in_line(self, job: Job) -> bool:
        """True when the job's message is most likely still waiting in its Celery queue.

        A job between steps (no step running) whose queue holds messages is left alone, for a
        while: in a backlog longer than `redispatch_after_s`, publishing it again would only
        add duplicates. A job whose step was running has lost its worker, and a waiting job has
        no message in any queue (its timer is its deadline): always dispatch those.
        """
        if job.state == JobState.WAITING or any(s.state == StepState.RUNNING for s in job.steps):
            return False
        waited_s = (utcnow() - job.updated_at).total_seconds()
        if waited_s > self.settings.redispatch_max_wait_s:
            return False
        return bool(await self.jobs.redis.llen(job.queue))

    async def run(self, stop: asyncio.Event) -> None:
        log.info("router started, sweep every %.2fs", self.settings.sweep_interval_s)
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:  # Redis or broker down, a record it cannot read: keep going
                log.warning("router sweep failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_s)
