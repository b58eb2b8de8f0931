"""Everything a worker process needs to run steps, built once per process (after fork)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from orchestrator.jobs.dispatch import TaskMessages
from orchestrator.loopthread import LoopThread
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store.content import ContentStore
from orchestrator.store.expectations import Expectations
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.leases import Leases
from orchestrator.store.servers import ServerStates
from orchestrator.store.waits import Waits
from workers.hypervisor.adapter import Hypervisors, silence_libvirt_errors


@dataclass
class Runtime:
    """The worker's services (on its loop thread) and its hypervisor connections."""

    settings: Settings
    loop: LoopThread
    services: Services
    hypervisors: Hypervisors

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        silence_libvirt_errors()  # we log the libvirt errors we act on
        loop = LoopThread()

        async def make() -> Services:
            return Services.build(settings, connect(settings))

        return cls(settings, loop, loop.run(make()), Hypervisors.from_settings(settings))

    @property
    def redis(self) -> Redis:
        return self.services.redis

    @property
    def jobs(self) -> JobStore:
        return self.services.jobs

    @property
    def leases(self) -> Leases:
        return self.services.leases

    @property
    def inventory(self) -> InventoryStore:
        return self.services.inventory

    @property
    def waits(self) -> Waits:
        return self.services.waits

    @property
    def servers(self) -> ServerStates:
        return self.services.servers

    @property
    def content(self) -> ContentStore:
        return self.services.content

    @property
    def expectations(self) -> Expectations:
        return self.services.expectations

    @property
    def messages(self) -> TaskMessages:
        return self.services.dispatcher.messages
