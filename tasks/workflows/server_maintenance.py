"""`server.maintenance` and `server.activate`.

Maintenance (Oracle VM's "maintenance mode"):

1. `enter_maintenance`: the server is marked, so placement and migration pre-checks skip
   it from now on (kept after the job: an aborted or failed evacuation leaves the server
   in maintenance; `server.activate` ends it).
2. `maintenance_plan`: each VM on the server with what happens to it (its strategy: a
   running VM live-migrated, a stopped one moved cold, or shut down and started
   elsewhere, or shut down and left) and the target chosen, or why there is none: the
   migration pre-checks (`judge`), with the memory of the VMs planned for a target
   counted against it. A dry run is this step alone, without the mark.
3. `evacuate`: the moves as child jobs (`vm.migrate`, `vm.stop`), at most `parallel` at a
   time (the pool's migration limits hold as well). It waits in rounds without a worker:
   each child's end (`job.child_ended`) starts the next. Its outputs show each VM's job and
   state. An abort stops it starting moves (those running finish). It fails, naming them,
   if any VM did not leave.
"""

from __future__ import annotations

from typing import Any, cast

from orchestrator.errors import Permanent
from orchestrator.jobs.checks import PinningWish
from schemas import event_types as et
from schemas.inventory import Vm, VmState
from schemas.jobs import JobLinks
from schemas.requests import (
    JobRequest,
    MigrateVm,
    ServerActivate,
    ServerMaintenance,
    StopVm,
)
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.steps.migration import judge

ROUND_TIMEOUT_S = 6 * 3600.0  # a round of the evacuation: until one of its moves ends
_ACTIVE = (VmState.RUNNING, VmState.SUSPENDED)


class EvacuationIncomplete(Permanent):
    code = "evacuation_incomplete"


def _enter(ctx: StepContext) -> Outputs:
    req = cast(ServerMaintenance, ctx.request)
    info = {"job": ctx.job.id, "by": ctx.job.submitted_by, "reason": req.reason}
    ctx.run(
        ctx.runtime.servers.enter_maintenance(req.server, info, et.SOURCE_ENGINE, fence=ctx.fence)
    )
    return {"server": req.server, "maintenance": True}


def _pin_wish(req: ServerMaintenance, vm: Vm) -> PinningWish:
    if not vm.pinning or req.pinned_vms == "refuse":
        return None
    return "drop" if req.pinned_vms == "drop" else vm.pinning


def _plan(ctx: StepContext) -> Outputs:
    req = cast(ServerMaintenance, ctx.request)
    server = ctx.run(ctx.runtime.inventory.server(req.server))
    pool = ctx.run(ctx.runtime.inventory.pool(server.pool))
    vms = ctx.run(ctx.runtime.inventory.vms_on(req.server))
    states = ctx.hypervisor(req.server).domain_states()
    others = [s for s in pool.servers if s != req.server]
    maintenance = ctx.run(ctx.runtime.servers.in_maintenance(others))
    planned: dict[str, int] = {}  # memory of the VMs planned to move live to each target
    names_to: dict[str, set[str]] = {}  # ...and the names of all planned there
    seen: dict[str, Any] = {}  # each server's facts, read once for the whole plan
    plan: dict[str, dict[str, Any]] = {}
    for vm in vms:
        raw = states.get(vm.id)
        state = raw[1] if raw else None
        strategy = req.vms.get(vm.id) or req.vms.get(vm.name) or req.strategy
        entry: dict[str, Any] = {"name": vm.name, "state": state.value if state else None}
        running = state in _ACTIVE
        if state is None:
            plan[vm.id] = {**entry, "action": "none", "reason": "not defined on the server"}
            continue
        if strategy == "stop":
            action = "stop" if running else "none"
            plan[vm.id] = {**entry, "action": action, "reason": "stays on the server, stopped"}
            continue
        action = ("live" if strategy == "migrate" else "shutdown_cold") if running else "cold"
        live = action == "live"
        wish = _pin_wish(req, vm)
        verdicts = [
            judge(
                ctx, vm, pool, s, live=live, pinning=wish, maintenance=maintenance,
                planned_there=names_to.get(s, set()), seen=seen,
            )
            for s in others
        ]  # fmt: skip
        why = {v.server: v.reason for v in verdicts}
        fit = []
        for v in verdicts:
            room = v.free_mib - planned.get(v.server, 0)
            if v.ok and live and room < vm.memory_mib:
                why[v.server] = f"{room} MiB free after the VMs planned for it"
            elif v.ok:
                fit.append(v)
        if not fit:
            detail = "; ".join(f"{k}: {v}" for k, v in why.items()) or "no other server"
            plan[vm.id] = {**entry, "action": action, "target": None, "reason": detail}
            continue
        best = max(fit, key=lambda v: v.free_mib - planned.get(v.server, 0))
        names_to.setdefault(best.server, set()).add(vm.name)
        if live:
            planned[best.server] = planned.get(best.server, 0) + vm.memory_mib
        plan[vm.id] = {**entry, "action": action, "target": best.server, "reason": why[best.server]}
    unplaced = sorted(p["name"] for p in plan.values() if _unplaced(p))
    return {"server": req.server, "plan": plan, "without_target": unplaced}


