"""Whether a server can take a VM: the migration pre-checks as one pure function.

`assess` decides from what is known of the target (its `ServerFacts`, whether it is in
maintenance, why it cannot be reached). A worker passes the facts it has just read from
libvirt (`tasks.steps.migration.judge`); the API passes those the server's agent recorded,
to show every server of a pool with why it can or cannot take a VM
(`GET /v1/vms/{id}/migration-targets`). Both give the same answers for the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.inventory import ServerFacts, ServerPool, Vm

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


def cpu_group(pool: ServerPool, server: str | None) -> str | None:
    """The CPU compatibility group of `server` in `pool`, if it is in one."""
    return next((g.name for g in pool.cpu_groups if server in g.servers), None)


def anti_affinity_clash(pool: ServerPool, vm: Vm, there: set[str]) -> str | None:
    """A refusal if a VM named in one of `vm`'s anti-affinity groups is on the server
    (`there`: the names of the VMs placed on it)."""
    for g in pool.anti_affinity_groups:
        if vm.name in g.vms:
            clash = sorted(set(g.vms) & there - {vm.name})
            if clash:
                return f"anti-affinity group {g.name}: {', '.join(clash)} runs there"
    return None


def precheck(
    vm: Vm,
    pool: ServerPool,
    server: str,
    *,
    live: bool,
    pinning: PinningWish = None,
    maintenance: bool = False,
    vms_there: set[str] | frozenset[str] = frozenset(),
) -> str | None:
    """The refusals that need nothing from the server itself, or None. `pool` is the
    target's pool (the VM's own, but for a cold move to another pool)."""
    if server not in pool.servers:
        return f"not a server of pool {pool.name}"
    if server == vm.server:
        return "the VM is on this server already"
    if maintenance:
        return "in maintenance"
    if live and pool.name == vm.pool:
        have, want = cpu_group(pool, vm.server), cpu_group(pool, server)
        if have != want:
            return (
                f"CPU compatibility group {want or '(none)'}, the VM's server is in "
                f"{have or '(none)'}: a live migration stays inside one group"
            )
    clash = anti_affinity_clash(pool, vm, set(vms_there))
    if clash:
        return clash
    if target_pinning(vm, pinning, live=live) is None:
        return (
            "the VM is pinned to physical CPUs (hard partitioning): a live migration needs "
            "a pinning for the target (pinning) or drop_pinning"
        )
    return None


def assess(
    vm: Vm,
    pool: ServerPool,
    server: str,
    facts: ServerFacts | None,
    *,
    live: bool,
    pinning: PinningWish = None,
    maintenance: bool = False,
    unreachable: str | None = None,
    vms_there: set[str] | frozenset[str] = frozenset(),
) -> Verdict:
    """Can `server` take `vm` now (live or cold)? In order: a server of the VM's pool,
    not the one the VM is on, not in maintenance, the VM's pinning (a pinned VM moves live
    only with a pinning for the target, or with its pinning dropped; any pinning must fit
    the target's CPUs), the same CPU compatibility group (live), no VM of its
    anti-affinity groups there (`vms_there`: names), reachable, its networks defined
    there, its repository active there, and (live) memory enough."""

    def no(reason: str) -> Verdict:
        return Verdict(server, False, reason)

    early = precheck(
        vm, pool, server, live=live, pinning=pinning, maintenance=maintenance, vms_there=vms_there
    )
    if early:
        return no(early)
    if unreachable is not None or facts is None:
        return no(f"unreachable ({(unreachable or 'nothing known of it')[:120]})")
    wanted = target_pinning(vm, pinning, live=live) or {}
    if wanted:
        problem = pinning_problem(wanted, vm.vcpus, facts.cpus)
        if problem:
            return no(f"pinning: {problem}")
    missing = sorted({n.network for n in vm.nics} - set(facts.networks))
    if missing:
        return no(f"network(s) {', '.join(missing)} not defined there")
    repos = {d.repository or pool.repository.name for d in vm.disks} | {pool.repository.name}
    absent = sorted(repos - set(facts.storage_pools))
    if absent:
        return no(f"repository {', '.join(absent)} (the VM's disks) not available there")
    if not live:
        return Verdict(server, True, "can define it")
    free = facts.memory_free_mib
    if free < vm.memory_mib:
        return no(f"{free} MiB free, the VM needs {vm.memory_mib} MiB")
    return Verdict(server, True, f"{free} MiB free", free)
