"""Everything a worker process needs to run steps, built once per process (after fork)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import libvirt
import redis.asyncio as aredis
from celery import Celery

from orchestrator.jobs.messages import TaskMessages
from orchestrator.loopthread import LoopThread
from orchestrator.settings import Settings
from orchestrator.store.expectations import Expectations
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore, now_ms
from orchestrator.store.leases import Leases
from orchestrator.store.waits import Waits
from workers.hypervisor.adapter import Hypervisors

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    celery: Celery
    loop: LoopThread
    redis: aredis.Redis
    jobs: JobStore
    leases: Leases
    inventory: InventoryStore
    hypervisors: Hypervisors
    messages: TaskMessages
    waits: Waits
    expectations: Expectations
    pid: int

    @classmethod
    def build(cls, settings: Settings, celery: Celery) -> Runtime:
        # libvirt prints every error to stderr by default; we log the ones we act on.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        loop = LoopThread()

        async def make() -> aredis.Redis:
            return aredis.Redis.from_url(settings.redis_url, decode_responses=True)

        r = loop.run(make())
        return cls(
            settings=settings,
            celery=celery,
            loop=loop,
            redis=r,
            jobs=JobStore(
                r,
                event_maxlen=settings.event_stream_maxlen,
                idem_ttl_s=settings.idempotency_ttl_s,
                redispatch_after_s=settings.redispatch_after_s,
            ),
            leases=Leases(r, settings.lease_ms),
            inventory=InventoryStore(r),
            hypervisors=Hypervisors(settings.libvirt_retry_s),
            messages=TaskMessages(celery),
            waits=Waits(r),
            expectations=Expectations(r),
            pid=os.getpid(),
        )

    def due_in_ms(self, delay_ms: float) -> int:
        return now_ms() + int(delay_ms)
