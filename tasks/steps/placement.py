"""Placement: the one function that chooses a server for a VM (create, clone, HA
relocation), and the hold a migration takes on the target it chose (`hold`)."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import HypervisorUnavailable, NoCapacity
from orchestrator.jobs.checks import pinning_problem
from tasks.step import Outputs, StepContext

PROBE_S = 5.0  # a server that does not answer within this is skipped as "unreachable"


def choose_server(
    ctx: StepContext,
    pool: str,
    need_mib: int,
    *,
    candidates: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    pinning: dict[str, list[int]] | None = None,
    vcpus: int = 1,
    place_vm: str | None = None,
) -> Outputs:
    """The server of `pool` (or of `candidates`) with the most free memory that fits
    `need_mib`, with at least `vcpus` CPUs (and whose CPUs hold `pinning`, a pinned VM's).
    Free memory is what the server's active domains leave, less what VMs placed there and
    not yet running hold. With `place_vm`, the VM is placed there too: the memory is held
    for it until its job ends or it runs, atomically, so concurrent creates never
    overcommit a server. Servers that cannot be reached or are in maintenance are skipped,
    never fatal while another has room; the outputs record why each server was or was not
    chosen.

    Choice and a placement only: nothing changes on a hypervisor, so running it again is
    harmless (a placement is the VM's own, held again).
    """
    servers = (
        list(candidates)
        if candidates is not None
        else ctx.run(ctx.runtime.inventory.pool(pool)).servers
    )
    skipped = set(exclude)
    maintenance = ctx.run(ctx.runtime.servers.in_maintenance(servers))
    partners = partners_of(ctx, pool, place_vm) if place_vm else {}
    fits: list[tuple[int, str, int, set[str]]] = []  # (free, server, base free, active)
    considered: dict[str, str] = {}
    for name in servers:
        if name in skipped:
            considered[name] = "excluded"
            continue
        if name in maintenance:
            considered[name] = "in maintenance"
            continue
        if partners and (there := ctx.run(ctx.runtime.servers.vms_there(name, set(partners)))):
            considered[name] = clash(partners, there)
            continue
        try:
            hv = ctx.hypervisor(name, probe_s=PROBE_S)
            if pinning or vcpus > 1:  # a single unpinned vCPU fits any server
                ncpus = hv.host_cpus()
                if vcpus > ncpus:
                    considered[name] = f"{ncpus} CPUs, the VM has {vcpus} vCPUs"
                    continue
                problem = pinning_problem(pinning or {}, vcpus, ncpus)
                if problem:
                    considered[name] = f"the VM's pinning: {problem}"
                    continue
            base, active = hv.memory_use()
        except HypervisorUnavailable as e:
            considered[name] = f"unreachable ({e.message[:120]})"
            continue
        finally:
            ctx.check()
        held = ctx.run(ctx.runtime.servers.placed(name, active))
        free = base - held
        considered[name] = f"{free} MiB free" + (
            f" ({held} MiB placed, not yet running)" if held else ""
        )
        if free >= need_mib:
            fits.append((free, name, base, active))
    # the most free first; on a tie, the pool's order (sorted is stable)
    for _free, name, base, active in sorted(fits, key=lambda f: -f[0]):
        if place_vm is None:
            return {"server": name, "placement": considered}
        placed, held, partner = ctx.run(
            ctx.runtime.servers.place(
                name, place_vm, ctx.job.id, need_mib, base, active, set(partners)
            )
        )
        if placed:
            return {"server": name, "placement": considered}
        considered[name] = (
            clash(partners, {partner})
            if partner
            else f"{base - held} MiB free once a concurrent placement took its share"
        )
    detail = "; ".join(f"{k}: {v}" for k, v in considered.items()) or "no servers"
    if partners and any(v.startswith("anti-affinity") for v in considered.values()):
        raise NoCapacity(f"no server of pool {pool} can take the VM ({detail})")
    raise NoCapacity(f"no server of pool {pool} has {need_mib} MiB free ({detail})")


def partners_of(ctx: StepContext, pool: str, vm_id: str) -> dict[str, str]:
    """The VMs that `vm_id` must not share a server with (its pool's anti-affinity
    groups), id -> "group: name", those that exist (a member being created has its
    record reserved from its submission on, so a concurrent create counts too)."""
    groups = ctx.run(ctx.runtime.inventory.pool(pool)).anti_affinity_groups
    if not groups:
        return {}
    vm = ctx.run(ctx.runtime.inventory.find_vm(vm_id))
    if vm is None:
        return {}
    out: dict[str, str] = {}
    for g in groups:
        if vm.name not in g.vms:
            continue
        for name in g.vms:
            other = ctx.run(ctx.runtime.inventory.find_vm(name)) if name != vm.name else None
            if other is not None:
                out[other.id] = f"{g.name}: {name}"
    return out


def hold(
    ctx: StepContext, server: str, vm_id: str, need_mib: int, partners: dict[str, str]
) -> str | None:
    """Hold `need_mib` on `server` for `vm_id` (this job's placement), atomically with the
    anti-affinity check against `partners`: None when held, else why not. Asks the server
    for its memory now (a placement is judged against what its active domains leave)."""
    try:
        base, active = ctx.hypervisor(server, probe_s=PROBE_S).memory_use()
    except HypervisorUnavailable as e:
        return f"unreachable ({e.message[:120]})"
    finally:
        ctx.check()
    placed, held, partner = ctx.run(
        ctx.runtime.servers.place(server, vm_id, ctx.job.id, need_mib, base, active, set(partners))
    )
    if placed:
        return None
    if partner:
        return clash(partners, {partner})
    return f"{base - held} MiB free once placements not yet running are counted"


def clash(partners: dict[str, str], there: set[str]) -> str:
    return "anti-affinity group " + ", ".join(sorted(partners[p] for p in there)) + " is there"
