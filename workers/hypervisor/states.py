"""libvirt's domain states, state reasons and events as vmorch's states and event types.

Mapping lives here, beside the adapter, so that no other module needs libvirt's constants.
"""

from __future__ import annotations

import libvirt

from schemas.inventory import VmState

_E = libvirt
_STATES = {
    _E.VIR_DOMAIN_NOSTATE: VmState.UNKNOWN,
    _E.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    _E.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    _E.VIR_DOMAIN_PAUSED: VmState.SUSPENDED,
    _E.VIR_DOMAIN_SHUTDOWN: VmState.RUNNING,  # shutting down: still running
    _E.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
    _E.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    _E.VIR_DOMAIN_PMSUSPENDED: VmState.SUSPENDED,
}
# Why a domain is in its state (dom.state()[1]), named as the matching event details are.
_REASONS: dict[int, dict[int, str]] = {
    _E.VIR_DOMAIN_SHUTOFF: {
        _E.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
        _E.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
        _E.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
        _E.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
        _E.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
        _E.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
        _E.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from_snapshot",
        _E.VIR_DOMAIN_SHUTOFF_DAEMON: "daemon",
    },
    _E.VIR_DOMAIN_RUNNING: {
        _E.VIR_DOMAIN_RUNNING_BOOTED: "booted",
        _E.VIR_DOMAIN_RUNNING_MIGRATED: "migrated",
        _E.VIR_DOMAIN_RUNNING_RESTORED: "restored",
        _E.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT: "from_snapshot",
        _E.VIR_DOMAIN_RUNNING_UNPAUSED: "unpaused",
        _E.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED: "migration_canceled",
        _E.VIR_DOMAIN_RUNNING_SAVE_CANCELED: "save_canceled",
        _E.VIR_DOMAIN_RUNNING_WAKEUP: "wakeup",
        _E.VIR_DOMAIN_RUNNING_CRASHED: "crashed",
        _E.VIR_DOMAIN_RUNNING_POSTCOPY: "postcopy",
        _E.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED: "postcopy_failed",
    },
    _E.VIR_DOMAIN_PAUSED: {
        _E.VIR_DOMAIN_PAUSED_USER: "paused",
        _E.VIR_DOMAIN_PAUSED_MIGRATION: "migrated",
        _E.VIR_DOMAIN_PAUSED_SAVE: "saved",
        _E.VIR_DOMAIN_PAUSED_DUMP: "dump",
        _E.VIR_DOMAIN_PAUSED_IOERROR: "ioerror",
        _E.VIR_DOMAIN_PAUSED_WATCHDOG: "watchdog",
        _E.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: "from_snapshot",
        _E.VIR_DOMAIN_PAUSED_SHUTTING_DOWN: "shutting_down",
        _E.VIR_DOMAIN_PAUSED_SNAPSHOT: "snapshot",
        _E.VIR_DOMAIN_PAUSED_CRASHED: "crashed",
        _E.VIR_DOMAIN_PAUSED_STARTING_UP: "starting_up",
        _E.VIR_DOMAIN_PAUSED_POSTCOPY: "postcopy",
        _E.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "postcopy_failed",
    },
    _E.VIR_DOMAIN_CRASHED: {_E.VIR_DOMAIN_CRASHED_PANICKED: "panicked"},
}
# (type suffix, state after the event or None when unchanged) per lifecycle event
_LIFECYCLE: dict[int, tuple[str, VmState | None]] = {
    _E.VIR_DOMAIN_EVENT_DEFINED: ("defined", None),
    _E.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", VmState.DELETED),
    _E.VIR_DOMAIN_EVENT_STARTED: ("started", VmState.RUNNING),
    _E.VIR_DOMAIN_EVENT_SUSPENDED: ("suspended", VmState.SUSPENDED),
    _E.VIR_DOMAIN_EVENT_RESUMED: ("resumed", VmState.RUNNING),
    _E.VIR_DOMAIN_EVENT_STOPPED: ("stopped", VmState.STOPPED),
    _E.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", None),
    _E.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", VmState.SUSPENDED),
    _E.VIR_DOMAIN_EVENT_CRASHED: ("crashed", VmState.CRASHED),
}
_STOPPED_DETAIL = {
    _E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    _E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    _E.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    _E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    _E.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    _E.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    _E.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from_snapshot",
}
_STARTED_DETAIL = {
    _E.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
    _E.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated",
    _E.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
    _E.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from_snapshot",
    _E.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "wakeup",
}
_SUSPENDED_DETAIL = {
    _E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "paused",
    _E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: "migrated",
    _E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "ioerror",
}


def vm_state(state: int) -> VmState:
    """vmorch's state for a libvirt domain state (`dom.state()[0]`)."""
    return _STATES.get(state, VmState.UNKNOWN)


def observed_state(state: int, reason: int) -> tuple[VmState, str]:
    """(vmorch state, reason name or "") for `dom.state()`. A domain shut off because it
    crashed or failed counts as crashed, as its STOPPED event does (`lifecycle`)."""
    why = _REASONS.get(state, {}).get(reason, "")
    if state == _E.VIR_DOMAIN_SHUTOFF and why in ("crashed", "failed"):
        return VmState.CRASHED, why
    return vm_state(state), why


def lifecycle(event: int, detail: int) -> tuple[str, str, VmState | None]:
    """(vmorch type, detail name, state after) for a libvirt lifecycle event."""
    suffix, state = _LIFECYCLE.get(event, ("unknown", None))
    name = {
        _E.VIR_DOMAIN_EVENT_STOPPED: _STOPPED_DETAIL,
        _E.VIR_DOMAIN_EVENT_STARTED: _STARTED_DETAIL,
        _E.VIR_DOMAIN_EVENT_SUSPENDED: _SUSPENDED_DETAIL,
    }.get(event, {}).get(detail, str(detail))
    if event == _E.VIR_DOMAIN_EVENT_STOPPED and name in ("crashed", "failed"):
        suffix, state = "crashed", VmState.CRASHED
    elif event == _E.VIR_DOMAIN_EVENT_STOPPED and name == "migrated":
        suffix = "migrated"  # the VM left this server
    return f"vm.lifecycle.{suffix}", name, state


def change_type(before: VmState | None, after: VmState | None) -> str:
    """The event type for a state change seen by comparing states (after a reconnect)."""
    if after is None or after == VmState.DELETED:
        return "vm.lifecycle.undefined"
    if before is None:
        return (
            "vm.lifecycle.defined"
            if after == VmState.STOPPED
            else f"vm.lifecycle.{_BY_STATE[after]}"
        )
    if before == VmState.SUSPENDED and after == VmState.RUNNING:
        return "vm.lifecycle.resumed"
    return f"vm.lifecycle.{_BY_STATE[after]}"


def observed_change(before: VmState | None, after: VmState, reason: str) -> tuple[str, str]:
    """(event type, detail) for a change seen by comparing states, with the state's reason
    as the detail ("shutdown": the guest stopped itself), or "observed" when there is none."""
    type_ = change_type(before, after)
    if type_ == "vm.lifecycle.stopped" and reason == "migrated":
        type_ = "vm.lifecycle.migrated"  # the VM left this server
    return type_, reason or "observed"


_BY_STATE = {
    VmState.RUNNING: "started",
    VmState.STOPPED: "stopped",
    VmState.SUSPENDED: "suspended",
    VmState.CRASHED: "crashed",
    VmState.UNKNOWN: "unknown",
    VmState.PROVISIONING: "defined",
    VmState.DELETED: "undefined",
}
