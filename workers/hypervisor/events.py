"""A server's domain events as plain vmorch data, over one libvirt connection (the agent's).

libvirt delivers events, keepalive pings and close notices from its event loop, which runs
on one daemon thread per process (`ensure_event_loop`). `EventConnection` registers for the
lifecycle and other domain events and hands each to a callback as a `DomainEvent`, stamped
with the time libvirt delivered it, on that thread. Callers must not block in the callback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import libvirt
import libvirt_qemu

from orchestrator.errors import HypervisorUnavailable, NotFound
from schemas.inventory import ServerFacts, VmState
from workers.hypervisor.errors import classify, is_not_found, is_unsupported
from workers.hypervisor.facts import read_facts
from workers.hypervisor.qga import Qga, QgaError
from workers.hypervisor.states import lifecycle, observed_state
from workers.hypervisor.xml import channel_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keepalive:
    """Ping the daemon every `interval_s`; after `count` pings without an answer libvirt
    closes the connection, so a hung or unreachable daemon is noticed in about
    interval_s x (count + 1), even in the middle of a call."""

    interval_s: int = 2
    count: int = 3


@dataclass(frozen=True)
class DomainEvent:
    """One domain event: vmorch's type, the domain, the detail name, the state after it
    (None: unchanged), when libvirt delivered it, and extra fields for the event's data."""

    type: str
    uuid: str
    name: str
    detail: str
    state: VmState | None
    observed_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainStatus:
    """A domain as listed: its name, state and the reason for it ("shutdown", "" unknown)."""

    name: str
    state: VmState
    reason: str


_loop_lock = threading.Lock()
_loop_pid: int | None = None
_registered = False


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon thread, once a process.

    Must happen before the first connection that registers callbacks or keepalive. A forked
    child inherits the registration but not the thread: it starts its own.
    """
    global _loop_pid, _registered
    with _loop_lock:
        if _loop_pid == os.getpid():
            return
        if not _registered:
            libvirt.virEventRegisterDefaultImpl()
            _registered = True

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_pid = os.getpid()


def open_connection(uri: str, keepalive: Keepalive) -> libvirt.virConnect:
    """Open `uri` with keepalive (drivers without it, e.g. in-process ones, go without).
    Raises libvirt's error: callers map it."""
    ensure_event_loop()
    conn = libvirt.open(uri)
    try:
        conn.setKeepAlive(keepalive.interval_s, keepalive.count)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
    return conn


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}
# Domain events other than lifecycle, as vmorch types; a driver may lack some.
_OTHER_EVENTS = (
    (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, "vm.reboot"),
    (libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, "vm.agent.lifecycle"),
    (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, "vm.device.added"),
    (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "vm.device.removed"),
    (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, "vm.job.completed"),
)


