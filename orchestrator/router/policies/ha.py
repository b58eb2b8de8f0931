"""The built-in HA policy: which VMs an event concerns, and which stops are not failures.

A hook like any other (id `builtin-ha`, action: submit `vm.ha_restart`), with rules a
generic hook does not have: it concerns only VMs marked `ha` that are meant to run, a
`server.down` concerns every such VM of the server, and a guest that shut itself down (or a
VM saved or migrated away) did not fail.
"""

from __future__ import annotations

from orchestrator.router.hooks import matches
from orchestrator.services import Services
from schemas import event_types as et
from schemas.events import Event
from schemas.hooks import Hook, HookMatch, HookSpec, SubmitJobAction
from schemas.inventory import Vm, VmState

HA_HOOK_ID = "builtin-ha"
HA_SPEC = HookSpec(
    name="ha-restart",
    match=HookMatch(types=[et.VM_CRASHED, et.VM_STOPPED, et.SERVER_DOWN]),
    action=SubmitJobAction(
        kind="submit_job",
        request={"kind": "vm.ha_restart", "vm": "{vm_id}", "reason": "{event_type}"},
    ),
    window_s=0,
)
# a guest that shut itself down, or a VM saved or migrated away, did not fail
NOT_A_FAILURE = frozenset({"shutdown", "saved", "migrated", "from_snapshot"})


async def ensure_hook(services: Services) -> None:
    """Create the built-in hook once (an operator may disable it, not delete it)."""
    if not await services.hooks.exists(HA_HOOK_ID):
        await services.hooks.create(HA_SPEC, hook_id=HA_HOOK_ID, builtin=True)


async def targets(
    services: Services, hook: Hook, event: Event, vm: Vm | None
) -> list[tuple[str, Vm | None]]:
    """(subject, VM) pairs the event concerns: the VM itself, or for `server.down` every
    HA VM placed on that server that is meant to run."""
    if event.type == et.SERVER_DOWN:
        server = str(event.data.get("server", ""))
        return [
            (v.id, v)
            for v in await services.inventory.vms_on(server)
            if v.ha and v.desired_state == VmState.RUNNING
        ]
    if vm is None or not vm.ha or not matches(hook.match, event, vm):
        return []
    return [(vm.id, vm)]


def skip_reason(event: Event, vm: Vm | None) -> str | None:
    """Why HA leaves this VM alone, or None when it should restart it."""
    if vm is not None and vm.desired_state != VmState.RUNNING:
        # a VM a job stopped, even if the stop is only seen late (after a reconnect)
        return f"the VM is not meant to run (desired {vm.desired_state})"
    detail = event.data.get("detail")
    if detail in NOT_A_FAILURE:
        return f"stopped by the guest or by design ({detail}), not a failure"
    return None
