"""Unit fixtures: fakeredis (with Lua) and an in-process engine runtime with no Celery."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from orchestrator.jobs.dispatch import Dispatcher
from orchestrator.jobs.messages import TaskMessages
from orchestrator.jobs.submit import Submitter
from orchestrator.loopthread import LoopThread
from orchestrator.settings import Settings
from orchestrator.store.expectations import Expectations
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.leases import Leases
from orchestrator.store.waits import Waits
from tasks.runner.advance import advance
from tasks.runtime import Runtime
from workers.celery_app import make_celery
from workers.hypervisor.adapter import Hypervisors


class Broker:
    """The Celery queues as the worker would see them, read straight from (fake) Redis."""

    def __init__(self, loop: LoopThread, redis: Any, dispatcher: Dispatcher) -> None:
        self.loop, self.redis, self.dispatcher = loop, redis, dispatcher

    def _queues(self) -> list[str]:
        return sorted(self.loop.run(self.redis.keys("vmorch.*")))

    @staticmethod
    def job_of(payload: str) -> str:
        envelope = json.loads(payload)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert envelope["headers"]["task"] == "vmorch.advance"
        return str(args[0])

    def pending(self) -> list[str]:
        """Job ids of the messages waiting, oldest first."""
        out: list[str] = []
        for q in self._queues():
            out += [self.job_of(m) for m in reversed(self.loop.run(self.redis.lrange(q, 0, -1)))]
        return out

    def pop(self) -> str:
        for q in self._queues():
            payload = self.loop.run(self.redis.rpop(q))
            if payload is not None:
                return self.job_of(payload)
        raise AssertionError("no message waiting")

    def push(self, job_id: str, queue: str = "vmorch.default") -> None:
        self.loop.run(self.dispatcher.dispatch(job_id, queue))


class Engine:
    """An engine driven by hand: submit jobs, then `drain()` runs every published message,
    as a worker would, and the router's due timers once no message is left."""

    def __init__(self, settings: Settings) -> None:
        self.loop = LoopThread()

        async def make() -> Any:
            return fakeredis.FakeAsyncRedis(decode_responses=True)

        self.redis = self.loop.run(make())
        self.jobs = JobStore(self.redis, redispatch_after_s=settings.redispatch_after_s)
        self.inventory = InventoryStore(self.redis)
        celery = make_celery(settings)
        messages = TaskMessages(celery)
        self.dispatcher = Dispatcher(self.redis, messages)
        self.broker = Broker(self.loop, self.redis, self.dispatcher)
        self.rt = Runtime(
            settings=settings,
            celery=celery,
            loop=self.loop,
            redis=self.redis,
            jobs=self.jobs,
            leases=Leases(self.redis, settings.lease_ms),
            inventory=self.inventory,
            hypervisors=Hypervisors(1.0),
            messages=messages,
            waits=Waits(self.redis),
            expectations=Expectations(self.redis),
            pid=0,
        )
        self.submitter = Submitter(self.jobs, self.inventory, self.dispatcher)

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def submit(self, request: Any, **kw: Any) -> Any:
        from schemas.requests import job_request_adapter

        req = job_request_adapter.validate_python(request)
        job, _ = self.run(self.submitter.submit(req, submitted_by="test", **kw))
        return job

    def drain(self, max_steps: int = 500, horizon_s: float = 5.0) -> list[str]:
        """Run published messages until none is left, then act as the router's timer: jobs
        due now, or within `horizon_s` (a wait's deadline), are dispatched again."""
        outcomes = []
        for _ in range(max_steps):
            if not self.broker.pending():
                due = self._next_due(horizon_s)
                if not due:
                    return outcomes
                for j in due:
                    self.broker.push(j)
            outcomes.append(advance(self.rt, self.broker.pop()))
        raise AssertionError("engine did not settle")

    def _next_due(self, horizon_s: float) -> list[str]:
        import time

        live = [
            (j, score)
            for j, score in self.run(self.redis.zrange("vmorch:jobs:due", 0, -1, withscores=True))
            if not self.run(self.jobs.get(j)).state.terminal
        ]
        soon = [(j, s) for j, s in live if s <= (time.time() + horizon_s) * 1000]
        if not soon:
            return []
        wait_s = min(s for _, s in soon) / 1000 - time.time()
        if wait_s > 0:
            time.sleep(wait_s)
        due = self.run(self.jobs.claim_due())
        return [j for j in due if not self.run(self.jobs.get(j)).state.terminal]

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
        step_slice_ms=0,  # one step per message, so tests can stop between steps
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = Engine(settings)
    yield e
    e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
