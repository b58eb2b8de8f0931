"""vm.ha_restart: bring an HA VM back after it stopped unexpectedly.

Restart it on its server; if that server is down, define it on another server of its pool
(cold: its disks are on the pool's shared repository) and start it there. At most
`ha_max_restarts` per `ha_window_s`: past that the VM is left stopped and an alert waits
for an operator.
"""

from __future__ import annotations

from orchestrator.errors import HypervisorUnavailable, Permanent, RetryLater
from tasks.step import Outputs, Step, StepContext
from tasks.steps.placement import choose_server
from tasks.steps.vm import START, domain_spec_of, observe, vm_of

GIB = 1024**3
PROBE_RETRY_S = 2.0  # how long a server may be unreachable before it counts as down


def _budget(ctx: StepContext) -> Outputs:
    """Count this restart in the VM's window (once per job: the job id is the member)."""
    vm = vm_of(ctx)
    s = ctx.runtime.settings
    n = ctx.run(ctx.runtime.services.ha.count_restart(vm.id, ctx.job.id, fence=ctx.fence))
    if n > s.ha_max_restarts:
        message = (
            f"vm {vm.name} stopped unexpectedly {n} times within {s.ha_window_s:g} s; "
            "left stopped until an operator acts"
        )
        alert = ctx.run(
            ctx.runtime.services.alerts.raise_alert(
                "vm.ha.exhausted", vm.id, message, job_id=ctx.job.id, fence=ctx.fence
            )
        )
        raise Permanent(f"{message} (alert {alert.id})")
    return {"ha_attempt": n}


def _down_long_enough(ctx: StepContext, server: str) -> None:
    """Relocate only from a server its agent has found unreachable for ha_relocate_after_s:
    a short blip (a libvirtd restart, a network hiccup) leaves the guests running, and
    starting a second copy of a running VM on shared disks would corrupt them. Until then
    the step is tried again (the server may answer by then)."""
    grace_s = ctx.runtime.settings.ha_relocate_after_s
    down_s = ctx.run(ctx.runtime.services.ha.server_down_for_s(server))
    if down_s < grace_s:
        raise RetryLater(
            f"server {server} unreachable for {down_s:.0f} s; relocating after {grace_s:g} s",
            delay_s=grace_s - down_s + 0.5,
        )


def _place(ctx: StepContext) -> Outputs:
    """Keep the VM on its server if that server answers; otherwise define it on the pool's
    server with the most free memory. Defining the same domain again changes nothing."""
    vm = vm_of(ctx)
    home = vm.server or ""
    if home:
        try:
            ctx.hypervisor(home, probe_s=PROBE_RETRY_S).domain_state(vm.id)
            return {"server": home, "relocated": False}
        except HypervisorUnavailable:
            _down_long_enough(ctx, home)
    placed = choose_server(ctx, vm.pool, vm.memory_mib, exclude=[home])
    target = placed["server"]
    hv = ctx.hypervisor(target)
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    for d in vm.disks:  # on shared storage the volume is there; the lab's servers need it made
        hv.create_volume(pool.repository.name, d.volume, GIB)
    ctx.expect(vm.id, ["vm.lifecycle.defined"])
    hv.define(domain_spec_of(vm, {"job": ctx.job.id, "pool": vm.pool}))
    moved = vm.model_copy(update={"server": target})
    ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
    observe(ctx, vm, hv)
    return {"server": target, "relocated": True, "from_server": home, **placed}


def steps(_req: object) -> list[Step]:
    return [
        Step("ha_budget", _budget, None, "count the restart against the VM's HA budget"),
        Step("ha_place", _place, None, "keep the VM on its server, or move it if that is down"),
        START,
    ]
