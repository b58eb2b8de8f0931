"""What a server has, read from its libvirt connection in one place (the adapter's
pre-checks and the agent's recorded facts both use it)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import libvirt

from schemas.inventory import Discovery, ServerFacts


def host_cpus(conn: libvirt.virConnect) -> int:
    """How many physical CPUs the server has (pinning refers to them by number)."""
    try:
        return int(conn.getCPUMap()[0])
    except libvirt.libvirtError:  # a driver without a CPU map
        return int(conn.getInfo()[2])


def active_memory(conn: libvirt.virConnect) -> dict[str, int]:
    """The active domains' uuids and memory (KiB)."""
    active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    return {d.UUIDString(): int(d.maxMemory()) for d in active}


def memory_used_mib(conn: libvirt.virConnect) -> int:
    """The memory of every active domain."""
    return sum(active_memory(conn).values()) // 1024


def read_facts(conn: libvirt.virConnect) -> ServerFacts:
    """CPUs, memory (and what active domains leave free), the networks defined there and
    the active storage pools. libvirt errors are the caller's to map."""
    memory_mib = int(conn.getInfo()[1])
    return ServerFacts(
        cpus=host_cpus(conn),
        memory_mib=memory_mib,
        memory_free_mib=memory_mib - memory_used_mib(conn),
        networks=sorted(set(conn.listNetworks()) | set(conn.listDefinedNetworks())),
        storage_pools=sorted(conn.listStoragePools()),
        observed_at=datetime.now(UTC),
    )


def _version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


def discover(conn: libvirt.virConnect) -> Discovery:
    """The server as its discovery records it: host name, CPU model and topology, memory,
    libvirt's and the hypervisor's versions, its networks and active storage pools."""
    info = conn.getInfo()  # model, memory MiB, cpus, MHz, NUMA nodes, sockets, cores, threads
    caps = ET.fromstring(conn.getCapabilities())
    cpu = caps.find("host/cpu")
    topo = cpu.find("topology") if cpu is not None else None
    try:
        hostname = str(conn.getHostname())
    except libvirt.libvirtError:
        hostname = ""
    try:
        hv_version = _version(int(conn.getVersion()))
    except libvirt.libvirtError:
        hv_version = ""
    return Discovery(
        hostname=hostname,
        cpu_model=(cpu.findtext("model") or str(info[0])) if cpu is not None else str(info[0]),
        cpu_vendor=(cpu.findtext("vendor") or "") if cpu is not None else "",
        sockets=int(topo.get("sockets", info[5])) if topo is not None else int(info[5]),
        cores_per_socket=int(topo.get("cores", info[6])) if topo is not None else int(info[6]),
        threads_per_core=int(topo.get("threads", info[7])) if topo is not None else int(info[7]),
        cpus=host_cpus(conn),
        mhz=int(info[3]),
        memory_mib=int(info[1]),
        libvirt_version=_version(int(conn.getLibVersion())),
        hypervisor=f"{conn.getType()} {hv_version}".strip(),
        networks=sorted(set(conn.listNetworks()) | set(conn.listDefinedNetworks())),
        storage_pools=sorted(conn.listStoragePools()),
        discovered_at=datetime.now(UTC),
    )
