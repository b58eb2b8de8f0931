"""`vm.migrate`: move a VM to another server of its pool, live (it keeps running) or cold.

1. `migration_plan`: the source (the server the VM is on), the mode (live when the VM runs,
   unless the request says otherwise) and the target: the one asked for, or the server
   with most free memory that passes every pre-check (`judge`), held there like a
   create's placement (memory and anti-affinity, atomically).
2. `migration_slot`: a slot under the pool's and the source's migration limits; while none
   is free the job waits (no worker held) for a migration holding one to end, and says
   which.
3. (`shutdown`: stop the VM first.)
4. `migrate`: live, libvirt migrates the running domain (shared storage: no disk copy) and
   undefines it on the source, watched by the completion and no-progress deadlines; cold,
   the domain is defined on the target and undefined on the source. The events this
   causes on both servers are expected, so they are the job's: no HA restart for the
   source's `stopped (migrated)`. Then the VM's record names the target. Converges: a
   domain already on the target (a re-run after a crash) is not migrated again.
5. (`shutdown`: start it on the target.)

To another pool (`target_pool`), step 4 is the cold move of `vm_move_pool`: the disks are
copied, the VM defined there, switched, the source disks deleted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from orchestrator.errors import HypervisorError, MigrationRefused, RetryLater
from orchestrator.jobs.checks import PinningWish, as_pinning, target_pinning
from schemas import event_types as et
from schemas.inventory import VmState
from schemas.jobs import JobState
from schemas.requests import MigrateVm
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.steps.migration import Deadlines, free_slot, judge, mapped
from tasks.steps.placement import hold, partners_of
from tasks.steps.vm import START, domain_spec_of, observe, stop_step, vm_of
from tasks.workflows.vm_move_pool import MOVE_TO_POOL
from workers.hypervisor.adapter import Hypervisor

ACTIVE = (VmState.RUNNING, VmState.SUSPENDED)
ENDED = [et.job_state(s.value) for s in JobState if s.terminal]


def _wish(req: MigrateVm) -> PinningWish:
    return "drop" if req.drop_pinning else req.pinning


def _plan(ctx: StepContext) -> Outputs:
    req = cast(MigrateVm, ctx.request)
    vm = vm_of(ctx)
    if not vm.server:
        raise MigrationRefused(f"vm {vm.name} is not placed on a server")
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    state = ctx.hypervisor(vm.server).domain_state(vm.id)
    if state is None:
        raise HypervisorError(f"vm {vm.name} is not defined on its server {vm.server}")
    cold = req.shutdown or bool(req.target_pool)  # another pool's storage: a copy, cold
    live = not cold and (req.live if req.live is not None else state in ACTIVE)
    if live and state not in ACTIVE:
        raise MigrationRefused(
            f"vm {vm.name} is {state.value}: a live migration needs it running "
            "(live=false moves it cold)"
        )
    if not live and not req.shutdown and state in ACTIVE:
        raise MigrationRefused(
            f"vm {vm.name} is {state.value}: a cold migration needs it stopped "
            "(shutdown=true stops it first and starts it on the target)"
        )
    into = pool
    if req.target_pool:  # judged as the VM will be there: on that pool's networks
        into = ctx.run(ctx.runtime.inventory.pool(req.target_pool))
        vm = mapped(vm, req)
    candidates = [req.target_server] if req.target_server else into.servers
    maintenance = ctx.run(ctx.runtime.servers.in_maintenance(candidates))
    verdicts = [
        judge(ctx, vm, into, s, live=live, pinning=_wish(req), maintenance=maintenance)
        for s in candidates
    ]
    placement = {v.server: v.reason for v in verdicts}
    fit = [v for v in verdicts if v.ok]
    if not fit:
        detail = "; ".join(f"{k}: {v}" for k, v in placement.items()) or "no other server"
        raise MigrationRefused(f"no server can take vm {vm.name} ({detail})")
    # the most free memory first (live); the target is held like a create's placement
    # (memory, anti-affinity) in one atomic step, so two concurrent migrations, or a
    # migration and a create, never put two members of a group on one server
    need = vm.memory_mib if live or req.shutdown else 0
    partners = partners_of(ctx, into.name, vm.id)
    best = None
    for v in sorted(fit, key=lambda v: -v.free_mib):
        why = hold(ctx, v.server, vm.id, need, partners)
        if why is None:
            best = v
            break
        placement[v.server] = why
    if best is None:
        detail = "; ".join(f"{k}: {v}" for k, v in placement.items())
        raise MigrationRefused(f"no server can take vm {vm.name} ({detail})")
    return {
        "source": vm.server,
        "source_pool": pool.name,
        "target": best.server,
        "target_pool": into.name,
        "mode": "live" if live else "cold",
        "pinning": target_pinning(vm, _wish(req), live=live),
        "placement": placement,
    }


def _slot(ctx: StepContext) -> Outputs | Wait:
    """Take a migration slot, or wait for a migration holding one to end (then try again:
    `resume`). A re-run finds its own slot held."""
    s = ctx.runtime.settings
    vm = vm_of(ctx)
    since = ctx.stream_position()
    answer = ctx.run(
        ctx.runtime.servers.take_migration_slot(
            str(ctx.outputs["source_pool"]),
            ctx.job.id,
            str(ctx.outputs["source"]),
            per_pool=s.migrations_per_pool,
            per_server=s.migrations_per_server,
        )
    )
    if answer.taken:
        return {"slot": vm.pool}
    holders = answer.holders or {}
    if not holders:  # the holders ended between the answer and the look: try again soon
        raise RetryLater("a migration slot was freed meanwhile", delay_s=0.1)
    if answer.limit == "server":
        source = str(ctx.outputs["source"])
        ahead = sorted(j for j, srv in holders.items() if srv == source)
        limit = s.migrations_per_server
        why = f"{len(ahead)} migration(s) leave {source} already (limit {limit})"
    else:
        ahead = sorted(holders)
        limit = s.migrations_per_pool
        why = f"{len(ahead)} migration(s) run in pool {vm.pool} already (limit {limit})"
    return Wait(
        types=ENDED,
        subject=ahead[0],
        since=since,
        timeout_s=s.migration_slot_wait_s,
        outputs={"waiting_for_slot": why, "migrations_ahead": ahead},
    )


def _migrate(ctx: StepContext) -> Outputs:
    out = _move(ctx)
    free_slot(ctx)  # at once, not at the job's end: a migration waiting for it goes on
    return out


def _start_again(ctx: StepContext) -> None:
    """Undo of the stop before a cold move: the VM is started where its record says (the
    move failed: on the source)."""
    vm = vm_of(ctx)
    if vm.server:  # (a move switched to the target never comes back here: no_return)
        ctx.expect(vm.id, [et.VM_STARTED])
        ctx.hypervisor(vm.server).start(vm.id)


def _move(ctx: StepContext) -> Outputs:
    req = cast(MigrateVm, ctx.request)
    vm = vm_of(ctx)
    source, target = str(ctx.outputs["source"]), str(ctx.outputs["target"])
    pinning = ctx.outputs.get("pinning") or None
    if vm.server == target:  # done before (a re-run after the record was written)
        return {"server": target}
    src, dst = ctx.hypervisor(source), ctx.hypervisor(target)
    moved = vm.model_copy(update={"server": target, "pinning": pinning})
    out: Outputs = {"server": target}
    already = dst.domain_state(vm.id)
    if already is None:
        pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
        if ctx.outputs["mode"] == "live":
            for types in ([et.VM_SUSPENDED], [et.VM_STOPPED], [et.VM_DEFINED], [et.VM_STARTED]):
                ctx.expect(vm.id, types)
            ctx.expect(vm.id, [et.VM_RESUMED])
            dest = ctx.run(ctx.runtime.inventory.server(target))
            s = ctx.runtime.settings
            action = req.on_timeout or s.migration_on_timeout
            per_gib = req.completion_timeout_per_gib_s or s.migration_completion_per_gib_s
            refused: list[str] = []  # why post-copy cannot be used here, if it cannot

            def postcopy() -> None:
                if refused:
                    raise HypervisorError(f"post-copy refused by the hypervisor: {refused[0]}")
                src.start_postcopy(vm.id)

            deadlines = Deadlines(
                completion_s=per_gib * vm.memory_mib / 1024,
                progress_s=req.progress_timeout_s or s.migration_progress_timeout_s,
                action=action,
                pause=lambda: src.suspend(vm.id),
                postcopy=postcopy,
            )

            def progress(stats: dict[str, Any]) -> None:
                _report(ctx, stats)
                deadlines.watch(stats)

            try:
                src.migrate_live(
                    vm.id,
                    dest.uri,
                    dest_host=dest.migration_host,
                    assume_shared=pool.repository.assume_shared,
                    bandwidth_mib_s=req.bandwidth_mib_s,
                    timeout_s=s.libvirt_copy_timeout_s,
                    on_progress=progress,
                    pinning=None if pinning is None and not vm.pinning else as_pinning(pinning),
                    postcopy=action == "postcopy",
                    on_postcopy_refused=refused.append,
                )
            except Exception:
                # interrupted (an abort, a deadline) or failed: libvirt's migration job was
                # aborted, but it may have completed first. Where the domain is decides.
                if not _moved_anyway(ctx, vm.id, source, target):
                    if any(f["action"] == "pause" for f in deadlines.fired):
                        # paused to converge, then aborted: it runs on, on the source
                        _uninterrupted(ctx, source).resume(vm.id)
                    raise
                ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
                return {"server": target, "completed_before_abort": True}
            if deadlines.fired:
                out["deadlines"] = deadlines.fired
            if any(f["action"] == "pause" for f in deadlines.fired):
                # paused to converge: it was running, so it runs on the target
                ctx.expect(vm.id, [et.VM_RESUMED])
                dst.resume(vm.id)
        else:
            ctx.expect(vm.id, [et.VM_DEFINED])
            ctx.expect(vm.id, [et.VM_UNDEFINED])
            dst.define(domain_spec_of(moved, {"job": ctx.job.id, "pool": vm.pool}))
            src.undefine(vm.id)
    elif src.domain_state(vm.id) is not None and ctx.outputs["mode"] == "cold":
        src.undefine(vm.id)  # defined on the target by an earlier attempt
    ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
    state = observe(ctx, moved, dst)
    return {**out, "state": state.value if state else None}


def _moved_anyway(ctx: StepContext, vm_id: str, source: str, target: str) -> bool:
    """Whether the domain runs on `target` and is gone from `source`, asked without the
    step's interrupt (an abort must not stop this look)."""
    src, dst = _uninterrupted(ctx, source), _uninterrupted(ctx, target)
    return dst.domain_state(vm_id) in ACTIVE and src.domain_state(vm_id) is None


