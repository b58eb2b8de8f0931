"""The hypervisor adapter: the only vmorch code that calls libvirt.

Every call goes through `Hypervisor._call`, which maps libvirt errors onto vmorch's
exception tree and retries transient ones (lost connection, timeouts) with exponential
backoff and jitter, reopening the connection between tries. Operations converge on a
target state ("volume exists", "domain stopped"), so a retried or repeated call is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import libvirt
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestrator.errors import HypervisorError, HypervisorUnavailable, NotFound
from schemas.inventory import VmState
from workers.hypervisor.xml import DomainSpec, domain_xml, volume_xml

log = logging.getLogger(__name__)
T = TypeVar("T")

# Codes that mean "the call may work if repeated": the connection, the daemon or the guest
# agent did not answer in time.
_TRANSIENT_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_NETWORK,
}

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.RUNNING,  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.SUSPENDED,
}


def silence_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; vmorch logs the ones it acts on."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def classify(err: libvirt.libvirtError) -> Exception:
    """Map a libvirt error to HypervisorUnavailable (retry), NotFound or HypervisorError."""
    code = err.get_error_code()
    msg = err.get_error_message() or str(err)
    if code in _TRANSIENT_CODES:
        return HypervisorUnavailable(msg)
    if code in _NOT_FOUND_CODES:
        return NotFound(msg)
    return HypervisorError(msg)


class Hypervisor:
    """One server's libvirt connection, opened lazily and reopened after a failure."""

    def __init__(self, uri: str, retry_s: float = 20.0):
        self.uri = uri
        self.retry_s = retry_s
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # Transient errors: exponential backoff with jitter, bounded by time.
        self._retrying = Retrying(
            retry=retry_if_exception_type(HypervisorUnavailable),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            stop=stop_after_delay(retry_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                self._conn = libvirt.open(self.uri)
            return self._conn

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        def attempt() -> T:
            try:
                return fn(self._connection())
            except libvirt.libvirtError as e:
                mapped = classify(e)
                if isinstance(mapped, HypervisorUnavailable):
                    self._drop()
                raise mapped from e

        return self._retrying(attempt)

    def close(self) -> None:
        self._drop()

    # --- server ------------------------------------------------------------------------
    def domain_type(self) -> str:
        kind = self._call("getType", lambda c: c.getType()).lower()
        return "test" if kind == "test" else "qemu"

    def memory_mib(self) -> int:
        return int(self._call("getInfo", lambda c: c.getInfo()[1]))

    def memory_free_mib(self) -> int:
        """Server memory less the memory of every active domain."""

        def used(c: libvirt.virConnect) -> int:
            doms = c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return int(sum(d.maxMemory() for d in doms)) // 1024

        return self.memory_mib() - self._call("listAllDomains", used)

    def domain_states(self) -> dict[str, tuple[str, VmState]]:
        """uuid -> (name, state) of every domain on the server."""

        def states(c: libvirt.virConnect) -> dict[str, tuple[str, VmState]]:
            return {
                d.UUIDString(): (d.name(), _STATES.get(d.state()[0], VmState.UNKNOWN))
                for d in c.listAllDomains()
            }

        return self._call("listAllDomains", states)

    # --- domains -----------------------------------------------------------------------
    def _lookup(self, c: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
        return c.lookupByUUIDString(uuid)

    def domain_state(self, uuid: str) -> VmState | None:
        """The domain's state, or None when no such domain is defined."""
        try:
            raw = self._call("state", lambda c: self._lookup(c, uuid).state()[0])
        except NotFound:
            return None
        return _STATES.get(raw, VmState.UNKNOWN)

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine, same uuid: the same spec gives the same XML) a persistent
        domain, rendered for this server's driver."""
        xml = domain_xml(replace(spec, domain_type=self.domain_type()))
        self._call("defineXML", lambda c: c.defineXML(xml))

    def undefine(self, uuid: str) -> None:
        """Ensure the domain is gone (destroyed first if it runs)."""
        if self.domain_state(uuid) is None:
            return
        self.destroy(uuid)

        def undefine(c: libvirt.virConnect) -> None:
            dom = self._lookup(c, uuid)
            try:
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                dom.undefine()

        with contextlib.suppress(NotFound):
            self._call("undefine", undefine)

    def _act(self, uuid: str, what: str, fn: Callable[[libvirt.virDomain], object]) -> None:
        self._call(what, lambda c: fn(self._lookup(c, uuid)))

    def start(self, uuid: str) -> None:
        """Ensure running: start a stopped domain, resume a paused one, leave a running one."""
        state = self.domain_state(uuid)
        if state is None:
            raise NotFound(f"domain {uuid} is not defined")
        if state in (VmState.STOPPED, VmState.CRASHED):
            self._act(uuid, "create", lambda d: d.create())
        elif state == VmState.SUSPENDED:
            self._act(uuid, "resume", lambda d: d.resume())

    def request_shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down (ACPI). Converges: a stopped domain is left alone."""
        if self.domain_state(uuid) in (VmState.RUNNING, VmState.SUSPENDED):
            self._act(uuid, "shutdown", lambda d: d.shutdown())

    def destroy(self, uuid: str) -> None:
        """Ensure stopped, at once (power off)."""
        if self.domain_state(uuid) not in (None, VmState.STOPPED):
            self._act(uuid, "destroy", lambda d: d.destroy())

    def suspend(self, uuid: str) -> None:
        state = self.domain_state(uuid)
        if state == VmState.RUNNING:
            self._act(uuid, "suspend", lambda d: d.suspend())
        elif state != VmState.SUSPENDED:
            raise HypervisorError(f"cannot suspend a domain that is {state}")

    def resume(self, uuid: str) -> None:
        state = self.domain_state(uuid)
        if state == VmState.SUSPENDED:
            self._act(uuid, "resume", lambda d: d.resume())
        elif state != VmState.RUNNING:
            raise HypervisorError(f"cannot resume a domain that is {state}")

    # --- storage -----------------------------------------------------------------------
    def _ensure_volume(
        self, pool: str, name: str, make: Callable[[libvirt.virStoragePool], libvirt.virStorageVol]
    ) -> str:
        """The path of volume `name` in `pool`, made by `make` if it does not exist yet."""

        def ensure(c: libvirt.virConnect) -> str:
            sp = c.storagePoolLookupByName(pool)
            try:
                return str(sp.storageVolLookupByName(name).path())
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            return str(make(sp).path())

        return self._call("ensure_volume", ensure)

    def clone_volume(self, pool: str, source: str, name: str) -> str:
        """Ensure volume `name` exists in `pool`, cloned from `source`; returns its path."""

        def clone(sp: libvirt.virStoragePool) -> libvirt.virStorageVol:
            src = sp.storageVolLookupByName(source)
            return sp.createXMLFrom(volume_xml(name, src.info()[1]), src, 0)

        return self._ensure_volume(pool, name, clone)

    def create_volume(self, pool: str, name: str, capacity_bytes: int) -> str:
        """Ensure an empty volume exists (used to seed templates in the lab)."""
        return self._ensure_volume(
            pool, name, lambda sp: sp.createXML(volume_xml(name, capacity_bytes), 0)
        )

    def delete_volume(self, pool: str, name: str) -> None:
        """Ensure volume `name` is gone from `pool`."""
        with contextlib.suppress(NotFound):
            self._call(
                "delete_volume",
                lambda c: c.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0),
            )


class Hypervisors:
    """This process's connections, one per server URI."""

    def __init__(self, retry_s: float = 20.0):
        self.retry_s = retry_s
        self._by_uri: dict[tuple[str, float], Hypervisor] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, retry_s: float | None = None) -> Hypervisor:
        """The adapter for `uri`, with this process's retry budget or `retry_s`."""
        budget = self.retry_s if retry_s is None else retry_s
        with self._lock:
            hv = self._by_uri.get((uri, budget))
            if hv is None:
                hv = self._by_uri[(uri, budget)] = Hypervisor(uri, budget)
            return hv

    def close(self) -> None:
        with self._lock:
            for hv in self._by_uri.values():
                hv.close()
            self._by_uri.clear()
