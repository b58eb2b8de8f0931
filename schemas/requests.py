"""Job requests: what a client asks for, one model per job kind, discriminated on `kind`.

Add a new job kind by adding a model here and a workflow in `tasks/`; the API, OpenAPI
document and validation pick it up from `JobRequest`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from schemas.base import Frozen, MemoryMiB, Name, Pinning, VcpuCount
from schemas.guest import MESSAGES_MAX, REDACTED, SEALED_MAX, VALUE_MAX, GuestKey

VmRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
"""A VM by id (UUID) or by name."""

VmName = Annotated[
    Name,
    Field(
        max_length=47,
        description="at most 47 characters: disk volumes are named <name>-<id8>-disk<i>, "
        "which must stay within 63",
    ),
]
"""A new VM's name."""

MacAddress = Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")]


class VnicRequest(Frozen):
    network: Name
    mac: MacAddress | None = None


class GuestKeyValue(Frozen):
    """One key/value for a guest: its guest program stores it and runs its handler.
    `secret`: the value is sealed at submission and kept only sealed (`sealed`, set by
    vmorch, never shown); it is never logged, in an event or a job record, is shown
    redacted, and is opened only by the agent that writes it to the guest."""

    key: GuestKey
    value: Annotated[str, Field(max_length=VALUE_MAX)]
    secret: bool = False
    sealed: SkipJsonSchema[Annotated[str, Field(max_length=SEALED_MAX)] | None] = None

    @model_serializer(mode="wrap")
    def _redacted(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """Everywhere but in the job's own record (context {"sealed": True}): a secret's
        value redacted, and no `sealed`."""
        out = handler(self)
        if not (info.context or {}).get("sealed"):
            out.pop("sealed", None)
            if self.secret:
                out["value"] = REDACTED
        return out


class FirstBoot(Frozen):
    """First-boot configuration: key/values the new VM's guest program gets once it
    reports ready (or cloud-init reads); the job succeeds only when each is acknowledged."""

    config: Annotated[list[GuestKeyValue], Field(max_length=MESSAGES_MAX)] = Field(
        default_factory=list,
        description="key/values for the guest (hostname, network, users, ...), in order; "
        "`secret` ones sealed; needs start: true",
    )
    config_timeout_s: Annotated[float, Field(ge=1, le=86400)] = Field(
        default=300.0, description="how long the guest has to acknowledge them all"
    )

    @model_validator(mode="after")
    def _config_needs_a_start(self) -> FirstBoot:
        if (
            self.config
            and getattr(self, "config_via", "guest") == "guest"
            and not getattr(self, "start", True)
        ):
            raise ValueError("config is applied by the running guest: it needs start: true")
        return self


class CloudInit(Frozen):
    """A cloud-init NoCloud seed for guests that use cloud-init: an ISO 9660 image labelled
    `cidata` with `user-data`, `meta-data` (and `network-config`), made by the job and
    attached to the new VM as its last disk (deleted with it)."""

    user_data: Annotated[str, Field(max_length=32768)] = Field(
        description="`#cloud-config` YAML (or a script), as cloud-init reads it"
    )
    meta_data: Annotated[
        dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")],
             Annotated[str, Field(max_length=1024)]],
        Field(max_length=16),
    ] = Field(
        default_factory=dict,
        description="more meta-data; instance-id (the VM's id) and local-hostname (its "
        "name) are set unless given",
    )  # fmt: skip
    network_config: Annotated[str, Field(max_length=8192)] | None = None


class Seeded(Frozen):
    cloud_init: CloudInit | None = None
    config_via: Literal["guest", "cloud-init"] = Field(
        default="guest",
        description="how `config` reaches the guest: vmorch's guest program, acknowledged "
        "(guest), or a cloud-init seed rendered from it (cloud-init: written as "
        "/etc/vmorch/config/<key> files, `hostname` as the hostname; no acknowledgement, no "
        "secret values)",
    )

    @model_validator(mode="after")
    def _config_via(self) -> Seeded:
        if self.config_via == "cloud-init":
            config = getattr(self, "config", [])
            if not config:
                raise ValueError("config_via cloud-init renders `config`: give some")
            if self.cloud_init is not None:
                raise ValueError("give cloud_init or config_via cloud-init, not both")
            if any(m.secret for m in config):
                raise ValueError(
                    "a cloud-init seed is a plain file: send secret values with config_via guest"
                )
        return self


