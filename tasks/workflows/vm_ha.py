"""vm.ha_restart: bring an HA VM back after it stopped unexpectedly.

Restart it on its server; if that server is down, define it on another server of its pool
(cold: its disks are on the pool's shared repository) and start it there. At most
`ha_max_restarts` per `ha_window_s`: past that the VM is left stopped and an alert waits
for an operator.

A server that does not answer may still run its guests (its libvirtd crashed, its
management network is down): starting the VM elsewhere then gives two copies writing one
disk (review C1). So the VM moves only with proof that the old copy is off (`ha_fence`):
the configured fence command powered the server off, or an operator acknowledged that it
is down (`POST /v1/servers/{name}/fence`). Without either, HA raises a `server.unfenced`
alert and waits, holding no worker, for that proof or for the server to answer again.
"""

from __future__ import annotations

from orchestrator.errors import HypervisorUnavailable, Permanent, RetryLater
from schemas import event_types as et
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.steps.disks import repository_of
from tasks.steps.fencing import run_fence
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


def _answers(ctx: StepContext, server: str) -> bool:
    try:
        ctx.hypervisor(server, probe_s=PROBE_RETRY_S).memory_mib()
        return True
    except HypervisorUnavailable:
        return False


def _proof(ctx: StepContext, home: str) -> Outputs | None:
    """What says the VM's copy on `home` is off: `home` answers (the VM restarts there),
    or a fencing proof recorded since it was last up."""
    if not home or _answers(ctx, home):
        return {"home_answers": bool(home)}
    proof = ctx.run(ctx.runtime.services.ha.fenced(home))
    return None if proof is None else {"fenced": proof}


def _fence(ctx: StepContext) -> Outputs | Wait:
    """Before the VM may start elsewhere: proof that its copy on its unreachable server is
    off. The fence command runs once per outage (its proof serves every VM of the server);
    without a command, or when it fails, an alert asks an operator, and the step waits."""
    vm = vm_of(ctx)
    home = vm.server or ""
    since = ctx.stream_position()  # before looking: a proof given meanwhile still counts
    found = _proof(ctx, home)
    if found is not None:
        return found
    _down_long_enough(ctx, home)
    s, ha = ctx.runtime.settings, ctx.runtime.services.ha
    outcome = None
    if s.fence_command:
        outcome = run_fence(s.fence_command, home, s.fence_timeout_s)
        if outcome["ok"]:
            proof = {"by": "fence_command", **outcome}
            ctx.run(ha.mark_fenced(home, proof, et.SOURCE_ENGINE, fence=ctx.fence))
            return {"fenced": proof}
    why = (
        "no fence command is configured"
        if outcome is None
        else (f"the fence command failed (exit {outcome['exit_code']}: {outcome['output'][:200]})")
    )
    ctx.run(
        ctx.runtime.services.alerts.raise_alert(
            et.SERVER_UNFENCED,
            home,
            f"vm {vm.name} is not started elsewhere: server {home} does not answer and "
            f"{why}; power it off and acknowledge (POST /v1/servers/{home}/fence), or "
            "bring it back",
            job_id=ctx.job.id,
            fence=ctx.fence,
        )
    )
    return Wait(
        types=[et.SERVER_FENCED, et.SERVER_UP],
        subject=home,
        since=since,
        timeout_s=s.ha_fence_wait_s,
        outputs={"fence_command": outcome} if outcome else {},
    )


def _fence_settled(ctx: StepContext) -> Outputs | None:
    vm = vm_of(ctx)
    return _proof(ctx, vm.server or "")


def _place(ctx: StepContext) -> Outputs:
    """Keep the VM on its server if that server answers; otherwise, with the proof that
    its copy there is off, define it on the pool's server with the most free memory.
    Defining the same domain again changes nothing."""
    vm = vm_of(ctx)
    home = vm.server or ""
    if home:
        if _answers(ctx, home):
            return {"server": home, "relocated": False}
        if ctx.run(ctx.runtime.services.ha.fenced(home)) is None:
            # it answered when `ha_fence` ran, and does not now: look again from the start
            raise RetryLater(f"server {home} stopped answering; fencing it first", delay_s=1)
    placed = choose_server(
        ctx, vm.pool, vm.memory_mib, exclude=[home], pinning=vm.pinning, vcpus=vm.vcpus,
        place_vm=vm.id,
    )  # fmt: skip
    target = placed["server"]
    hv = ctx.hypervisor(target)
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    for d in vm.disks:  # on shared storage the volume is there; the lab's servers need it made
        hv.create_volume(repository_of(pool, d), d.volume, GIB)
    ctx.expect(vm.id, ["vm.lifecycle.defined"])
    hv.define(domain_spec_of(vm, {"job": ctx.job.id, "pool": vm.pool}))
    moved = vm.model_copy(update={"server": target})
    ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
    observe(ctx, vm, hv)
    return {"server": target, "relocated": True, "from_server": home, **placed}


def steps(_req: object) -> list[Step]:
    return [
        Step("ha_budget", _budget, None, "count the restart against the VM's HA budget"),
        Step(
            "ha_fence",
            _fence,
            None,
            "if its server is down: proof that the VM's copy there is off",
            settled=_fence_settled,
        ),
        Step("ha_place", _place, None, "keep the VM on its server, or move it if that is down"),
        START,
    ]
