"""`vm.migrate`: move a VM to another server of its pool, live (it keeps running) or cold.

1. `migration_plan`: the source (the server the VM is on), the mode (live when the VM runs,
   unless the request says otherwise) and the target: the one asked for, or the server
   with most free memory that passes every pre-check. Pure choice: changes nothing.
2. `migrate`: live, libvirt migrates the running domain (shared storage: no disk copy) and
   undefines it on the source; cold, the domain is defined on the target and undefined on
   the source. The events this causes on both servers are expected, so they are the
   job's: no HA restart for the source's `stopped (migrated)`. Then the VM's record names
   the target. Converges: a domain already on the target (a re-run after a crash) is not
   migrated again.
"""

from __future__ import annotations

from typing import Any, cast

from orchestrator.errors import HypervisorError, MigrationRefused
from schemas import event_types as et
from schemas.inventory import VmState
from schemas.requests import MigrateVm
from tasks.step import Outputs, Step, StepContext
from tasks.steps.migration import judge
from tasks.steps.vm import domain_spec_of, observe, vm_of

ACTIVE = (VmState.RUNNING, VmState.SUSPENDED)


def _plan(ctx: StepContext) -> Outputs:
    req = cast(MigrateVm, ctx.request)
    vm = vm_of(ctx)
    if not vm.server:
        raise MigrationRefused(f"vm {vm.name} is not placed on a server")
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    state = ctx.hypervisor(vm.server).domain_state(vm.id)
    if state is None:
        raise HypervisorError(f"vm {vm.name} is not defined on its server {vm.server}")
    live = req.live if req.live is not None else state in ACTIVE
    if live and state not in ACTIVE:
        raise MigrationRefused(
            f"vm {vm.name} is {state.value}: a live migration needs it running "
            "(live=false moves it cold)"
        )
    candidates = [req.target_server] if req.target_server else pool.servers
    verdicts = [judge(ctx, vm, pool, s, live=live) for s in candidates]
    placement = {v.server: v.reason for v in verdicts}
    fit = [v for v in verdicts if v.ok]
    if not fit:
        detail = "; ".join(f"{k}: {v}" for k, v in placement.items()) or "no other server"
        raise MigrationRefused(f"no server can take vm {vm.name} ({detail})")
    best = max(fit, key=lambda v: v.free_mib)  # the most free memory (live)
    return {
        "source": vm.server,
        "target": best.server,
        "mode": "live" if live else "cold",
        "placement": placement,
    }


def _migrate(ctx: StepContext) -> Outputs:
    req = cast(MigrateVm, ctx.request)
    vm = vm_of(ctx)
    source, target = str(ctx.outputs["source"]), str(ctx.outputs["target"])
    if vm.server == target:  # done before (a re-run after the record was written)
        return {"server": target}
    src, dst = ctx.hypervisor(source), ctx.hypervisor(target)
    already = dst.domain_state(vm.id)
    if already is None:
        pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
        if ctx.outputs["mode"] == "live":
            ctx.expect(vm.id, [et.VM_SUSPENDED])
            ctx.expect(vm.id, [et.VM_STOPPED])
            ctx.expect(vm.id, ["vm.lifecycle.defined"])
            ctx.expect(vm.id, [et.VM_STARTED])
            ctx.expect(vm.id, [et.VM_RESUMED])
            dest = ctx.run(ctx.runtime.inventory.server(target))
            try:
                src.migrate_live(
                    vm.id,
                    dest.uri,
                    dest_host=dest.migration_host,
                    assume_shared=pool.repository.assume_shared,
                    bandwidth_mib_s=req.bandwidth_mib_s,
                    timeout_s=ctx.runtime.settings.libvirt_copy_timeout_s,
                    on_progress=lambda stats: _report(ctx, stats),
                )
            except Exception:
                # interrupted (an abort, a deadline) or failed: libvirt's migration job was
                # aborted, but it may have completed first. Where the domain is decides.
                if not _moved_anyway(ctx, vm.id, source, target):
                    raise
                moved = vm.model_copy(update={"server": target})
                ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
                return {"server": target, "completed_before_abort": True}
        else:
            ctx.expect(vm.id, ["vm.lifecycle.defined"])
            ctx.expect(vm.id, ["vm.lifecycle.undefined"])
            dst.define(domain_spec_of(vm, {"job": ctx.job.id, "pool": vm.pool}))
            src.undefine(vm.id)
    elif src.domain_state(vm.id) is not None and ctx.outputs["mode"] == "cold":
        src.undefine(vm.id)  # defined on the target by an earlier attempt
    moved = vm.model_copy(update={"server": target})
    ctx.run(ctx.runtime.inventory.save_vm(moved, fence=ctx.fence))
    state = observe(ctx, moved, dst)
    return {"server": target, "state": state.value if state else None}


def _moved_anyway(ctx: StepContext, vm_id: str, source: str, target: str) -> bool:
    """Whether the domain runs on `target` and is gone from `source`, asked without the
    step's interrupt (an abort must not stop this look)."""
    hvs = ctx.runtime.hypervisors
    src = hvs.get(ctx.run(ctx.runtime.inventory.server(source)).uri)
    dst = hvs.get(ctx.run(ctx.runtime.inventory.server(target)).uri)
    return dst.domain_state(vm_id) in ACTIVE and src.domain_state(vm_id) is None


def _report(ctx: StepContext, stats: dict[str, Any]) -> None:
    """libvirt's statistics of the migration job as the step's progress and detail."""
    total = int(stats.get("data_total") or 0)
    processed = int(stats.get("data_processed") or 0)
    detail = {
        "data_processed_bytes": processed,
        "data_remaining_bytes": int(stats.get("data_remaining") or 0),
        "data_total_bytes": total,
        "memory_dirty_rate_pages_s": int(stats.get("memory_dirty_rate") or 0),
        "elapsed_ms": int(stats.get("time_elapsed") or 0),
    }
    ctx.report(processed / total if total else 0.0, detail)


def steps(_req: MigrateVm) -> list[Step]:
    return [
        Step("migration_plan", _plan, None, "check the servers, choose the target"),
        Step("migrate", _migrate, None, "move the VM to the target"),
    ]