class NewVm(Frozen):
    """What every create shares: where the VM goes, its name, vNICs and labels."""

    pool: Name
    name: VmName
    vnics: Annotated[list[VnicRequest], Field(max_length=8)] = Field(default_factory=list)
    server: Name | None = Field(
        default=None, description="place on this server instead of choosing"
    )
    start: bool = True
    ha: bool = False
    labels: Annotated[
        dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=200)]],
        Field(max_length=20),
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _macs_once(self) -> NewVm:
        macs = [n.mac.lower() for n in self.vnics if n.mac]
        if len(macs) != len(set(macs)):
            raise ValueError("vnics: each MAC at most once")
        return self


CloneType = Literal["sparse", "full", "thin"]


class DiskClone(Frozen):
    """How one disk is cloned: a sparse copy (only what holds data takes space), a full
    copy (every byte allocated up front), or a thin clone (a qcow2 overlay backed by the
    template's volume, which must then stay; templates only)."""

    clone_type: CloneType = "sparse"
    repository: Name | None = Field(
        default=None, description="the repository of the pool to put it in (default: the pool's)"
    )


DiskClones = Annotated[
    list[DiskClone],
    Field(
        max_length=16,
        description="per source disk, in order: how it is cloned (missing ones: sparse)",
    ),
]


class CreateFromTemplate(NewVm, FirstBoot, Seeded):
    """Clone a template's disks in the pool's repository, define the VM where there is room,
    start it."""

    kind: Literal["vm.create_from_template"]
    template: Name
    vcpus: VcpuCount | None = None
    memory_mib: MemoryMiB | None = None
    disks: DiskClones = Field(default_factory=list)


GIB_MIB = 1024
DISK_MAX_MIB = 64 * 1024 * 1024  # 64 TiB, qcow2's limit


class NewDisk(Frozen):
    """An empty disk made for the VM in its pool's repository (sparse: it takes no space
    until the guest writes)."""

    size_mib: Annotated[int, Field(ge=1, le=DISK_MAX_MIB)]


class CreateFromIso(NewVm, FirstBoot, Seeded):
    """A hardware-virtualized VM that boots an installer ISO of the pool's repository from
    its CD-ROM drive (boot order: cdrom, then disk), with empty disks made in the
    repository."""

    kind: Literal["vm.create_from_iso"]
    iso: Name = Field(description="an ISO of the pool's repository (repository.import)")
    vcpus: VcpuCount = 1
    memory_mib: MemoryMiB = 512
    disks: Annotated[list[NewDisk], Field(max_length=16)] = Field(
        default_factory=lambda: [NewDisk(size_mib=8 * GIB_MIB)],
        description="empty disks to install onto (default: one of 8 GiB)",
    )


class DiskCopy(Frozen):
    """How one disk is copied: sparse or full (a thin clone is backed by a template's
    volume: only a VM made from a template has one)."""

    clone_type: Literal["sparse", "full"] = "sparse"
    repository: Name | None = Field(
        default=None, description="the repository of the pool to put it in (default: the pool's)"
    )


DiskCopies = Annotated[
    list[DiskCopy],
    Field(
        max_length=16,
        description="per source disk, in order: how it is copied (missing ones: sparse)",
    ),
]


