"""vm.ha_restart: bring an HA VM back after it stopped unexpectedly.

Restart it on its server; if that server is down, define it on another server of its pool
(cold: its disks are on the pool's shared repository) and start it there. At most
`ha_max_restarts` per `ha_window_s`: past that the VM is left stopped and an alert waits
for an operator.
"""

from __future__ import annotations

import time

from orchestrator.errors import HypervisorUnavailable, NoCapacity, Permanent, RetryLater
from orchestrator.store import keys
from orchestrator.store.alerts import AlertStore
from tasks.step import Outputs, Step, StepContext
from tasks.steps.vm import START, domain_spec_of, observe, vm_of
from workers.hypervisor.adapter import Hypervisor
from workers.hypervisor.xml import domain_xml

GIB = 1024**3
PROBE_RETRY_S = 2.0  # how long a server may be unreachable before it counts as down


def _budget(ctx: StepContext) -> Outputs:
    """Count this restart in the VM's window (once per job: the job id is the member)."""
    vm = vm_of(ctx)
    s = ctx.runtime.settings
    key = keys.ha_restarts(vm.id)
    now_ms = int(time.time() * 1000)

    async def count() -> int:
        r = ctx.runtime.redis
        pipe = r.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now_ms - int(s.ha_window_s * 1000))
        pipe.zadd(key, {ctx.job.id: now_ms}, nx=True)
        pipe.zcard(key)
        pipe.expire(key, int(s.ha_window_s) + 60)
        return int((await pipe.execute())[2])

    n = ctx.run(count())
    if n > s.ha_max_restarts:
        message = (
            f"vm {vm.name} stopped unexpectedly {n} times within {s.ha_window_s:g} s; "
            "left stopped until an operator acts"
        )
        alert = ctx.run(
            AlertStore(ctx.runtime.redis, s.event_stream_maxlen).raise_alert(
                "vm.ha.exhausted", vm.id, message, job_id=ctx.job.id
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
    since = ctx.run(ctx.runtime.redis.get(keys.server_down(server)))
    down_s = (time.time() * 1000 - int(since)) / 1000 if since else 0.0
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
    srv = ctx.run(ctx.runtime.inventory.server(home)) if home else None
    if srv is not None:
        probe = Hypervisor(srv.uri, retry_s=PROBE_RETRY_S)
        try:
            probe.domain_state(vm.id)
            return {"server": home, "relocated": False}
        except HypervisorUnavailable:
            _down_long_enough(ctx, home)
        finally:
            probe.close()
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    best: tuple[int, str] | None = None
    for name in pool.servers:
        if name == home:
            continue
        try:
            free = ctx.hypervisor(name).memory_free_mib()
        except HypervisorUnavailable:
            continue
        if free >= vm.memory_mib and (best is None or free > best[0]):
            best = (free, name)
    if best is None:
        raise NoCapacity(f"no other server of pool {vm.pool} can take vm {vm.name}")
    target = best[1]
    hv = ctx.hypervisor(target)
    for d in vm.disks:  # on shared storage the volume is there; the lab's servers need it made
        hv.create_volume(pool.repository.name, d.volume, GIB)
    ctx.expect(vm.id, ["vm.lifecycle.defined"])
    hv.define(
        domain_xml(domain_spec_of(vm, hv.domain_type(), {"job": ctx.job.id, "pool": vm.pool}))
    )
    ctx.run(ctx.runtime.inventory.save_vm(vm.model_copy(update={"server": target})))
    observe(ctx, vm, hv)
    return {"server": target, "relocated": True, "from_server": home}


def steps(_req: object) -> list[Step]:
    return [
        Step("ha_budget", _budget, None, "count the restart against the VM's HA budget"),
        Step("ha_place", _place, None, "keep the VM on its server, or move it if that is down"),
        START,
    ]