def _uninterrupted(ctx: StepContext, server: str) -> Hypervisor:
    """The server's adapter without the step's interrupt: what a step does after an abort
    was seen, to leave things right, must not be stopped by that abort."""
    return ctx.runtime.hypervisors.get(ctx.run(ctx.runtime.inventory.server(server)).uri)


def _report(ctx: StepContext, stats: dict[str, Any]) -> None:
    """libvirt's statistics of the migration job as the step's progress and detail."""
    total = int(stats.get("data_total") or 0)
    processed = int(stats.get("data_processed") or 0)
    detail = {
        "data_processed_bytes": processed,
        "data_remaining_bytes": int(stats.get("data_remaining") or 0),
        "data_total_bytes": total,
        "memory_dirty_rate_pages_s": int(stats.get("memory_dirty_rate") or 0),
        "memory_iteration": int(stats.get("memory_iteration") or 0),
        "elapsed_ms": int(stats.get("time_elapsed") or 0),
    }
    ctx.report(processed / total if total else 0.0, detail)


def _unhold(ctx: StepContext) -> None:
    """Undo of the plan: the target's placement goes (the VM runs where its record says)."""
    target = ctx.outputs.get("target")
    if target:
        ctx.run(ctx.runtime.servers.unplace(str(target), vm_of(ctx).id))


PLAN = Step("migration_plan", _plan, _unhold, "check the servers, choose and hold the target")
SLOT = Step(
    "migration_slot",
    _slot,
    free_slot,
    "take a slot under the migration limits (or wait for one)",
    resume=_slot,
)
MIGRATE = Step("migrate", _migrate, None, "move the VM to the target")


def steps(req: MigrateVm) -> list[Step]:
    stop = replace(
        stop_step(lambda ctx: cast(MigrateVm, ctx.request).shutdown_timeout_s), undo=_start_again
    )
    if req.target_pool:
        move = MOVE_TO_POOL
        return [PLAN, SLOT, stop, *move, START] if req.shutdown else [PLAN, SLOT, *move]
    if req.shutdown:
        return [PLAN, SLOT, stop, MIGRATE, START]
    return [PLAN, SLOT, MIGRATE]