class CloneVm(FirstBoot):
    """Clone a stopped VM in its pool: a new VM with a new name, UUID and MACs, its disks
    copies of the source's (sparse or full), its vNICs on the same networks or as
    `network_map` says. The source is never changed (it must stay stopped meanwhile)."""

    kind: Literal["vm.clone"]
    vm: VmRef = Field(description="the VM to clone (stopped)")
    name: VmName
    vcpus: VcpuCount | None = None
    memory_mib: MemoryMiB | None = None
    disks: DiskCopies = Field(default_factory=list)
    network_map: Annotated[dict[Name, Name], Field(max_length=16)] = Field(
        default_factory=dict, description="the source's network -> the clone's, for its vNICs"
    )
    server: Name | None = Field(
        default=None, description="place on this server instead of choosing"
    )
    start: bool = False
    ha: bool = False
    labels: Annotated[
        dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=200)]],
        Field(max_length=20),
    ] = Field(default_factory=dict)


KernelArgs = Annotated[str, Field(max_length=1024, pattern=r"^[ -~]*$")]
TreeUrl = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^[!-~]+$")]


class CreateFromInstallTree(NewVm):
    """Install from a distribution's tree (paravirtualized-style, as Oracle VM's PV
    installs): its `.treeinfo` names the installer's kernel and initrd for the
    architecture, which are fetched into the pool's repository and booted directly with
    `inst.repo=<url>`, `inst.ks=<kickstart_url>` and `kernel_args`. When the installer
    powers the VM off (or reboots it), the VM boots from its disk from then on and the
    fetched kernel and initrd are deleted."""

    kind: Literal["vm.create_from_install_tree"]
    url: TreeUrl = Field(
        description="the tree's base URL (http, https or ftp), or file:///path of a tree "
        "on a mount the servers see (NFS; under import_allowed_paths)"
    )
    kickstart_url: TreeUrl | None = Field(default=None, description="passed as inst.ks=")
    kernel_args: KernelArgs = ""
    arch: Literal["x86_64"] = "x86_64"
    vcpus: VcpuCount = 1
    memory_mib: MemoryMiB = 1024
    disks: Annotated[list[NewDisk], Field(min_length=1, max_length=16)] = Field(
        default_factory=lambda: [NewDisk(size_mib=8 * GIB_MIB)],
        description="empty disks to install onto (default: one of 8 GiB)",
    )
    install_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=3600.0, description="the installer must power the VM off within this"
    )


CreateRequest = CreateFromTemplate | CreateFromIso | CloneVm | CreateFromInstallTree
CREATE_KINDS = frozenset(
    {"vm.create_from_template", "vm.create_from_iso", "vm.clone", "vm.create_from_install_tree"}
)
"""Kinds that make a new VM (its record is reserved at submission)."""


class VmOperation(Frozen):
    """A job on an existing VM: it joins the VM's operation queue."""

    vm: VmRef


class StartVm(VmOperation):
    kind: Literal["vm.start"]


class StopVm(VmOperation):
    """Graceful ACPI shutdown; forced off when the guest has not stopped after `timeout_s`."""

    kind: Literal["vm.stop"]
    timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0


class KillVm(VmOperation):
    kind: Literal["vm.kill"]


class RestartVm(VmOperation):
    kind: Literal["vm.restart"]
    timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0


class SuspendVm(VmOperation):
    kind: Literal["vm.suspend"]


class ResumeVm(VmOperation):
    kind: Literal["vm.resume"]


class DeleteVm(VmOperation):
    """Undefine the VM; `delete_disks` also deletes its volumes. A running VM needs `force`."""

    kind: Literal["vm.delete"]
    delete_disks: bool = True
    force: bool = False


MigrationTimeoutAction = Literal["abort", "pause", "postcopy"]


