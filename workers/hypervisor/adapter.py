"""The hypervisor adapter: the only vmorch code that calls libvirt.

Every call goes through `Hypervisor._call`, which runs it with a deadline on the server's
`Connection` (a hung daemon fails the call with HypervisorTimeout, an abort or a lost lease
interrupts it), maps libvirt errors onto vmorch's exception tree and retries transient ones
(lost connection) with exponential backoff and jitter, reconnecting between tries.
Operations converge on a target state ("volume exists", "domain stopped"), so a retried or
repeated call is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
import threading
import time
import uuid as uuid_mod
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import libvirt
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestrator.errors import (
    HypervisorError,
    HypervisorTimeout,
    HypervisorUnavailable,
    ImportFailed,
    NotFound,
)
from orchestrator.settings import Settings
from schemas.inventory import Discovery, ServerFacts, VmState
from workers.hypervisor.connection import POLL_S, CallLimits, Connection
from workers.hypervisor.errors import classify, silence_libvirt_errors
from workers.hypervisor.events import Keepalive, open_connection
from workers.hypervisor.facts import (
    active_memory,
    discover,
    host_cpus,
    memory_used_mib,
    read_facts,
)
from workers.hypervisor.states import vm_state
from workers.hypervisor.xml import (
    DomainSpec,
    cdrom_device_xml,
    cdrom_source,
    channel_path,
    dir_pool_xml,
    domain_xml,
    interface_xml,
    network_xml,
    repin_domain_xml,
    replace_cdrom_xml,
    vcpu_pins,
    volume_format,
    volume_xml,
)

PROGRESS_S = 0.5  # how often a migration's job statistics are read
ABORT_WAIT_S = 30.0  # how long an aborted migration may take to end in libvirt

__all__ = ["CallLimits", "Hypervisor", "Hypervisors", "KeptOpen", "silence_libvirt_errors"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Check = Callable[[], None]


def test_channel_dir(uri: str) -> str:
    """Where a test-driver server's guest channels are (no QEMU makes them: a test harness
    stands in at the socket): beside the daemon's socket for the lab's daemons, else in a
    directory of the temporary directory (the in-process driver of unit tests)."""
    sock = parse_qs(urlsplit(uri).query).get("socket", [""])[0]
    if sock:
        return posixpath.join(posixpath.dirname(sock), "channels")
    return posixpath.join(tempfile.gettempdir(), "vmorch-test-channels")


def _retried(e: BaseException) -> bool:
    """Retry a lost connection inside the call; a timeout was waited out once already."""
    return isinstance(e, HypervisorUnavailable) and not isinstance(e, HypervisorTimeout)


def call_limits(settings: Settings) -> CallLimits:
    """The deadlines and keepalive of `settings`."""
    return CallLimits(
        timeout_s=settings.libvirt_call_timeout_s,
        copy_timeout_s=settings.libvirt_copy_timeout_s,
        keepalive=Keepalive(
            settings.libvirt_keepalive_interval_s, settings.libvirt_keepalive_count
        ),
    )


class KeptOpen:
    """A plain connection held open (see `Hypervisor.keep_open`); `close` lets it go."""

    def __init__(self, conn: libvirt.virConnect):
        self._conn: libvirt.virConnect | None = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


class Hypervisor:
    """One server's operations. Instances for the same server share its `Connection`
    (see `Hypervisors`); each has its own retry budget and interrupt `check`."""

    def __init__(
        self,
        uri: str,
        retry_s: float = 20.0,
        *,
        limits: CallLimits | None = None,
        connection: Connection | None = None,
        check: Check | None = None,
        timeout_s: float | None = None,
    ):
        self.uri = uri
        self.retry_s = retry_s
        self._link = connection or Connection(uri, limits)
        self._check = check
        self._timeout_s = timeout_s  # a shorter deadline than the connection's, if set
        # Transient errors: exponential backoff with jitter, bounded by time.
        self._retrying = Retrying(
            retry=retry_if_exception(_retried),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            stop=stop_after_delay(retry_s),
            sleep=self._sleep,
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._check is not None:
                self._check()
            time.sleep(min(left, POLL_S))

    def _call(
        self,
        what: str,
        fn: Callable[[libvirt.virConnect], T],
        timeout_s: float | None = None,
        *,
        retry: bool = True,
        interruptible: bool = True,
    ) -> T:
        """`fn(conn)` as one libvirt call named `what` (in logs and errors); transient
        errors are tried again unless `retry` is off (a call not to repeat blindly). Not
        `interruptible`: an abort does not stop the wait for it (its caller stops it in
        libvirt and waits for it to end: a migration)."""

        shorter = [x for x in (timeout_s, self._timeout_s) if x]
        limit_s = min(shorter) if shorter else None

        def attempt() -> T:
            check = self._check if interruptible else None
            try:
                return self._link.call(fn, timeout_s=limit_s, check=check)
            except libvirt.libvirtError as e:
                raise classify(e) from e
            except HypervisorTimeout as e:
                raise HypervisorTimeout(f"{what}: {e.message}") from e

        return self._retrying(attempt) if retry else attempt()

    def close(self) -> None:
        self._link.close()

    # --- server ------------------------------------------------------------------------
    def domain_type(self) -> str:
        kind = self._call("getType", lambda c: c.getType()).lower()
        return "test" if kind == "test" else "qemu"

    def memory_mib(self) -> int:
        return int(self._call("getInfo", lambda c: c.getInfo()[1]))

    def memory_free_mib(self) -> int:
        """Server memory less the memory of every active domain."""
        return self.memory_mib() - self._call("listAllDomains", memory_used_mib)

    def memory_use(self) -> tuple[int, set[str]]:
        """(MiB free: what the active domains leave, the active domains' uuids)."""
        used = self._call("listAllDomains", active_memory)
        return self.memory_mib() - sum(used.values()) // 1024, set(used)

    def discover(self) -> Discovery:
        """What the server is and has (its discovery): CPU, memory, versions, networks,
        storage pools."""
        return self._call("discover", discover)

    def facts(self) -> ServerFacts:
        """What the server has now: CPUs, memory free, networks, storage pools."""
        return self._call("facts", read_facts)

    def domain_states(self) -> dict[str, tuple[str, VmState]]:
        """uuid -> (name, state) of every domain on the server."""

        def states(c: libvirt.virConnect) -> dict[str, tuple[str, VmState]]:
            return {d.UUIDString(): (d.name(), vm_state(d.state()[0])) for d in c.listAllDomains()}

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
        return vm_state(raw)

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine, same uuid: the same spec gives the same XML) a persistent
        domain, rendered for this server's driver. On a QEMU server whose network for a vNIC
        is defined but not active (an unprivileged daemon cannot make bridges), the vNIC
        uses QEMU's user-mode networking."""
        dtype = self.domain_type()
        nics = spec.nics
        if dtype == "qemu" and nics:
            active = set(self._call("listNetworks", lambda c: c.listNetworks()))
            nics = [replace(n, user_mode=n.network not in active) for n in nics]
        channels = spec.channel_dir or (test_channel_dir(self.uri) if dtype == "test" else None)
        xml = domain_xml(replace(spec, domain_type=dtype, nics=nics, channel_dir=channels))
        self._call("defineXML", lambda c: c.defineXML(xml))

    def channel_path(self, uuid: str) -> str | None:
        """The unix socket of the running domain's guest message channel (QEMU picks it
        at each start unless the definition names it), or None."""
        xml = self._call("XMLDesc", lambda c: self._lookup(c, uuid).XMLDesc(0))
        return channel_path(xml)

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

    # --- vCPU pinning (hard partitioning) --------------------------------------------------
    def host_cpus(self) -> int:
        """How many physical CPUs the server has (pinning refers to them by number)."""
        return self._call("getCPUMap", host_cpus)

    def pin_vcpus(self, uuid: str, pinning: dict[int, list[int]], vcpus: int) -> None:
        """Pin the domain's vCPUs as `pinning` says (a vCPU not in it, and every vCPU for an
        empty pinning, may run on any CPU): the persistent definition is redefined with
        that `<cputune>`, and a running domain is pinned live too. Converges."""
        ncpus = self.host_cpus()
        inactive = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE

        def pin(c: libvirt.virConnect) -> None:
            dom = self._lookup(c, uuid)
            c.defineXML(repin_domain_xml(dom.XMLDesc(inactive), pinning))
            if not dom.isActive():
                return
            for v in range(vcpus):
                allowed = set(pinning.get(v, range(ncpus)))
                cpumap = tuple(i in allowed for i in range(ncpus))
                try:
                    dom.pinVcpuFlags(v, cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                        raise
                    dom.pinVcpu(v, cpumap)  # a driver that takes no flags (test): live

        self._call("pinVcpu", pin)

    def vcpu_pinning(self, uuid: str, *, live: bool = False) -> dict[int, list[int]]:
        """The domain's pinning as libvirt reports it, in its persistent definition (its
        `<cputune>`) or, `live`, on the running domain: vCPU -> CPUs, for the vCPUs not
        allowed on every CPU."""
        if not live:
            xml = self._call(
                "XMLDesc",
                lambda c: self._lookup(c, uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
            )
            return vcpu_pins(xml)

        def info(c: libvirt.virConnect) -> list[tuple[bool, ...]]:
            return list(self._lookup(c, uuid).vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE))

        out: dict[int, list[int]] = {}
        for v, cpumap in enumerate(self._call("vcpuPinInfo", info)):
            if not all(cpumap):
                out[v] = [i for i, on in enumerate(cpumap) if on]
        return out

    def networks(self) -> set[str]:
        """The names of the networks defined on the server (active or not)."""

        def names(c: libvirt.virConnect) -> set[str]:
            return set(c.listNetworks()) | set(c.listDefinedNetworks())

        return self._call("listNetworks", names)

    def storage_pools(self) -> set[str]:
        """The names of the server's active storage pools."""
        return set(self._call("listStoragePools", lambda c: c.listStoragePools()))

    # --- migration ---------------------------------------------------------------------
    def migrate_live(
        self,
        uuid: str,
        dest_uri: str,
        *,
        dest_host: str | None = None,
        assume_shared: bool = False,
        bandwidth_mib_s: int | None = None,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        pinning: dict[int, list[int]] | None = None,
        postcopy: bool = False,
        on_postcopy_refused: Callable[[str], None] | None = None,
    ) -> None:
        """Live-migrate the running domain to the server at `dest_uri`: it keeps running
        there, persistent, and is undefined here. This process drives the migration over
        its own connection to the destination (no daemon-to-daemon credentials needed).
        Its storage must be shared; `assume_shared` skips libvirt's check of that (storage
        it cannot recognise as shared). Interrupted (abort, lost lease, deadline), the
        libvirt migration job is aborted: the domain keeps running here. `on_progress`
        gets libvirt's job statistics about every PROGRESS_S while it runs (and may call
        `suspend` or `start_postcopy` to make it converge, or raise to abort it).
        `pinning`: the domain's vCPU pinning on the destination (empty: unpinned) instead
        of its pinning here. `postcopy`: allow a switch to post-copy (`start_postcopy`);
        where QEMU or the kernel refuses it (no userfaultfd for the guest's user), the
        migration runs without, and `on_postcopy_refused` is told why."""
        params: dict[str, Any] = {}
        if dest_host:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{dest_host}"
        if bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib_s
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | (libvirt.VIR_MIGRATE_UNSAFE if assume_shared else 0)
            | (libvirt.VIR_MIGRATE_POSTCOPY if postcopy else 0)
        )
        keepalive = self._link.limits.keepalive

        def migrate(c: libvirt.virConnect) -> None:
            dconn = open_connection(dest_uri, keepalive)
            try:
                dom = self._lookup(c, uuid)
                if pinning is not None:
                    secure = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
                    xml = dom.XMLDesc(secure)
                    params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = repin_domain_xml(xml, pinning)
                    inactive = secure | libvirt.VIR_DOMAIN_XML_INACTIVE
                    params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = repin_domain_xml(
                        dom.XMLDesc(inactive), pinning
                    )
                try:
                    dom.migrate3(dconn, params, flags)
                except libvirt.libvirtError as e:
                    if not (postcopy and "postcopy" in str(e).lower().replace("-", "")):
                        raise
                    if on_postcopy_refused is not None:
                        on_postcopy_refused(str(e))
                    dom.migrate3(dconn, params, flags & ~libvirt.VIR_MIGRATE_POSTCOPY)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    dconn.close()

        # the migration runs on a thread of its own; this one watches it: progress from
        # libvirt's job statistics, and the interrupt check (an abort stops it in libvirt)
        done, failed = threading.Event(), []

        def run() -> None:
            try:
                # not interruptible: an abort is this thread's caller's to carry out (it
                # aborts libvirt's job, then waits for this call to return)
                self._call("migrate3", migrate, timeout_s, retry=False, interruptible=False)
            except BaseException as e:
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=run, name="libvirt-migrate", daemon=True).start()
        try:
            while not done.wait(PROGRESS_S):
                if self._check is not None:
                    self._check()
                if on_progress is not None:
                    with contextlib.suppress(HypervisorError, HypervisorUnavailable):
                        stats = self.job_stats(uuid)
                        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != (
                            libvirt.VIR_DOMAIN_JOB_NONE
                        ):
                            on_progress(stats)
        except BaseException:
            self.abort_job(uuid)
            # libvirt ends the migration's protocol itself (the domain keeps running here,
            # or, when the abort came too late, runs on the destination): never cut it off,
            # as closing the destination connection mid-way can drop the only live copy
            done.wait(ABORT_WAIT_S)
            raise
        if failed:
            raise failed[0]

    def start_postcopy(self, uuid: str) -> None:
        """Switch the domain's running migration (started with `postcopy`) to post-copy:
        it runs on the destination at once and fetches the rest of its memory from here."""
        self._call(
            "migrateStartPostCopy",
            lambda c: self._lookup(c, uuid).migrateStartPostCopy(0),
            retry=False,
        )

    def abort_job(self, uuid: str) -> None:
        """Abort the domain's libvirt job (a migration), if it has one. Never raises."""
        try:
            self._link.call(lambda c: self._lookup(c, uuid).abortJob(), timeout_s=10)
        except Exception as e:  # no job, gone, or the server does not answer
            log.info("domain %s: no libvirt job aborted (%s)", uuid, e)

    def job_stats(self, uuid: str) -> dict[str, Any]:
        """The domain's current libvirt job statistics ({} without a job)."""
        try:
            return dict(self._call("jobStats", lambda c: self._lookup(c, uuid).jobStats()))
        except NotFound:
            return {}

    # --- storage -----------------------------------------------------------------------
    def _ensure_volume(
        self,
        pool: str,
        name: str,
        make: Callable[[libvirt.virStoragePool], libvirt.virStorageVol],
        timeout_s: float | None = None,
    ) -> str:
        """The path of volume `name` in `pool`, made by `make` if it does not exist yet."""

        def lookup(sp: libvirt.virStoragePool) -> str | None:
            try:
                return str(sp.storageVolLookupByName(name).path())
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            return None

        def ensure(c: libvirt.virConnect) -> str:
            sp = c.storagePoolLookupByName(pool)
            found = lookup(sp)
            if found is None:
                # on shared storage another server may have made it since this one looked
                sp.refresh(0)
                found = lookup(sp)
            return found if found is not None else str(make(sp).path())

        return self._call("ensure_volume", ensure, timeout_s)

    def clone_volume(
        self,
        pool: str,
        source: str,
        name: str,
        clone_type: str = "sparse",
        into: str | None = None,
        expect_format: str | None = None,
    ) -> tuple[str, str]:
        """Ensure volume `name` exists in `into` (another storage pool of this server) or
        in `pool`, cloned from `source` of `pool`: `sparse` (holes stay holes), `full`
        (every byte allocated) or `thin` (a qcow2 overlay backed by `source`, which must
        then stay). Returns (its path, its format). `expect_format`: the format vmorch
        recorded for `source`; libvirt reads a volume's format from its first bytes, so a
        raw disk whose guest wrote an image header there (naming any file of the server as
        its backing file) would be copied as that image: refused when the two differ."""
        made: dict[str, str] = {}

        def clone(sp: libvirt.virStoragePool) -> libvirt.virStorageVol:
            home = sp if into in (None, pool) else sp.connect().storagePoolLookupByName(pool)
            src = home.storageVolLookupByName(source)
            capacity, fmt = src.info()[1], volume_format(src.XMLDesc(0))
            if expect_format and fmt != expect_format:
                if sp.connect().getType().lower() != "test":  # (it keeps no data to read)
                    raise HypervisorError(
                        f"volume {source} reads as {fmt} now, recorded as {expect_format}: "
                        "not copied (a guest may have written an image header on it)"
                    )
                fmt = expect_format
            if clone_type == "thin":
                made["format"] = "qcow2"
                xml = volume_xml(name, capacity, "qcow2", backing=(src.path(), fmt))
                return sp.createXML(xml, 0)
            made["format"] = fmt
            xml = volume_xml(name, capacity, fmt, allocate=clone_type == "full")
            if home is not sp and sp.connect().getType().lower() == "test":
                # the test driver clones only inside one pool, and its volumes hold no
                # data: a volume of the same shape stands for the copy
                return sp.createXML(xml, 0)
            return sp.createXMLFrom(xml, src, 0)

        target = into or pool
        path = self._ensure_volume(target, name, clone, self._link.limits.copy_timeout_s)
        if "format" not in made:  # it existed: as made before (a repeated step)
            made["format"] = self._call(
                "volume_format",
                lambda c: volume_format(
                    c.storagePoolLookupByName(target).storageVolLookupByName(name).XMLDesc(0)
                ),
            )
        return path, made["format"]

    def volume_names(self, pool: str) -> set[str]:
        """The volumes of `pool` on this server, after a refresh (shared storage)."""

        def names(c: libvirt.virConnect) -> set[str]:
            sp = c.storagePoolLookupByName(pool)
            sp.refresh(0)
            return set(sp.listVolumes())

        return self._call("listVolumes", names)

    def volume_capacity(self, pool: str, name: str) -> int:
        """The capacity of volume `name` in `pool`, in bytes."""
        return int(
            self._call(
                "volume_info",
                lambda c: c.storagePoolLookupByName(pool).storageVolLookupByName(name).info()[1],
            )
        )

    def volume_path(self, pool: str, name: str) -> str:
        """The path of volume `name` in `pool` on this server (NotFound when it has none,
        also after a refresh: on shared storage another server may have made it)."""

        def path(c: libvirt.virConnect) -> str:
            sp = c.storagePoolLookupByName(pool)
            try:
                return str(sp.storageVolLookupByName(name).path())
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            sp.refresh(0)
            return str(sp.storageVolLookupByName(name).path())

        return self._call("volume_path", path)

    def upload_volume(
        self, pool: str, name: str, size_bytes: int, chunks: Iterable[bytes]
    ) -> tuple[str, bool]:
        """Make volume `name` of `size_bytes` in `pool` (one of that name is replaced: the
        caller owns the name) and fill it with `chunks`, streamed to the server (nothing is
        held in memory). Returns (its path, whether the data was stored): a driver that
        cannot take uploads (the test driver, whose volumes hold no data) keeps the empty
        volume after `chunks` has been read to its end, so the caller's checks still run.
        A failure, or `chunks` raising, deletes the volume."""

        def upload(c: libvirt.virConnect) -> tuple[str, bool]:
            sp = c.storagePoolLookupByName(pool)
            with contextlib.suppress(libvirt.libvirtError):
                sp.storageVolLookupByName(name).delete(0)
            vol = sp.createXML(volume_xml(name, size_bytes), 0)
            try:
                st = c.newStream(0)
                try:
                    vol.upload(st, 0, size_bytes, 0)
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                        raise
                    for _chunk in chunks:
                        pass
                    log.info("%s: no volume uploads; %s kept empty", self.uri, name)
                    return str(vol.path()), False
                try:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            view = view[st.send(bytes(view)) :]
                    st.finish()
                except BaseException:
                    with contextlib.suppress(libvirt.libvirtError):
                        st.abort()
                    raise
                return str(vol.path()), True
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
                raise

        return self._call(
            "upload_volume",
            upload,
            self._link.limits.copy_timeout_s,
            retry=False,  # a stream cut short is started over by the step
            interruptible=False,  # `chunks` stops itself at an abort, between chunks
        )

    def import_file(
        self,
        path: str,
        pool: str,
        name: str,
        max_bytes: int,
        inspect: Callable[[Iterator[bytes], int], Iterator[bytes]],
    ) -> tuple[str, int]:
        """Copy the file at `path` on this server (an NFS mount it sees) into a new volume
        `name` of `pool`, through this process: libvirt reads it (a transient storage pool
        of its directory, a volume download stream), `inspect(chunks, size)` sees every
        chunk (and may refuse by raising), libvirt writes the volume (an upload stream). The
        same code reaches a remote server. Returns (the volume's path, the file's size)."""

        def copy(c: libvirt.virConnect) -> tuple[str, int]:
            with self._server_file(c, path) as src:
                size, down, chunks = _download(c, src, path, max_bytes)
                sp = c.storagePoolLookupByName(pool)
                with contextlib.suppress(libvirt.libvirtError):
                    sp.storageVolLookupByName(name).delete(0)
                vol = sp.createXML(volume_xml(name, size), 0)
                up = c.newStream(0)
                try:
                    vol.upload(up, 0, size, 0)
                    for chunk in inspect(chunks, size):
                        view = memoryview(chunk)
                        while view:
                            view = view[up.send(bytes(view)) :]
                    up.finish()
                except BaseException:
                    for st in (up, down):
                        with contextlib.suppress(libvirt.libvirtError):
                            st.abort()
                    with contextlib.suppress(libvirt.libvirtError):
                        vol.delete(0)
                    raise
                return str(vol.path()), size

        return self._call(
            "import_file", copy, self._link.limits.copy_timeout_s, retry=False, interruptible=False
        )

    @contextlib.contextmanager
    def _server_file(self, c: libvirt.virConnect, path: str) -> Iterator[libvirt.virStorageVol]:
        """The file at `path` on the server as a volume of a transient storage pool of its
        directory (gone afterwards): libvirt reads it there, wherever the server is."""
        directory, file = posixpath.split(path)
        try:  # a storage pool of the server covers the directory already: read it there
            existing = c.storagePoolLookupByTargetPath(directory)
        except libvirt.libvirtError:
            existing = None
        if existing is not None and existing.isActive():
            existing.refresh(0)
            try:
                vol = existing.storageVolLookupByName(file)
            except libvirt.libvirtError as e:
                raise NotFound(f"{path}: no such file on {self.uri}") from e
            self._plain_file(vol, path)
            yield vol
            return
        tmp_name = f"vmorch-read-{uuid_mod.uuid4().hex[:12]}"
        tmp = c.storagePoolCreateXML(dir_pool_xml(tmp_name, directory), 0)
        try:
            try:
                vol = tmp.storageVolLookupByName(file)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise NotFound(f"{path}: no such file on {self.uri}") from e
                raise
            self._plain_file(vol, path)
            yield vol
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                tmp.destroy()

    @staticmethod
    def _plain_file(vol: libvirt.virStorageVol, path: str) -> None:
        """Refuse what is not a plain file at that very path (a device, a directory)."""
        if vol.info()[0] != libvirt.VIR_STORAGE_VOL_FILE or vol.path() != path:
            raise ImportFailed(f"{path} is not a plain file on the server")

    def read_file(self, path: str, max_bytes: int) -> bytes:
        """A small file of the server (an install tree's .treeinfo), at most `max_bytes`."""

        def read(c: libvirt.virConnect) -> bytes:
            with self._server_file(c, path) as vol:
                return b"".join(_download(c, vol, path, max_bytes)[2])

        return self._call("read_file", read)

    def set_nic_live(self, uuid: str, mac: str, present: bool) -> bool:
        """Make the running domain have (`present`) or not have its vNIC `mac` as its
        persistent definition describes it. Returns whether the running domain changed:
        False when it does not run, has it as wanted already, or its driver cannot change
        a device live (the test driver: the definition holds from the next start)."""

        def change(c: libvirt.virConnect) -> bool:
            dom = self._lookup(c, uuid)
            if not dom.isActive():
                return False
            live = interface_xml(dom.XMLDesc(0), mac)
            try:
                if present and live is None:
                    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                    nic = interface_xml(inactive, mac, keep_address=False)
                    if nic is None:
                        raise HypervisorError(f"vNIC {mac} is not in the domain's definition")
                    dom.attachDeviceFlags(nic, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    return True
                if not present and live is not None:
                    dom.detachDeviceFlags(live, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    return True
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            return False

        return self._call("attachDevice", change)

    def nic_macs(self, uuid: str, *, live: bool = False) -> list[str]:
        """The MACs of the domain's vNICs (its definition's, or the running domain's)."""
        flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = self._call("XMLDesc", lambda c: self._lookup(c, uuid).XMLDesc(flags))
        return [
            (m.get("address") or "").lower()
            for m in ET.fromstring(xml).findall("devices/interface/mac")
        ]

    def set_cdrom(self, uuid: str, path: str | None) -> bool:
        """Put the ISO at `path` in the domain's CD-ROM drive (None: eject), in its
        definition and, when it runs, live. Returns whether the running domain changed
        too: a driver that cannot change a device live (the test driver) gets the
        definition only, which a running domain takes at its next start. Converges."""
        inactive = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE

        def change(c: libvirt.virConnect) -> bool:
            dom = self._lookup(c, uuid)
            active = bool(dom.isActive())
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if active:
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            try:
                dom.updateDeviceFlags(cdrom_device_xml(path), flags)
                return active
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            c.defineXML(replace_cdrom_xml(dom.XMLDesc(inactive), path))
            return False

        return self._call("updateDeviceFlags", change)

    def cdrom_path(self, uuid: str, *, live: bool = False) -> str | None:
        """What the domain's CD-ROM drive holds (its definition's, or the running
        domain's): the ISO's path, or None when it is empty (or has no drive)."""
        flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = self._call("XMLDesc", lambda c: self._lookup(c, uuid).XMLDesc(flags))
        return cdrom_source(xml)

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

    def copy_volume_to(
        self,
        pool: str,
        name: str,
        dest_uri: str,
        dest_pool: str,
        dest_name: str,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Copy volume `name` of `pool` here to a new volume `dest_name` of `dest_pool` on
        the server at `dest_uri` (another pool's repository, which this server may not
        see): libvirt streams it from here to there, holes kept as holes. Returns the new
        volume's path. Converges: a volume of that name there is made again (a copy cut
        short is not a copy). A driver that cannot stream volumes (the test driver, whose
        volumes hold no data) gets an empty volume of the same size. `on_progress` gets
        (bytes done, bytes in all) as it goes; an abort stops the copy."""
        keepalive = self._link.limits.keepalive
        check = self._check

        def copy(c: libvirt.virConnect) -> str:
            src = c.storagePoolLookupByName(pool).storageVolLookupByName(name)
            capacity = int(src.info()[1])
            dconn = open_connection(dest_uri, keepalive)
            try:
                dsp = dconn.storagePoolLookupByName(dest_pool)
                with contextlib.suppress(libvirt.libvirtError):
                    old = dsp.storageVolLookupByName(dest_name)
                    if old.path() == src.path():  # the same storage under two names
                        raise HypervisorError(
                            f"{dest_pool}/{dest_name} is {pool}/{name} itself: not copied"
                        )
                    old.delete(0)
                dvol = dsp.createXML(volume_xml(dest_name, capacity), 0)
                try:
                    _stream_volume(c, src, dconn, dvol, capacity, check, on_progress)
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                        with contextlib.suppress(libvirt.libvirtError):
                            dvol.delete(0)
                        raise
                    log.info("%s: no volume streams; %s made empty", self.uri, dest_name)
                except BaseException:
                    with contextlib.suppress(libvirt.libvirtError):
                        dvol.delete(0)
                    raise
                return str(dvol.path())
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    dconn.close()

        # the copy stops itself at an abort (between chunks), so the call is not left behind
        return self._call(
            "copy_volume", copy, self._link.limits.copy_timeout_s, retry=False, interruptible=False
        )

    # --- server setup (the lab seeds its servers with these) ----------------------------
    def ensure_network(self, name: str) -> None:
        """Ensure an isolated network `name` is defined and active. An unprivileged
        (session) daemon cannot start one (no bridge): it stays defined, inactive, and
        `define` gives its vNICs user-mode networking."""

        def ensure(c: libvirt.virConnect) -> None:
            if name in c.listNetworks():
                return
            if name not in c.listDefinedNetworks():
                c.networkDefineXML(network_xml(name))
            try:
                c.networkLookupByName(name).create()
            except libvirt.libvirtError:
                if urlsplit(c.getURI()).path != "/session":
                    raise

        self._call("ensure_network", ensure)

    def ensure_dir_pool(self, name: str, path: str) -> None:
        """Ensure a directory storage pool `name` at `path` is defined and active."""

        def ensure(c: libvirt.virConnect) -> None:
            if name in c.listStoragePools():
                return
            if name in c.listDefinedStoragePools():
                c.storagePoolLookupByName(name).create()
            else:
                c.storagePoolDefineXML(dir_pool_xml(name, path)).create()

        self._call("ensure_dir_pool", ensure)

    def remove_all_domains(self) -> None:
        """Ensure the server has no domains (a fresh test driver's demo domain, a test's
        leftovers): each destroyed if it runs, then undefined."""

        def remove(c: libvirt.virConnect) -> None:
            for dom in c.listAllDomains():
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()  # a transient domain is gone with it
                if persistent:
                    dom.undefine()

        self._call("remove_all_domains", remove)

    def keep_open(self) -> KeptOpen:
        """A connection held open until closed. The test driver forgets its state when
        the last connection to it closes; the lab holds one per server while it runs."""
        return KeptOpen(self._call("open", lambda _c: libvirt.open(self.uri)))


class Hypervisors:
    """This process's servers: one `Connection` per URI, shared by every `Hypervisor` the
    process's steps get for it."""

    def __init__(self, retry_s: float = 20.0, limits: CallLimits | None = None):
        self.retry_s = retry_s
        self.limits = limits or CallLimits()
        self._links: dict[str, Connection] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Hypervisors:
        return cls(settings.libvirt_retry_s, call_limits(settings))

    def get(
        self,
        uri: str,
        retry_s: float | None = None,
        check: Check | None = None,
        timeout_s: float | None = None,
    ) -> Hypervisor:
        """The adapter for `uri`, with this process's retry budget or `retry_s`, calls
        interrupted when `check` raises, and a deadline shorter than usual if `timeout_s`."""
        with self._lock:
            link = self._links.get(uri)
            if link is None:
                link = self._links[uri] = Connection(uri, self.limits)
        budget = self.retry_s if retry_s is None else retry_s
        return Hypervisor(uri, budget, connection=link, check=check, timeout_s=timeout_s)

    def close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()


def _download(
    conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: str, max_bytes: int
) -> tuple[int, libvirt.virStream, Iterator[bytes]]:
    """Start reading a server's file (`vol`, at `path`) as a download stream, refused over
    `max_bytes`: (its size, the stream, its chunks; the stream is finished after the last)."""
    size = int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
    if size > max_bytes:
        raise ImportFailed(f"{path} has {size} bytes, over the limit of {max_bytes}")
    down = conn.newStream(0)
    vol.download(down, 0, size, 0)

    def chunks() -> Iterator[bytes]:
        while data := down.recv(1024 * 1024):
            if isinstance(data, int):  # -2: would block (not in a blocking stream)
                continue
            yield data
        down.finish()

    return size, down, chunks()


def _stream_volume(
    conn: libvirt.virConnect,
    src: libvirt.virStorageVol,
    dconn: libvirt.virConnect,
    dvol: libvirt.virStorageVol,
    capacity: int,
    check: Check | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Download `src` and upload it into `dvol` as sparse streams, chunk by chunk."""
    down, up = conn.newStream(0), dconn.newStream(0)
    src.download(down, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    try:
        dvol.upload(up, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    except libvirt.libvirtError:
        with contextlib.suppress(libvirt.libvirtError):
            down.abort()
        raise
    done, reported = 0, time.monotonic()

    def advanced(n: int) -> None:
        nonlocal done, reported
        done += n
        if check is not None:
            check()  # an abort or a lost lease stops the copy here
        if on_progress is not None and time.monotonic() - reported >= PROGRESS_S:
            reported = time.monotonic()
            on_progress(done, capacity)

    def data(_st: libvirt.virStream, buf: bytes, _o: object) -> int:
        view = memoryview(buf)
        while view:
            sent = up.send(bytes(view))
            view = view[sent:]
        advanced(len(buf))
        return 0

    def hole(_st: libvirt.virStream, length: int, _o: object) -> int:
        up.sendHole(length, 0)
        advanced(length)
        return 0

    try:
        down.sparseRecvAll(data, hole, None)
        down.finish()
        up.finish()
    except BaseException:
        for st in (down, up):
            with contextlib.suppress(libvirt.libvirtError):
                st.abort()
        raise
    if on_progress is not None:
        on_progress(capacity, capacity)
