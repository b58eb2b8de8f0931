"""A stale worker (its lease taken over by another) changes nothing (M1)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from orchestrator.errors import LeaseLost
from orchestrator.store import keys
from schemas.base import utcnow
from schemas.inventory import Inventory, Server, Vm, VmState
from schemas.jobs import WaitInfo
from tasks.step import StepContext
from tasks.testing import Engine

VM = Vm(id="11111111-2222-3333-4444-555555555555", name="db", pool="p", server="s1", ha=True)


def snapshot(engine: Engine) -> dict[str, Any]:
    """Every key and its value, to compare before and after."""
    out: dict[str, Any] = {}
    for key in engine.run(engine.redis.keys("vmorch:*")):
        kind = engine.run(engine.redis.type(key))
        if kind == "string":
            out[key] = engine.run(engine.redis.get(key))
        elif kind == "hash":
            out[key] = engine.run(engine.redis.hgetall(key))
        elif kind == "set":
            out[key] = sorted(engine.run(engine.redis.smembers(key)))
        elif kind == "zset":
            out[key] = engine.run(engine.redis.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            out[key] = len(engine.run(engine.redis.xrange(key)))
        elif kind == "list":
            out[key] = engine.run(engine.redis.lrange(key, 0, -1))
    return out


@pytest.fixture
def stale(engine: Engine) -> StepContext:
    """A step context whose worker holds token 1, while the lease is now token 2's."""
    engine.run(
        engine.inventory.load(
            Inventory(servers=[Server(name="s1", pool="p", uri="test:///default")])
        )
    )
    engine.run(engine.inventory.save_vm(VM))
    job = engine.submit({"kind": "vm.start", "vm": VM.id})
    engine.run(engine.redis.set(keys.lease(job.id), "2"))
    return StepContext(job=job, runtime=engine.rt, attempt=1, token=1)


def writes(ctx: StepContext) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    svc = ctx.runtime.services
    info = WaitInfo(
        step=0, types=["t"], subject=VM.id, since="0-0", deadline=utcnow() + timedelta(seconds=60)
    )
    moved = VM.model_copy(update={"server": "s2"})
    return {
        "placement": lambda: svc.inventory.save_vm(moved, fence=ctx.fence),
        "desired state": lambda: svc.inventory.set_desired(VM.id, VmState.STOPPED, fence=ctx.fence),
        "vm deletion": lambda: svc.inventory.delete_vm(VM.id, fence=ctx.fence),
        "wait": lambda: svc.waits.register(ctx.job.id, info, fence=ctx.fence),
        "wait cleared": lambda: svc.waits.clear(ctx.job.id, VM.id, fence=ctx.fence),
        "alert": lambda: svc.alerts.raise_alert("vm.ha.exhausted", VM.id, "x", fence=ctx.fence),
        "ha budget": lambda: svc.ha.count_restart(VM.id, ctx.job.id, fence=ctx.fence),
    }


@pytest.mark.parametrize(
    "what",
    ["placement", "desired state", "vm deletion", "wait", "wait cleared", "alert", "ha budget"],
)
def test_a_stale_worker_writes_nothing(engine: Engine, stale: StepContext, what: str) -> None:
    before = snapshot(engine)
    with pytest.raises(LeaseLost):
        engine.run(writes(stale)[what]())
    assert snapshot(engine) == before


def test_a_stale_worker_does_not_reach_the_hypervisor(engine: Engine, stale: StepContext) -> None:
    with pytest.raises(LeaseLost):
        stale.hypervisor("s1")


def test_the_lease_holder_writes(engine: Engine, stale: StepContext) -> None:
    # the same writes with the current token land (the check is not refusing everything)
    holder = StepContext(job=stale.job, runtime=stale.runtime, attempt=1, token=2)
    engine.run(writes(holder)["desired state"]())
    assert engine.run(engine.inventory.vm(VM.id)).desired_state == VmState.STOPPED