class MigrateVm(VmOperation):
    """Move the VM to another server of its pool: live (it keeps running) when it runs,
    cold (its definition moves; its disks are on the pool's shared repository) when not;
    or, with target_pool, cold to a server of another pool, its disks copied there."""

    kind: Literal["vm.migrate"]
    target_server: Name | None = Field(
        default=None, description="the server to move to (placement chooses when not set)"
    )
    target_pool: Name | None = Field(
        default=None,
        description="move to another server pool (cold: its disks are copied to that "
        "pool's repository; a running VM needs shutdown=true)",
    )
    network_map: Annotated[dict[Name, Name], Field(max_length=16)] = Field(
        default_factory=dict,
        description="with target_pool: the VM's network -> the target pool's network for "
        "its vNICs (a network not mapped must exist there by the same name)",
    )
    live: bool | None = Field(
        default=None, description="live migration; default: live when the VM runs"
    )
    shutdown: bool = Field(
        default=False,
        description="a running VM: shut it down, move it cold, start it on the target "
        "(instead of a live migration)",
    )
    shutdown_timeout_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=120.0, description="shutdown=true: forced off when not stopped after this"
    )
    bandwidth_mib_s: Annotated[int | None, Field(ge=1, le=100_000)] = Field(
        default=None, description="a bandwidth limit for a live migration, MiB/s"
    )
    pinning: Pinning | None = Field(
        default=None,
        description="a pinned VM: its pinning on the target (checked against the target's "
        "CPUs); without it or drop_pinning a pinned VM is not live-migrated",
    )
    drop_pinning: bool = Field(default=False, description="a pinned VM: run unpinned there")
    completion_timeout_per_gib_s: Annotated[float | None, Field(gt=0, le=86_400)] = Field(
        default=None,
        description="a live migration must end within this many seconds per GiB of the "
        "VM's memory (default: the setting migration_completion_per_gib_s)",
    )
    progress_timeout_s: Annotated[float | None, Field(gt=0, le=86_400)] = Field(
        default=None,
        description="...and make progress (less data remaining) at least this often "
        "(default: the setting migration_progress_timeout_s)",
    )
    on_timeout: MigrationTimeoutAction | None = Field(
        default=None,
        description="what a missed deadline does: abort (the VM keeps running on the "
        "source), pause the VM so that the migration converges, or switch to post-copy "
        "(default: the setting migration_on_timeout)",
    )

    @model_validator(mode="after")
    def _one_pinning_choice(self) -> MigrateVm:
        if self.pinning is not None and self.drop_pinning:
            raise ValueError("give pinning (the target's) or drop_pinning, not both")
        if self.shutdown and self.live:
            raise ValueError("shutdown moves the VM cold: it cannot be combined with live=true")
        if self.target_pool and self.live:
            raise ValueError("a move to another pool is cold: it cannot be combined with live=true")
        if self.network_map and not self.target_pool:
            raise ValueError("network_map maps networks to another pool's: give target_pool")
        return self


class EjectIso(VmOperation):
    """Empty the VM's CD-ROM drive (live when it runs, and in its definition)."""

    kind: Literal["vm.eject_iso"]


class InsertIso(VmOperation):
    """Put an ISO of the VM's pool repository in its CD-ROM drive (live when it runs,
    and in its definition); one already there is replaced."""

    kind: Literal["vm.insert_iso"]
    iso: Name


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
UploadId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")]


class RepositoryImport(Frozen):
    """Fetch a file into a repository: an ISO or a virtual disk (raw or qcow2), from an
    http, https or ftp URL the import allow-list permits; checked against `sha256` when
    given. Progress in bytes."""

    kind: Literal["repository.import"]
    repository: Name
    content: Literal["iso", "virtual_disk"]
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    upload: UploadId | None = Field(
        default=None, description="a file uploaded through the api (it submits this)"
    )
    name: Name | None = Field(
        default=None, description="its name in the repository (default: the URL's file name)"
    )
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RepositoryImport:
        if (self.url is None) == (self.upload is None):
            raise ValueError("give a url or an upload, one of them")
        if self.upload is not None and self.name is None:
            raise ValueError("an upload needs a name")
        return self


class TemplateFromVm(Frozen):
    """Make a template of a stopped VM: its disks copied into the pool's repository (the
    VM is not changed), its vCPUs and memory as the template's defaults."""

    kind: Literal["template.create_from_vm"]
    vm: VmRef
    name: Name
    disks: DiskCopies = Field(default_factory=list)


class CloneTemplate(Frozen):
    """Copy a template under a new name, in the same repository."""

    kind: Literal["template.clone"]
    template: Name
    name: Name
    disks: DiskCopies = Field(default_factory=list)