def _unplaced(entry: dict[str, Any]) -> bool:
    """A VM that should move but has no target."""
    return entry["action"] in ("live", "cold", "shutdown_cold") and not entry.get("target")


def _child_request(
    req: ServerMaintenance, vm_id: str, entry: dict[str, Any], pinning: Any
) -> JobRequest:
    if entry["action"] == "stop":
        return StopVm(kind="vm.stop", vm=vm_id)
    pin: dict[str, Any] = {}
    if pinning and entry["action"] == "live":
        pin = {"drop_pinning": True} if req.pinned_vms == "drop" else {"pinning": pinning}
    return MigrateVm(
        kind="vm.migrate",
        vm=vm_id,
        target_server=entry["target"],
        live=entry["action"] == "live",
        shutdown=entry["action"] == "shutdown_cold",
        **pin,
    )


def _evacuate(ctx: StepContext) -> Outputs | Wait:
    """One round: look at the moves started, start more while fewer than `parallel` run,
    then wait for one to end; done when every move has ended."""
    req = cast(ServerMaintenance, ctx.request)
    since = ctx.stream_position()
    plan: dict[str, dict[str, Any]] = ctx.outputs["plan"]
    status: dict[str, dict[str, Any]] = dict(ctx.outputs.get("vms") or {})
    movable = [v for v, e in plan.items() if e["action"] != "none" and not _unplaced(e)]
    started = [v for v in movable if status.get(v, {}).get("job")]
    jobs = ctx.run(ctx.runtime.jobs.get_many([status[v]["job"] for v in started]))
    by_id = {j.id: j for j in jobs}
    for v in started:
        job = by_id.get(status[v]["job"])
        status[v] = {**status[v], "state": job.state.value if job else "gone"}
        if job is not None and job.error is not None:
            status[v]["error"] = job.error.message
    running = sum(1 for v in started if not _ended(status[v]["state"]))
    svc = ctx.runtime.services
    for v in movable:
        if running >= req.parallel:
            break
        if v in status:
            continue
        vm = ctx.run(svc.inventory.find_vm(v))
        if vm is None or vm.server != req.server:
            status[v] = {"name": plan[v]["name"], "state": "left", "job": None}
            continue
        child, _ = ctx.run(
            svc.submitter.submit(
                _child_request(req, v, plan[v], vm.pinning),
                submitted_by=f"job:{ctx.job.id}",
                idem_key=f"evacuate:{v}",
                idem_scope=f"job:{ctx.job.id}",
                links=JobLinks(parent_job=ctx.job.id),
                internal=True,
            )
        )
        status[v] = {
            "name": plan[v]["name"],
            "action": plan[v]["action"],
            "target": plan[v].get("target"),
            "job": child.id,
            "state": child.state.value,
        }
        running += 0 if _ended(child.state.value) else 1
    out = {"vms": status}
    if len(status) < len(movable) or running:
        return Wait(
            types=[et.JOB_CHILD_ENDED],
            subject=ctx.job.id,
            since=since,
            timeout_s=ROUND_TIMEOUT_S,
            outputs=out,
        )
    stuck = sorted(
        f"{e['name']} ({status[v].get('error') or status[v]['state']})"
        for v, e in plan.items()
        if v in status and status[v]["state"] not in ("succeeded", "left")
    )
    stuck += sorted(
        f"{e['name']} (no target: {e['reason']})" for e in plan.values() if _unplaced(e)
    )
    if stuck:
        raise EvacuationIncomplete(
            f"{len(stuck)} VM(s) did not leave {req.server}, which stays in maintenance: "
            + "; ".join(stuck)
        )
    return out


def _ended(state: str) -> bool:
    return state in ("succeeded", "failed", "aborted", "gone", "left")


def _activate(ctx: StepContext) -> Outputs:
    req = cast(ServerActivate, ctx.request)
    info = {"job": ctx.job.id, "by": ctx.job.submitted_by, "reason": req.reason}
    was = ctx.run(
        ctx.runtime.servers.leave_maintenance(req.server, info, et.SOURCE_ENGINE, fence=ctx.fence)
    )
    return {"server": req.server, "was_in_maintenance": was}


ENTER = Step("enter_maintenance", _enter, None, "mark the server: placement skips it")
PLAN = Step("maintenance_plan", _plan, None, "each VM's move and target, or why none")
EVACUATE = Step("evacuate", _evacuate, None, "move the VMs away, a few at a time", resume=_evacuate)


def maintenance_steps(req: ServerMaintenance) -> list[Step]:
    return [PLAN] if req.dry_run else [ENTER, PLAN, EVACUATE]


def activate_steps(_req: ServerActivate) -> list[Step]:
    return [Step("activate", _activate, None, "end the server's maintenance")]
