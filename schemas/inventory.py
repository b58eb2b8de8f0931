"""The fleet as vmorch sees it: server pools, servers, repositories, networks, templates, VMs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas.base import Frozen, MemoryMiB, Name, Pinning, VcpuCount


class Discovery(Frozen):
    """What a server's discovery read from libvirt when it was registered."""

    hostname: str = ""
    cpu_model: str = ""
    cpu_vendor: str = ""
    sockets: int = 0
    cores_per_socket: int = 0
    threads_per_core: int = 0
    cpus: int = 0
    mhz: int = 0
    memory_mib: int = 0
    libvirt_version: str = ""
    hypervisor: str = Field(default="", description="driver and version, e.g. QEMU 7.2.0")
    networks: list[str] = Field(default_factory=list)
    storage_pools: list[str] = Field(default_factory=list)
    discovered_at: datetime | None = None


class Server(Frozen):
    """One hypervisor, reached by its libvirt URI (qemu+ssh://, qemu+tls://, test+unix://...)."""

    name: Name
    pool: Name
    uri: Annotated[str, Field(min_length=1, max_length=1024)]
    memory_mib: Annotated[int, Field(ge=0)] = 0
    cpus: Annotated[int, Field(ge=0)] = 0
    migration_host: Annotated[str | None, Field(max_length=253)] = Field(
        default=None,
        description="the address other servers send this server's incoming live "
        "migrations to (libvirt's default, the server's hostname, when not set)",
    )
    discovery: Discovery | None = Field(
        default=None, description="what its discovery read (a server registered over the API)"
    )


class ServerFacts(Frozen):
    """What a server has, as libvirt reports it: read by a worker's pre-checks when it
    acts, and recorded by the server's agent (when it connects, then every
    `agent_facts_interval_s`) for the API's views."""

    cpus: Annotated[int, Field(ge=0)] = 0
    memory_mib: Annotated[int, Field(ge=0)] = 0
    memory_free_mib: int = 0
    networks: list[str] = Field(default_factory=list)
    storage_pools: list[str] = Field(default_factory=list)
    observed_at: datetime | None = None


class Repository(Frozen):
    """Shared storage of a pool: a libvirt storage pool of this name exists on each server."""

    name: Name
    path: str = ""
    assume_shared: bool = Field(
        default=False,
        description="every server of the pool sees this storage at the same path, though "
        "libvirt cannot tell (a local directory of servers on one host, as in the lab): "
        "live migration then skips libvirt's shared-storage check",
    )


ContentKind = Literal["iso", "virtual_disk", "assembly"]
"""Content a repository holds beside templates."""


class AssemblySystem(Frozen):
    """A virtual system of an assembly and the template made of it."""

    id: str
    name: str
    template: Name


class RepositoryContent(Frozen):
    """A file in a repository (a volume of its libvirt storage pool) that vmorch imported:
    an ISO to boot or attach, or a virtual disk. `state` is `importing` while the job that
    reserved the name runs, `ready` once the file is complete and checked."""

    repository: Name
    name: Name
    kind: ContentKind
    state: Literal["importing", "ready"] = "importing"
    size_bytes: Annotated[int, Field(ge=0)] = 0
    format: Literal["raw", "qcow2", "iso"] | None = None
    sha256: str | None = None
    source: str = Field(default="", description="where it was imported from (no query)")
    job_id: str | None = Field(default=None, description="the job that imported it")
    created_at: datetime | None = None
    virtual_systems: list[AssemblySystem] = Field(
        default_factory=list, description="an assembly: its virtual systems and their templates"
    )


class Network(Frozen):
    """A libvirt network of this name exists on every server of the pool."""

    name: Name


DiskFormat = Literal["raw", "qcow2"]


class TemplateDisk(Frozen):
    volume: Name
    capacity_bytes: Annotated[int, Field(ge=0)] = 0
    format: DiskFormat = "raw"


class DirectBoot(Frozen):
    """A kernel and initrd that the VM boots directly, with its kernel arguments: while an
    installer runs (fetched from an install tree into the repository; a reboot ends it),
    or always, for a VM made from a template that boots so (`installer: false`)."""

    kernel: str
    initrd: str
    cmdline: str = ""
    installer: bool = True