class ImportTemplate(Frozen):
    """A template from a disk image (raw or qcow2) at a URL, fetched into the repository
    as a repository import would; its shape from the request."""

    kind: Literal["template.import"]
    repository: Name
    name: Name
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    sha256: Sha256 | None = None
    vcpus: VcpuCount = 1
    memory_mib: MemoryMiB = 512


TemplateRequest = TemplateFromVm | CloneTemplate | ImportTemplate


class AssemblyImport(Frozen):
    """An assembly into a repository: an OVA archive, or an OVF descriptor with its files
    beside it, by URL (the import allow-list applies to each file). Every reference, size
    and (with a manifest) checksum is checked, disks are converted by qemu-img, and a
    template is made per virtual system (`<name>-<system id>`), with its CPUs, memory,
    disks and NICs."""

    kind: Literal["assembly.import"]
    repository: Name
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    upload: UploadId | None = Field(
        default=None, description="an OVA uploaded through the api (it submits this)"
    )
    name: Annotated[Name, Field(max_length=40)] | None = Field(
        default=None, description="its name (default: the URL's file name without extension)"
    )
    sha256: Sha256 | None = Field(default=None, description="of the OVA or OVF file itself")

    @model_validator(mode="after")
    def _one_source(self) -> AssemblyImport:
        if (self.url is None) == (self.upload is None):
            raise ValueError("give a url or an upload, one of them")
        if self.upload is not None and self.name is None:
            raise ValueError("an upload needs a name")
        return self


class AddVnic(VmOperation):
    """Give a VM another vNIC on a network of its pool (live when it runs, and in its
    definition); its MAC from the registry, or the one asked for (checked fleet-wide)."""

    kind: Literal["vm.add_vnic"]
    network: Name
    mac: MacAddress | None = None


class RemoveVnic(VmOperation):
    """Remove a VM's vNIC (live when it runs, and from its definition); its MAC goes back
    to the registry."""

    kind: Literal["vm.remove_vnic"]
    mac: MacAddress


class MoveVm(VmOperation):
    """Move a stopped VM's disks to another repository of its pool (all of them, or the
    ones named by index): copied, the VM switched to the copies, the old volumes deleted."""

    kind: Literal["vm.move"]
    repository: Name
    disks: Annotated[list[Annotated[int, Field(ge=0, le=15)]], Field(max_length=16)] | None = Field(
        default=None, description="indices of the disks to move (default: every disk)"
    )


class PinVcpus(VmOperation):
    """Hard partitioning: pin each vCPU to physical CPUs of the VM's server (live and in
    its persistent definition); `pinning: null` removes the pinning."""

    kind: Literal["vm.pin_vcpus"]
    pinning: Pinning | None


EvacuationStrategy = Literal["migrate", "restart_elsewhere", "stop"]


class ServerMaintenance(Frozen):
    """Put a server into maintenance: placement skips it from now on, and its VMs leave,
    at most `parallel` at a time. Strategies: migrate (a running VM live, a stopped one
    cold), restart_elsewhere (shut down, move cold, start there), stop (shut down, left
    on the server). `dry_run` returns the plan and changes nothing."""

    kind: Literal["server.maintenance"]
    server: Name
    dry_run: bool = False
    strategy: EvacuationStrategy = "migrate"
    vms: Annotated[dict[VmRef, EvacuationStrategy], Field(max_length=1000)] = Field(
        default_factory=dict, description="a strategy per VM (id or name), over `strategy`"
    )
    parallel: Annotated[int, Field(ge=1, le=32)] = Field(
        default=2, description="VMs moved at once (the pool's migration limits hold too)"
    )
    pinned_vms: Literal["refuse", "keep", "drop"] = Field(
        default="refuse",
        description="pinned VMs: not moved live (refuse), moved with the same pinning "
        "where the target's CPUs allow it (keep), or moved unpinned (drop)",
    )
    reason: Annotated[str, Field(max_length=200)] = ""


class DiscoverServer(Frozen):
    """Read what a server is and has (CPU model and topology, memory, libvirt and
    hypervisor versions, networks, storage pools), check that it sees its pool's
    repository and networks, and make it a member of its pool (`POST /v1/servers`
    submits it; again later, it refreshes what is recorded)."""

    kind: Literal["server.discover"]
    server: Name


