"""Migration pre-checks and deadlines.

`judge` says whether a server can take a VM now, with the reason when not; the migrate
workflow, the maintenance plan and (later) the migration-targets listing use it. Each
refusal names its check, so that a job's error and its `placement` output say why,
server by server. `Deadlines` watches a running live migration the way KubeVirt does: a
completion deadline that scales with the VM's memory and a no-progress deadline, each
running the declared action once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import HypervisorUnavailable, Permanent
from schemas.inventory import ServerPool, Vm
from tasks.step import StepContext

PROBE_S = 5.0  # a target that does not answer within this is "unreachable"

PinningWish = dict[str, list[int]] | Literal["drop"] | None
"""What a request says about a pinned VM's pinning on the target: a new pinning, "drop"
it, or nothing (a live migration is then refused; a cold one keeps the VM's own)."""


@dataclass(frozen=True)
class Verdict:
    server: str
    ok: bool
    reason: str  # why not, or what it has ("1234 MiB free")
    free_mib: int = 0  # memory free there (live checks only)


def as_pinning(p: dict[str, list[int]] | None) -> dict[int, list[int]]:
    """A pinning from its JSON form (string keys) to vCPU numbers."""
    return {int(k): list(v) for k, v in (p or {}).items()}


def pinning_problem(pinning: dict[str, list[int]], vcpus: int, ncpus: int) -> str | None:
    """Why `pinning` does not fit a VM of `vcpus` on a server of `ncpus` CPUs, or None."""
    bad_vcpus = sorted(int(k) for k in pinning if int(k) >= vcpus)
    if bad_vcpus:
        return f"vCPU {bad_vcpus[0]} does not exist (the VM has {vcpus})"
    top = max((c for cpus in pinning.values() for c in cpus), default=-1)
    if top >= ncpus:
        return f"physical CPU {top} does not exist there (the server has {ncpus}: 0-{ncpus - 1})"
    return None


def target_pinning(vm: Vm, wish: PinningWish, *, live: bool) -> dict[str, list[int]] | None:
    """The pinning the VM gets on the target ({} unpinned), or None when a pinned VM may
    not move this way."""
    if wish == "drop":
        return {}
    if wish is not None:
        return wish
    if not vm.pinning:
        return {}
    return None if live else vm.pinning


def judge(
    ctx: StepContext,
    vm: Vm,
    pool: ServerPool,
    server: str,
    *,
    live: bool,
    pinning: PinningWish = None,
    maintenance: set[str] | frozenset[str] = frozenset(),
) -> Verdict:
    """Can `server` take `vm` now (live or cold)? Checks: a server of the VM's pool, not
    the one the VM is on, not in maintenance, the VM's pinning (a pinned VM moves live
    only with a pinning for the target, or with its pinning dropped; any pinning must fit
    the target's CPUs), reachable, its networks defined there, its repository active
    there, and (live) memory enough."""

    def no(reason: str) -> Verdict:
        return Verdict(server, False, reason)

    if server not in pool.servers:
        return no(f"not a server of pool {pool.name}")
    if server == vm.server:
        return no("the VM is on this server already")
    if server in maintenance:
        return no("in maintenance")
    wanted = target_pinning(vm, pinning, live=live)
    if wanted is None:
        return no(
            "the VM is pinned to physical CPUs (hard partitioning): a live migration needs "
            "a pinning for the target (pinning) or drop_pinning"
        )
    try:
        hv = ctx.hypervisor(server, probe_s=PROBE_S)
        if wanted:
            problem = pinning_problem(wanted, vm.vcpus, hv.host_cpus())
            if problem:
                return no(f"pinning: {problem}")
        networks = hv.networks()
        missing = sorted({n.network for n in vm.nics} - networks)
        if missing:
            return no(f"network(s) {', '.join(missing)} not defined there")
        if pool.repository.name not in hv.storage_pools():
            return no(f"repository {pool.repository.name} (the VM's disks) not available there")
        free = hv.memory_free_mib() if live else None
    except HypervisorUnavailable as e:
        return no(f"unreachable ({e.message[:120]})")
    finally:
        ctx.check()
    if free is not None and free < vm.memory_mib:
        return no(f"{free} MiB free, the VM needs {vm.memory_mib} MiB")
    if free is None:
        return Verdict(server, True, "can define it")
    return Verdict(server, True, f"{free} MiB free", free)


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
        raise MigrationTimedOut(f"live migration {why}: aborted, the VM runs on the source")
