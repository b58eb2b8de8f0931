"""Fenced writes: a store write a step makes lands only while the step's worker still holds
the job's lease with its fencing token.

A worker paused past its lease (a GC pause, a partition) may wake up after another worker
took the job over; every write it then makes (placement, desired state, VM deletion, waits,
alerts, the HA budget) must change nothing. Each such write runs in a MULTI transaction
under WATCH of the lease key, after checking the lease holds this token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from orchestrator.errors import LeaseLost
from orchestrator.store import keys

WATCH_TRIES = 20  # a heartbeat renewal (PEXPIRE) between WATCH and EXEC makes it try again


@dataclass(frozen=True)
class Fence:
    """The job and the fencing token of the lease its worker holds."""

    job_id: str
    token: int


async def transaction(
    redis: Redis, fence: Fence | None, build: Callable[[Pipeline], None]
) -> list[Any]:
    """Run the commands `build` queues as one transaction; with a `fence`, only while its
    token is the job's lease (else LeaseLost, and nothing was written)."""
    async with redis.pipeline(transaction=True) as pipe:
        if fence is None:
            build(pipe)
            return list(await pipe.execute())
        lease = keys.lease(fence.job_id)
        for _ in range(WATCH_TRIES):
            try:
                await pipe.watch(lease)
                if await pipe.get(lease) != str(fence.token):
                    await pipe.reset()
                    raise LeaseLost(f"job {fence.job_id}: lease lost, not writing")
                pipe.multi()
                build(pipe)
                return list(await pipe.execute())
            except WatchError:
                continue
    raise LeaseLost(f"job {fence.job_id}: the lease kept changing; not writing")