class EventConnection:
    """One connection to a server that delivers its domain events to `on_event` and tells
    `on_close` (with a reason: "eof", "keepalive", ...) when libvirt closed it.

    `open` and `domain_states` block (run them in a thread); errors come out as vmorch's
    (HypervisorUnavailable, HypervisorError). A connection closed while `open` was still
    under way (a caller that gave up on a hung daemon) is closed as soon as it opens and
    delivers nothing.
    """

    def __init__(
        self,
        uri: str,
        on_event: Callable[[DomainEvent], None],
        on_close: Callable[[str], None],
        keepalive: Keepalive | None = None,
    ):
        self.uri = uri
        self.on_event = on_event
        self.on_close = on_close
        self.keepalive = keepalive or Keepalive()
        self._conn: libvirt.virConnect | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._callbacks: list[int] = []  # domain event callback ids, deregistered at close

    # --- callbacks, on libvirt's event thread -------------------------------------------
    def _lifecycle(self, _c: Any, dom: libvirt.virDomain, event: int, detail: int, _o: Any) -> None:
        at = datetime.now(UTC)
        type_, name, state = lifecycle(event, detail)
        self.on_event(DomainEvent(type_, dom.UUIDString(), dom.name(), name, state, at))

    def _other(self, type_: str) -> Callable[..., None]:
        def cb(_c: Any, dom: libvirt.virDomain, *args: Any) -> None:
            at = datetime.now(UTC)
            extra = {"args": [a for a in args[:-1] if isinstance(a, str | int | float)]}
            self.on_event(DomainEvent(type_, dom.UUIDString(), dom.name(), "", None, at, extra))

        return cb

    def _closed_by_libvirt(self, _c: Any, reason: int, _o: Any) -> None:
        self.on_close(_CLOSE_REASONS.get(reason, str(reason)))

    # --- calls ---------------------------------------------------------------------------
    def open(self) -> None:
        try:
            conn = open_connection(self.uri, self.keepalive)
        except libvirt.libvirtError as e:
            raise _unavailable(e) from e
        with self._lock:
            if self._closed:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
                raise HypervisorUnavailable(f"{self.uri}: closed while opening")
            self._conn = conn
        try:
            conn.registerCloseCallback(self._closed_by_libvirt, None)
            self._callbacks.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
                )
            )
            for ev_id, type_ in _OTHER_EVENTS:
                try:
                    self._callbacks.append(
                        conn.domainEventRegisterAny(None, ev_id, self._other(type_), None)
                    )
                except libvirt.libvirtError:
                    log.info("%s does not support %s events", self.uri, type_)
        except libvirt.libvirtError as e:
            self.close()
            raise _unavailable(e) from e

    def domain_states(self) -> dict[str, DomainStatus]:
        """uuid -> status of every domain on the server, with the reason for its state."""
        conn = self._conn
        if conn is None:
            raise HypervisorUnavailable(f"{self.uri}: not connected")
        try:
            domains = conn.listAllDomains()
        except libvirt.libvirtError as e:
            raise _unavailable(e) from e
        out = {}
        for d in domains:
            try:
                raw_state, raw_reason = d.state()
            except libvirt.libvirtError as e:
                if is_not_found(e):
                    continue  # undefined since the listing: its event tells
                raise _unavailable(e) from e
            state, reason = observed_state(raw_state, raw_reason)
            out[d.UUIDString()] = DomainStatus(d.name(), state, reason)
        return out

    def facts(self) -> ServerFacts:
        """What the server has (`read_facts`)."""
        conn = self._conn
        if conn is None:
            raise HypervisorUnavailable(f"{self.uri}: not connected")
        try:
            return read_facts(conn)
        except libvirt.libvirtError as e:
            raise _unavailable(e) from e

    def _running(self, uuid: str) -> libvirt.virDomain | None:
        """The domain if it runs; None when it is gone or stopped."""
        conn = self._conn
        if conn is None:
            raise HypervisorUnavailable(f"{self.uri}: not connected")
        try:
            dom = conn.lookupByUUIDString(uuid)
            return dom if dom.isActive() else None
        except libvirt.libvirtError as e:
            if is_not_found(e):
                return None
            raise _unavailable(e) from e

    def channel_path(self, uuid: str) -> str | None:
        """The unix socket of the running domain's guest message channel; None when the
        domain is gone or not running, or has no channel."""
        dom = self._running(uuid)
        if dom is None:
            return None
        try:
            return channel_path(dom.XMLDesc(0))
        except libvirt.libvirtError as e:
            if is_not_found(e):
                return None
            raise _unavailable(e) from e

    def guest_agent(self, uuid: str, timeout_s: int = 2) -> dict[str, Any] | None:
        """What the domain's QEMU guest agent says (version, the commands it runs, its
        network interfaces and addresses), through libvirt; None when the domain has no
        agent that answers (not running, none installed, the test driver)."""
        dom = self._running(uuid)
        if dom is None:
            return None

        def send(command: str) -> str:
            try:
                return str(libvirt_qemu.qemuAgentCommand(dom, command, timeout_s, 0))
            except libvirt.libvirtError as e:
                raise QgaError(str(e.get_error_message())[:200]) from e

        try:
            qga = Qga(send)
            ping_ms = qga.ping()
            info = qga.info()
            ifaces = qga.interfaces() if "guest-network-get-interfaces" in info.enabled else []
        except QgaError:
            return None
        return {
            "version": info.version,
            "ping_ms": round(ping_ms, 1),
            "interfaces": [
                {"name": i.name, "mac": i.mac, "addresses": i.addresses} for i in ifaces
            ],
        }

    def remove_domain(self, uuid: str) -> bool:
        """Destroy (if it runs) and undefine the domain; False when it was already gone."""
        conn = self._conn
        if conn is None:
            raise HypervisorUnavailable(f"{self.uri}: not connected")
        try:
            dom = conn.lookupByUUIDString(uuid)
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError as e:
                    # stopped meanwhile (a daemon that just restarted may still settle it)
                    if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                        raise
            if dom.isPersistent():
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
        except libvirt.libvirtError as e:
            err = classify(e)
            if isinstance(err, NotFound):
                return False
            raise err from e
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            # the event callbacks first: each holds a reference to the connection, so
            # close() alone left it open and still delivering events beside the next one
            # (every event twice after a reconnect)
            for cb in self._callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb)
            self._callbacks.clear()
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


def _unavailable(e: libvirt.libvirtError) -> Exception:
    """For the agent every failure of its connection means the same: reconnect later."""
    mapped = classify(e)
    return mapped if isinstance(mapped, HypervisorUnavailable) else HypervisorUnavailable(str(e))
