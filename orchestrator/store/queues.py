"""Queue controls (Ganeti's job filter rules, per queue): accept, pause, drain and a rate
limit on starts, each set by an admin with a reason.

- drain: `Submitter.submit` refuses new jobs for the queue (503); queued and running jobs
  finish.
- pause and the rate limit act where a queued job would start (the runner asks `admit`):
  a paused queue's jobs are kept in a held set, off the dispatch timer, and dispatched
  again by the change that resumes the queue (one script each way, so none is held and
  forgotten); a job over the rate limit goes back on the dispatch timer for the moment the
  rolling minute lets it start. Running jobs are never stopped by either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from orchestrator.clock import now_ms
from orchestrator.store import jobdoc, keys, lua
from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.api import QueueControl, QueueDepth, QueueMode, QueueView
from schemas.jobs import JobState

_ACTIVE = (JobState.RUNNING, JobState.WAITING, JobState.ABORTING)
ACTIVE_SCANNED_MAX = 5000  # running and waiting jobs read to count a queue's share


@dataclass(frozen=True)
class Admission:
    verdict: Literal["go", "held", "later"]
    at_ms: int = 0  # "later": when the rate limit lets the job start


class QueueControls:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._admit = redis.register_script(lua.ADMIT_START)
        self._set = redis.register_script(lua.SET_QUEUE_CONTROL)

    async def get(self, queue: str) -> QueueControl | None:
        raw = await self.redis.hget(keys.QUEUE_CONTROLS, queue)
        return None if raw is None else QueueControl.model_validate_json(raw)

    async def all(self) -> dict[str, QueueControl]:
        raw = await self.redis.hgetall(keys.QUEUE_CONTROLS)
        return {q: QueueControl.model_validate_json(doc) for q, doc in raw.items()}

    async def set(self, queue: str, control: QueueControl) -> list[str]:
        """Record `control` and its event; the jobs a pause held, to dispatch again now."""
        event = make_event(
            et.QUEUE_CONTROL_CHANGED,
            et.SOURCE_API,
            queue,
            {"queue": queue, **control.model_dump(mode="json")},
        )
        held = await self._set(
            keys=[keys.QUEUE_CONTROLS, keys.queue_held(queue), keys.EVENTS, keys.JOBS_DUE],
            args=[
                queue,
                control.model_dump_json(),
                control.mode,
                event.model_dump_json(),
                now_ms(),
            ],
        )
        return [str(j) for j in held]

    async def admit(self, queue: str, job_id: str) -> Admission:
        """May this queued job start now? (See the module's docstring.)"""
        reply = await self._admit(
            keys=[
                keys.QUEUE_CONTROLS,
                keys.queue_held(queue),
                keys.queue_starts(queue),
                keys.JOBS_DUE,
            ],
            args=[queue, job_id, now_ms()],
        )
        verdict = str(reply[0])
        if verdict == "later":
            return Admission("later", int(reply[1]))
        return Admission("held" if verdict == "held" else "go")

    async def views(self, depths: list[QueueDepth], *, pending: bool = True) -> list[QueueView]:
        """Each queue of `depths` with its control, pending and held counts. `pending`
        False leaves the running and waiting jobs out of `pending` (counting them reads
        their records: not for every Prometheus scrape)."""
        controls = await self.all()
        pipe = self.redis.pipeline(transaction=False)
        for d in depths:
            pipe.scard(keys.queue_held(d.queue))
        for s in _ACTIVE if pending else ():
            pipe.zrevrange(keys.jobs_state(s), 0, ACTIVE_SCANNED_MAX - 1)
        replies = await pipe.execute()
        held, active_ids = replies[: len(depths)], replies[len(depths) :]
        active = await self._queues_of([j for ids in active_ids for j in ids])
        out = []
        for d, n_held in zip(depths, held, strict=True):
            ctl = controls.get(d.queue)
            out.append(
                QueueView(
                    queue=d.queue,
                    mode=QueueMode(ctl.mode) if ctl else QueueMode.ACCEPT,
                    rate_limit_per_minute=ctl.rate_limit_per_minute if ctl else None,
                    reason=ctl.reason if ctl else "",
                    changed_by=ctl.changed_by if ctl else None,
                    changed_at=ctl.changed_at if ctl else None,
                    depth=d.depth,
                    oldest_job_age_s=d.oldest_job_age_s,
                    pending=d.depth + active.count(d.queue),
                    held=n_held,
                )
            )
        return out

    async def _queues_of(self, job_ids: list[str]) -> list[str]:
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for jid in job_ids:
            pipe.hget(keys.job(jid), "doc")
        return [jobdoc.decode(d).queue for d in await pipe.execute() if d is not None]
