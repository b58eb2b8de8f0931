"""The router's timers: dispatch jobs whose timer passed (lost messages, dead workers,
retries, wait deadlines), and keep Redis bounded (`housekeeping`).

Several routers may run: `claim_due` moves each claimed timer forward atomically, so they
do not share a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from orchestrator.clock import due_in_ms
from orchestrator.errors import NotFound
from orchestrator.metrics import LEASE_EXPIRIES, REDISPATCHES
from orchestrator.router.housekeeping import Housekeeping
from orchestrator.services import Services
from schemas.base import utcnow
from schemas.jobs import Job, JobState, StepState

log = logging.getLogger("vmorch.router")


class Timers:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.jobs = services.jobs
        self.leases = services.leases
        self.dispatcher = services.dispatcher
        self.keeper = Housekeeping(services)

    async def sweep(self) -> int:
        """Dispatch every due job no worker holds. Returns how many were dispatched."""
        sent = 0
        for job_id in await self.jobs.claim_due(limit=500):
            held_ms = await self.leases.remaining_ms(job_id)
            if held_ms > 0:
                # its worker's heartbeat keeps the timer ahead; should the worker die, the
                # job is due again as soon as its lease has expired (not a whole redispatch
                # period later): a dead worker's step runs again within lease + sweep
                await self.jobs.set_due(job_id, due_in_ms(held_ms + 1))
                continue
            try:
                job = await self.jobs.get(job_id)
            except NotFound:
                await self.jobs.clear_due(job_id)
                continue
            if job.state.terminal:
                await self.jobs.clear_due(job_id)
                continue
            if job.state == JobState.QUEUED and (await self.jobs.ahead_of(job))[1]:
                continue  # parked behind another job on its VM (or a clone's source)
            if await self._probably_in_line(job):
                continue
            log.info("job=%s redispatch state=%s queue=%s", job_id, job.state.value, job.queue)
            REDISPATCHES.labels(job.state.value).inc()
            if any(s.state == StepState.RUNNING for s in job.steps):
                LEASE_EXPIRIES.labels(job.queue).inc()  # a step running, and no lease
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
        return await self.services.dispatcher.queued(job.queue) > 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("router started, sweep every %.2fs", self.settings.sweep_interval_s)
        while not stop.is_set():
            try:
                await self.sweep()
                await self.housekeeping()
            except Exception:  # Redis or broker down, a record it cannot read: keep going
                log.warning("router sweep failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_s)

    async def housekeeping(self) -> None:
        """The event stream, retention and pruning, each on its own period."""
        await self.keeper.run_due()
