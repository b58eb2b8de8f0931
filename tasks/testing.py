"""A hand-driven engine for tests (like dramatiq's stub broker): jobs are submitted through
the real submitter, and `drain()` runs every published message as a worker would, then the
router's due timers, on one Redis (fakeredis in unit tests), built by the same wiring as
every process."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from orchestrator.jobs.dispatch import ADVANCE_TASK
from orchestrator.loopthread import LoopThread
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.store import keys
from schemas.jobs import Job
from schemas.requests import job_request_adapter
from tasks.runner.advance import advance
from tasks.runtime import Runtime
from workers.hypervisor.adapter import Hypervisors


class Broker:
    """The Celery queues as a worker would see them, read straight from Redis."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _queues(self) -> list[str]:
        return sorted(self.engine.run(self.engine.redis.keys("vmorch.*")))

    @staticmethod
    def job_of(payload: str) -> str:
        envelope = json.loads(payload)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        if envelope["headers"]["task"] != ADVANCE_TASK:
            raise ValueError(f"not an advance message: {envelope['headers']['task']}")
        return str(args[0])

    def pending(self) -> list[str]:
        """Job ids of the messages waiting, oldest first."""
        out: list[str] = []
        for q in self._queues():
            msgs = self.engine.run(self.engine.redis.lrange(q, 0, -1))
            out += [self.job_of(m) for m in reversed(msgs)]
        return out

    def pop(self) -> str:
        for q in self._queues():
            payload = self.engine.run(self.engine.redis.rpop(q))
            if payload is not None:
                return self.job_of(payload)
        raise LookupError("no message waiting")

    def push(self, job_id: str, queue: str = keys.DEFAULT_QUEUE) -> None:
        self.engine.run(self.engine.services.dispatcher.dispatch(job_id, queue))


class Engine:
    """An engine driven by hand over `redis` (made on the engine's own loop thread by
    `make_redis`, e.g. a fakeredis client)."""

    def __init__(
        self, settings: Settings, make_redis: Any = None, libvirt_retry_s: float = 1.0
    ) -> None:
        self.loop = LoopThread()

        async def build() -> Services:
            if make_redis is not None:
                return Services.build(settings, make_redis())
            import fakeredis  # a test dependency: only this default needs it

            return Services.build(settings, fakeredis.FakeAsyncRedis(decode_responses=True))

        self.services = self.loop.run(build())
        self.redis = self.services.redis
        self.jobs = self.services.jobs
        self.inventory = self.services.inventory
        self.dispatcher = self.services.dispatcher
        self.submitter = self.services.submitter
        self.broker = Broker(self)
        self.rt = Runtime(settings, self.loop, self.services, Hypervisors(libvirt_retry_s))

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def submit(self, request: Any, **kw: Any) -> Job:
        req = job_request_adapter.validate_python(request)
        kw.setdefault("internal", True)
        job, _ = self.run(self.submitter.submit(req, submitted_by="test", **kw))
        return job  # type: ignore[no-any-return]

    def drain(self, max_steps: int = 500, horizon_s: float = 5.0) -> list[str]:
        """Run published messages until none is left, then act as the router's timer: jobs
        due now, or within `horizon_s` (a wait's deadline), are dispatched again."""
        outcomes: list[str] = []
        for _ in range(max_steps):
            if not self.broker.pending():
                due = self._next_due(horizon_s)
                if not due:
                    return outcomes
                for j in due:
                    self.broker.push(j)
            outcomes.append(advance(self.rt, self.broker.pop()))
        raise RuntimeError("engine did not settle")

    def _next_due(self, horizon_s: float) -> list[str]:
        live = [
            (j, score)
            for j, score in self.run(self.redis.zrange(keys.JOBS_DUE, 0, -1, withscores=True))
            if not self.get(j).state.terminal
        ]
        soon = [(j, s) for j, s in live if s <= (time.time() + horizon_s) * 1000]
        if not soon:
            return []
        wait_s = min(s for _, s in soon) / 1000 - time.time()
        if wait_s > 0:
            time.sleep(wait_s)  # the clock the router's timer runs on
        due = self.run(self.jobs.claim_due())
        return [j for j in due if not self.get(j).state.terminal]

    def get(self, job_id: str) -> Job:
        return self.run(self.jobs.get(job_id))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.loop.stop()
