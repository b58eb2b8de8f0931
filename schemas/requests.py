"""Job requests: what a client asks for, one model per job kind, discriminated on `kind`.

Add a new job kind by adding a model here and a workflow in `tasks/`; the API, OpenAPI
document and validation pick it up from `JobRequest`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.base import Frozen, MemoryMiB, Name, VcpuCount

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


class CreateFromTemplate(Frozen):
    """Clone a template's disks in the pool's repository, define the VM where there is room,
    start it."""

    kind: Literal["vm.create_from_template"]
    pool: Name
    template: Name
    name: VmName
    vcpus: VcpuCount | None = None
    memory_mib: MemoryMiB | None = None
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


class MigrateVm(VmOperation):
    """Move the VM to another server of its pool: live (it keeps running) when it runs,
    cold (its definition moves; its disks are on the pool's shared repository) when not."""

    kind: Literal["vm.migrate"]
    target_server: Name | None = Field(
        default=None, description="the server to move to (placement chooses when not set)"
    )
    live: bool | None = Field(
        default=None, description="live migration; default: live when the VM runs"
    )
    bandwidth_mib_s: Annotated[int | None, Field(ge=1, le=100_000)] = Field(
        default=None, description="a bandwidth limit for a live migration, MiB/s"
    )


class HaRestart(VmOperation):
    """Restart an HA VM that stopped unexpectedly: on its server, or, when that server is
    down, on another server of its pool (cold). Submitted by the built-in HA hook."""

    kind: Literal["vm.ha_restart"]
    reason: Annotated[str, Field(max_length=200)] = ""


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
    | StartVm
    | StopVm
    | KillVm
    | RestartVm
    | SuspendVm
    | ResumeVm
    | DeleteVm
    | MigrateVm
    | Noop
)
ClientJobRequest = Annotated[_ClientKinds, Field(discriminator="kind")]
JobRequest = Annotated[_ClientKinds | HaRestart, Field(discriminator="kind")]

# Kinds vmorch submits itself (hooks); the API refuses them.
INTERNAL_KINDS = frozenset({"vm.ha_restart"})
"""JobRequest less INTERNAL_KINDS: the body `POST /v1/jobs` documents, so that a client
following the document does not send a kind the API refuses."""

job_request_adapter: TypeAdapter[JobRequest] = TypeAdapter(JobRequest)
