"""Placement: the one function that chooses a server for a VM (create, HA relocation; next
migration and imports)."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import HypervisorUnavailable, NoCapacity
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
) -> Outputs:
    """The server of `pool` (or of `candidates`) with the most free memory that fits
    `need_mib` (and whose CPUs hold `pinning`, a pinned VM's). Servers that cannot be
    reached or are in maintenance are skipped, never fatal while another has room; the
    outputs record why each server was or was not chosen.

    Pure choice: nothing changes on a hypervisor, so running it again is harmless.
    """
    servers = (
        list(candidates)
        if candidates is not None
        else ctx.run(ctx.runtime.inventory.pool(pool)).servers
    )
    skipped = set(exclude)
    maintenance = ctx.run(ctx.runtime.servers.in_maintenance(servers))
    best: tuple[int, str] | None = None
    considered: dict[str, str] = {}
    for name in servers:
        if name in skipped:
            considered[name] = "excluded"
            continue
        if name in maintenance:
            considered[name] = "in maintenance"
            continue
        try:
            hv = ctx.hypervisor(name, probe_s=PROBE_S)
            top = max((c for cpus in (pinning or {}).values() for c in cpus), default=-1)
            if top >= 0 and top >= (ncpus := hv.host_cpus()):
                considered[name] = f"the VM's pinning uses CPU {top}, the server has {ncpus}"
                continue
            free = hv.memory_free_mib()
        except HypervisorUnavailable as e:
            considered[name] = f"unreachable ({e.message[:120]})"
            continue
        finally:
            ctx.check()
        considered[name] = f"{free} MiB free"
        if free >= need_mib and (best is None or free > best[0]):
            best = (free, name)
    if best is None:
        detail = "; ".join(f"{k}: {v}" for k, v in considered.items()) or "no servers"
        raise NoCapacity(f"no server of pool {pool} has {need_mib} MiB free ({detail})")
    return {"server": best[1], "placement": considered}
