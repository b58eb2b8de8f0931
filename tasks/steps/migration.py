"""Migration pre-checks: whether a server can take a VM now, with the reason when not.

One function judges a server for a VM (`judge`); the migrate workflow uses it for the
target it is given or for the one placement chose. Each refusal names its check, so
that a job's error and its `placement` output say why, server by server.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import HypervisorUnavailable
from schemas.inventory import ServerPool, Vm
from tasks.step import StepContext

PROBE_S = 5.0  # a target that does not answer within this is "unreachable"


@dataclass(frozen=True)
class Verdict:
    server: str
    ok: bool
    reason: str  # why not, or what it has ("1234 MiB free")
    free_mib: int = 0  # memory free there (live checks only)


def judge(ctx: StepContext, vm: Vm, pool: ServerPool, server: str, *, live: bool) -> Verdict:
    """Can `server` take `vm` now (live or cold)? Checks: a server of the VM's pool, not
    the one the VM is on, reachable, its networks defined there, its repository active
    there, and (live) memory enough."""

    def no(reason: str) -> Verdict:
        return Verdict(server, False, reason)

    if server not in pool.servers:
        return no(f"not a server of pool {pool.name}")
    if server == vm.server:
        return no("the VM is on this server already")
    try:
        hv = ctx.hypervisor(server, probe_s=PROBE_S)
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