class ServerActivate(Frozen):
    """End a server's maintenance: placement may choose it again."""

    kind: Literal["server.activate"]
    server: Name
    reason: Annotated[str, Field(max_length=200)] = ""


class HaRestart(VmOperation):
    """Restart an HA VM that stopped unexpectedly: on its server, or, when that server is
    down, on another server of its pool (cold). Submitted by the built-in HA hook."""

    kind: Literal["vm.ha_restart"]
    reason: Annotated[str, Field(max_length=200)] = ""


class VmSelector(Frozen):
    """Which VMs: by name or id, and/or every VM with these labels, and/or of this pool
    (all given must hold)."""

    vms: Annotated[list[VmRef], Field(min_length=1, max_length=1000)] | None = None
    labels: (
        Annotated[
            dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=200)]],
            Field(min_length=1, max_length=16),
        ]
        | None
    ) = None
    pool: Name | None = None

    @model_validator(mode="after")
    def _some(self) -> VmSelector:
        if self.vms is None and self.labels is None and self.pool is None:
            raise ValueError("name the VMs: vms, labels or pool")
        return self


class SendMessages(VmSelector):
    """Key/value messages to the guests of one or many VMs (`vms`, `labels`, `pool`): one
    job, with a status per VM and per message. A guest not connected gets its messages
    when it reports ready, within `timeout_s`; a VM whose guest has not answered them all
    by then fails alone. In order within the request; each applied once by the guest."""

    kind: Literal["vm.message"]
    messages: Annotated[list[GuestKeyValue], Field(min_length=1, max_length=MESSAGES_MAX)]
    timeout_s: Annotated[float, Field(ge=1, le=86400)] = 300.0


class Noop(Frozen):
    """A workflow of no-op steps, for drills and benchmarks of the engine itself (admins
    only; bounded; run on a queue of its own, `vmorch worker --noop also|only`)."""

    kind: Literal["noop"]
    steps: Annotated[int, Field(ge=1, le=20)] = 5
    step_delay_ms: Annotated[int, Field(ge=0, le=10_000)] = 0
    fail_at: Annotated[int | None, Field(ge=1, le=20, description="step that fails for good")] = (
        None
    )
    transient_failures: Annotated[
        int, Field(ge=0, le=10, description="transient errors per step")
    ] = 0
    wait_for: Annotated[
        str | None,
        Field(
            max_length=200,
            description="the last step waits for an event of this type whose "
            "subject is the job's id (after its step_delay_ms)",
        ),
    ] = None
    wait_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    on_timeout: Literal["fail", "escalate"] = "fail"


# What clients may submit; vmorch itself submits the internal kinds too (hooks).
_ClientKinds = (
    CreateFromTemplate
    | CreateFromIso
    | CreateFromInstallTree
    | EjectIso
    | InsertIso
    | RepositoryImport
    | CloneVm
    | TemplateFromVm
    | CloneTemplate
    | ImportTemplate
    | AssemblyImport
    | StartVm
    | StopVm
    | KillVm
    | RestartVm
    | SuspendVm
    | ResumeVm
    | DeleteVm
    | MigrateVm
    | PinVcpus
    | MoveVm
    | AddVnic
    | RemoveVnic
    | SendMessages
    | ServerMaintenance
    | ServerActivate
    | DiscoverServer
    | Noop
)
ClientJobRequest = Annotated[_ClientKinds, Field(discriminator="kind")]
JobRequest = Annotated[_ClientKinds | HaRestart, Field(discriminator="kind")]

# Kinds vmorch submits itself (hooks); the API refuses them.
INTERNAL_KINDS = frozenset({"vm.ha_restart"})
"""JobRequest less INTERNAL_KINDS: the body `POST /v1/jobs` documents, so that a client
following the document does not send a kind the API refuses."""

job_request_adapter: TypeAdapter[JobRequest] = TypeAdapter(JobRequest)
