"""Migration pre-checks and deadlines.

`judge` says whether a server can take a VM now, with the reason when not (the pure
checks are `orchestrator.jobs.checks.assess`, on facts read from libvirt now); the migrate
workflow and the maintenance plan use it. Each refusal names its check, so that a job's
error and its `placement` output say why, server by server. `Deadlines` watches a
running live migration the way KubeVirt does: a
completion deadline that scales with the VM's memory and a no-progress deadline, each
running the declared action once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import HypervisorUnavailable, Permanent
from orchestrator.jobs.checks import PinningWish, Verdict, assess, precheck
from schemas.inventory import ServerFacts, ServerPool, Vm
from schemas.requests import MigrateVm
from tasks.step import StepContext
from tasks.steps.placement import PROBE_S
from tasks.steps.vm import vm_of


def vms_there(ctx: StepContext, pool: ServerPool, vm: Vm, server: str) -> set[str]:
    """The names of the VMs on `server`, when an anti-affinity group names `vm` (else
    nothing is read)."""
    if not any(vm.name in g.vms for g in pool.anti_affinity_groups):
        return set()
    return {v.name for v in ctx.run(ctx.runtime.inventory.vms_on(server))}


def judge(
    ctx: StepContext,
    vm: Vm,
    pool: ServerPool,
    server: str,
    *,
    live: bool,
    pinning: PinningWish = None,
    maintenance: set[str] | frozenset[str] = frozenset(),
    planned_there: set[str] | frozenset[str] = frozenset(),
    seen: dict[str, tuple[ServerFacts | None, str | None]] | None = None,
) -> Verdict:
    """`assess` with the server's facts read from libvirt now (a server that does not
    answer within PROBE_S is unreachable; the checks that need nothing from it come
    first, so such a server is not asked). `planned_there`: VMs a plan sends there.
    `seen`: facts read before, by server (a plan judging many VMs reads each server once)."""
    kw: dict[str, Any] = {
        "live": live,
        "pinning": pinning,
        "maintenance": server in maintenance,
        "vms_there": vms_there(ctx, pool, vm, server) | set(planned_there),
    }
    if precheck(vm, pool, server, **kw):
        return assess(vm, pool, server, None, **kw)
    if seen is not None and server in seen:
        facts, unreachable = seen[server]
    else:
        facts, unreachable = _probe(ctx, server)
        if seen is not None:
            seen[server] = (facts, unreachable)
    return assess(vm, pool, server, facts, unreachable=unreachable, **kw)


def _probe(ctx: StepContext, server: str) -> tuple[ServerFacts | None, str | None]:
    """The server's facts, or why it could not be asked within PROBE_S."""
    try:
        return ctx.hypervisor(server, probe_s=PROBE_S).facts(), None
    except HypervisorUnavailable as e:
        return None, e.message
    finally:
        ctx.check()


def mapped(vm: Vm, req: MigrateVm) -> Vm:
    """The VM with its vNICs on the target pool's networks (`network_map`)."""
    nics = [
        n.model_copy(update={"network": req.network_map.get(n.network, n.network)}) for n in vm.nics
    ]
    return vm.model_copy(update={"nics": nics})


def free_slot(ctx: StepContext) -> None:
    """Give back the job's migration slot (in the pool it was taken in)."""
    pool = str(ctx.outputs.get("source_pool") or vm_of(ctx).pool)
    ctx.run(ctx.runtime.servers.release_migration_slot(pool, ctx.job.id))


class MigrationTimedOut(Permanent):
    """A live migration missed a deadline and was aborted: the VM runs on the source."""

    code = "migration_timed_out"


Action = Literal["abort", "pause", "postcopy"]


@dataclass
class Deadlines:
    """A running live migration's two deadlines (KubeVirt's): it must end within
    `completion_s`, and the data remaining must shrink at least every `progress_s`. At
    the first deadline missed, `action` runs: abort (raise: the adapter aborts libvirt's
    job), pause the VM (a paused guest dirties no memory, so the copy converges), or
    switch to post-copy. Any deadline missed after that aborts: an action runs once.
    `watch` is called with libvirt's job statistics every half second or so."""

    completion_s: float
    progress_s: float
    action: Action
    pause: Callable[[], None]
    postcopy: Callable[[], None]
    clock: Callable[[], float] = time.monotonic
    fired: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.t0 = self.last_progress = self.clock()
        self.lowest: int | None = None

    def watch(self, stats: dict[str, Any]) -> None:
        now = self.clock()
        remaining = stats.get("data_remaining")
        if remaining is not None and (self.lowest is None or int(remaining) < self.lowest):
            self.lowest = int(remaining)
            self.last_progress = now
        missed = {}
        if now - self.t0 > self.completion_s:
            missed["completion"] = f"not done within {self.completion_s:g} s"
        if now - self.last_progress > self.progress_s:
            missed["progress"] = (
                f"no progress for {self.progress_s:g} s (data remaining {self.lowest} B)"
            )
        if any(f["action"] == "postcopy" for f in self.fired):
            return  # in post-copy the VM runs on the target: libvirt cannot go back
        for f in self.fired:  # a deadline's action runs once; the other one still holds
            missed.pop(f["deadline"], None)
        if not missed:
            return
        which, why = next(iter(missed.items()))
        action = self.action if not self.fired else "abort"
        self.fired.append({"deadline": which, "action": action, "at_s": round(now - self.t0, 1)})
        if action == "pause":
            self.pause()
            self.last_progress = now  # the paused VM gets its own progress_s to converge
            return
        if action == "postcopy":
            try:
                self.postcopy()
                self.last_progress = now
                return
            except Exception as e:  # no post-copy here (QEMU, kernel, flags): abort instead
                self.fired[-1]["action"] = "abort"
                self.fired[-1]["postcopy_error"] = str(e)[:200]
        instead = ""
        if "postcopy_error" in self.fired[-1]:
            instead = f" (post-copy could not be used: {self.fired[-1]['postcopy_error']})"
        raise MigrationTimedOut(
            f"live migration {why}: aborted, the VM runs on the source{instead}"
        )
