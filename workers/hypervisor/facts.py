"""What a server has, read from its libvirt connection in one place (the adapter's
pre-checks and the agent's recorded facts both use it)."""

from __future__ import annotations

from datetime import UTC, datetime

import libvirt

from schemas.inventory import ServerFacts


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
