"""Unit fixtures: fakeredis (with Lua) and an in-process engine runtime with no Celery."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from orchestrator.dispatch import Dispatcher
from orchestrator.inventory import InventoryStore
from orchestrator.jobstore import JobStore
from orchestrator.leases import Leases
from orchestrator.loopthread import LoopThread
from orchestrator.settings import Settings
from orchestrator.submit import Submitter
from tasks.runner import advance
from tasks.runtime import Runtime
from workers.hypervisor import Hypervisors


class RecordingDispatcher(Dispatcher):
    """Collects dispatched job ids instead of publishing to a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, job_id: str, queue: str) -> None:
        self.sent.append((job_id, queue))

    async def dispatch(self, job_id: str, queue: str) -> None:
        self.send(job_id, queue)


class LocalRuntime(Runtime):
    def dispatch(self, job_id: str, queue: str) -> None:
        self.sent.append((job_id, queue))  # type: ignore[attr-defined]


class Engine:
    """An engine driven by hand: submit jobs, then `drain()` runs every dispatched step."""

    def __init__(self, settings: Settings) -> None:
        self.loop = LoopThread()

        async def make() -> Any:
            return fakeredis.FakeAsyncRedis(decode_responses=True)

        self.redis = self.loop.run(make())
        self.jobs = JobStore(self.redis, redispatch_after_s=settings.redispatch_after_s)
        self.inventory = InventoryStore(self.redis)
        self.dispatcher = RecordingDispatcher()
        self.rt = LocalRuntime(
            settings=settings,
            celery=None,
            loop=self.loop,  # type: ignore[arg-type]
            redis=self.redis,
            jobs=self.jobs,
            leases=Leases(self.redis, settings.lease_ms),
            inventory=self.inventory,
            hypervisors=Hypervisors(1.0),
            pid=0,
        )
        self.rt.sent = self.dispatcher.sent  # type: ignore[attr-defined]
        self.submitter = Submitter(self.jobs, self.inventory, self.dispatcher)

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def submit(self, request: Any, **kw: Any) -> Any:
        from schemas.requests import job_request_adapter

        req = job_request_adapter.validate_python(request)
        job, _ = self.run(self.submitter.submit(req, submitted_by="test", **kw))
        return job

    def drain(self, max_steps: int = 500) -> list[str]:
        """Run dispatched messages (and due timers) until nothing is left; returns outcomes."""
        outcomes = []
        for _ in range(max_steps):
            if not self.dispatcher.sent:
                due = self.run(self.jobs.claim_due())
                due = [j for j in due if not self.run(self.jobs.get(j)).state.terminal]
                if not due:
                    return outcomes
                self.dispatcher.sent.extend((j, "") for j in due)
            job_id, _ = self.dispatcher.sent.pop(0)
            outcomes.append(advance(self.rt, job_id))
        raise AssertionError("engine did not settle")

    def get(self, job_id: str) -> Any:
        return self.run(self.jobs.get(job_id))

    def close(self) -> None:
        self.loop.stop()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        redis_url="redis://unused",
        lease_ms=1000,
        retry_base_s=0,
        retry_max_s=0,
        redispatch_after_s=0.001,
        step_max_attempts=3,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = Engine(settings)
    yield e
    e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