class Template(Frozen):
    """A VM image and its default shape, stored in a pool's repository. A template made by
    a job (from a VM, a clone, an import) is `creating` until its disks are complete."""

    name: Name
    repository: Name
    vcpus: VcpuCount = 1
    memory_mib: MemoryMiB = 512
    disks: list[TemplateDisk] = Field(default_factory=list)
    state: Literal["creating", "ready"] = "ready"
    created_by_job: str | None = None
    assembly: Name | None = Field(default=None, description="the assembly it was imported from")
    networks: list[str] = Field(
        default_factory=list, description="an assembly's template: the network of each NIC"
    )
    boot: DirectBoot | None = Field(
        default=None,
        description="its VMs boot this kernel and initrd directly (files every server of "
        "the pool reads at the same path), e.g. the lab's guest image",
    )


class CpuGroup(Frozen):
    """Servers whose CPUs are compatible: a running VM moves live only inside its server's
    group (Oracle VM's CPU compatibility groups)."""

    name: Name
    servers: list[Name] = Field(default_factory=list)


class AntiAffinityGroup(Frozen):
    """VMs (by name) that must not run on the same server."""

    name: Name
    vms: list[Name] = Field(default_factory=list)


class ServerPool(Frozen):
    """Servers that share a repository and networks; VMs move live only inside one pool."""

    name: Name
    repository: Repository
    repositories: list[Repository] = Field(
        default_factory=list,
        description="more repositories presented to the pool (a storage pool of each name "
        "on every server); `repository` holds its VMs' disks unless they are moved",
    )
    networks: list[Network] = Field(default_factory=list)
    servers: list[Name] = Field(default_factory=list)
    cpu_groups: list[CpuGroup] = Field(
        default_factory=list,
        description="CPU compatibility groups (none: every server of the pool is compatible)",
    )
    anti_affinity_groups: list[AntiAffinityGroup] = Field(default_factory=list)

    def presented(self) -> list[Repository]:
        """Every repository its servers see: the pool's own first."""
        return [self.repository, *self.repositories]

    def presents(self, repository: str) -> bool:
        return any(r.name == repository for r in self.presented())


class Inventory(Frozen):
    """What an inventory file declares (the lab writes one; `vmorch inventory load` reads it)."""

    pools: list[ServerPool] = Field(default_factory=list)
    servers: list[Server] = Field(default_factory=list)
    templates: list[Template] = Field(default_factory=list)


class VmState(StrEnum):
    """VM states as vmorch reports them, mapped from libvirt's domain states."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    CRASHED = "crashed"
    UNKNOWN = "unknown"
    DELETED = "deleted"


class VmDisk(Frozen):
    volume: Name
    path: str
    target: str
    format: DiskFormat = "raw"
    backing: str | None = Field(
        default=None, description="a thin clone: the template volume it is backed by"
    )
    repository: Name | None = Field(
        default=None, description="where the volume is (none: the pool's repository)"
    )


class VmCdrom(Frozen):
    """An ISO of the VM's repository in its CD-ROM drive (never deleted with the VM)."""

    repository: Name
    volume: Name
    path: str


BootDevice = Literal["cdrom", "hd", "network"]


class VmNic(Frozen):
    network: Name
    mac: str


class Vm(Frozen):
    """A VM record. `state` is what was last observed on its hypervisor, at `observed_at`."""

    id: str
    name: Name
    pool: Name
    server: Name | None = None
    state: VmState = VmState.PROVISIONING
    vcpus: VcpuCount = 1
    memory_mib: MemoryMiB = 512
    disks: list[VmDisk] = Field(default_factory=list)
    nics: list[VmNic] = Field(default_factory=list)
    cdrom: VmCdrom | None = Field(
        default=None, description="the ISO in its CD-ROM drive (a VM created from an ISO)"
    )
    has_cdrom: bool = Field(
        default=False, description="the VM has a CD-ROM drive (empty when `cdrom` is null)"
    )
    boot: list[BootDevice] = Field(
        default_factory=lambda: list[BootDevice](["hd"]),
        description="boot order (a VM from an ISO: cdrom, hd)",
    )
    direct_boot: DirectBoot | None = Field(
        default=None, description="the installer it boots while installed from a tree"
    )
    ha: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    desired_state: VmState | None = Field(
        default=None, description="what the last start or stop job asked for"
    )
    created_by_job: str | None = None
    observed_at: datetime | None = None
    pinning: Pinning | None = Field(
        default=None,
        description="hard partitioning: vCPU -> physical CPUs of its server (vm.pin_vcpus)",
    )
