"""Attribution: which vmorch job caused an event on a VM.

Before it acts, a step records each event its action will cause on the VM, as one
expectation (the alternatives that may come: a start is `started` or `resumed`). The first
matching event consumes it, once: a restart's own stop and start use up its expectations,
so a `virsh destroy` seconds after the restart is an unexpected event, as it should be.
An expectation counts while its job runs, and for GRACE_S after the job ended, measured
against the time the agent saw the event (a quick job such as a kill may end before its
event is published); unconsumed expectations of long-ended jobs are dropped.
Attributed events never fire hooks meant for unexpected changes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from redis.asyncio import Redis

from orchestrator.globs import any_match
from orchestrator.store import keys, lua
from orchestrator.store.jobs import JobStore
from schemas.base import utcnow
from schemas.events import Event

GRACE_S = 5.0  # an event the agent saw up to this long after its job ended is still the job's
FORGET_AFTER_S = GRACE_S * 4  # an expectation of a job ended this long ago is removed
TTL_S = 24 * 3600


def _seen_at(event: Event) -> datetime:
    """When the agent saw the event (its callback's time), else when it was published."""
    raw = event.data.get("observed_at")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return event.time


class Expectations:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._consume = redis.register_script(lua.CONSUME_EXPECTATION)

    async def expect(self, vm_id: str, job_id: str, types: list[str]) -> None:
        """Record that `job_id` is about to cause one event of one of `types` on the VM.
        Recording the same expectation again (a step run twice) changes nothing."""
        key = keys.expectations(vm_id)
        item = f"{job_id}|{','.join(sorted(types))}"
        doc = json.dumps({"job": job_id, "types": sorted(types), "at": utcnow().isoformat()})
        stale = await self._long_ended(await self.redis.hgetall(key))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(key, item, doc)
        if stale:
            pipe.hdel(key, *stale)
        pipe.expire(key, TTL_S)
        await pipe.execute()

    async def _long_ended(self, entries: dict[str, str]) -> list[str]:
        """The expectations whose jobs ended so long ago no event can be theirs any more.

        Without this, a VM that keeps getting jobs (its key's TTL refreshed each time) would
        keep an entry for every job it ever had, each looked at for every event about it."""
        if not entries:
            return []
        items = list(entries)
        jobs = [json.loads(entries[i])["job"] for i in items]
        cutoff_ms = (utcnow().timestamp() - FORGET_AFTER_S) * 1000
        ended = await self.redis.zmscore(keys.JOBS_ENDED, jobs)
        return [i for i, ms in zip(items, ended, strict=True) if ms is not None and ms < cutoff_ms]

    async def attribute(self, event: Event, jobs: JobStore) -> str | None:
        """The id of the job whose expectation `event` consumes, or None when no job of
        vmorch expects it (the event is unexpected)."""
        if not event.subject or not event.type.startswith("vm."):
            return None
        key = keys.expectations(event.subject)
        entries: dict[str, str] = await self.redis.hgetall(key)
        seen = _seen_at(event)
        # oldest expectation first: a job's earlier action causes the earlier event
        for item, raw in sorted(entries.items(), key=lambda kv: json.loads(kv[1])["at"]):
            exp = json.loads(raw)
            if not any_match(event.type, exp["types"]):
                continue
            v = await jobs.get_versioned(exp["job"])
            job = v.job if v is not None else None
            live = job is not None and (
                not job.state.terminal
                or (job.ended_at is not None and seen <= job.ended_at + timedelta(seconds=GRACE_S))
            )
            if not live:
                if job is None or (
                    job.ended_at and utcnow() - job.ended_at > timedelta(seconds=FORGET_AFTER_S)
                ):
                    await self.redis.hdel(key, item)  # long over: forget it
                continue
            if await self._consume(keys=[key], args=[item]):
                return str(exp["job"])
        return None
