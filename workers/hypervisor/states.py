"""libvirt domain events as vmorch event types, and libvirt's event loop thread.

The agent is the only consumer. Mapping lives here, beside the adapter, so that no other
module needs libvirt's constants.
"""

from __future__ import annotations

import threading

import libvirt

from schemas.inventory import VmState

_E = libvirt
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


_BY_STATE = {
    VmState.RUNNING: "started",
    VmState.STOPPED: "stopped",
    VmState.SUSPENDED: "suspended",
    VmState.CRASHED: "crashed",
    VmState.UNKNOWN: "unknown",
    VmState.PROVISIONING: "defined",
    VmState.DELETED: "undefined",
}

_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon thread, once a process.

    Must happen before the first connection that registers callbacks.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True
