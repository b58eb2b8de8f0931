"""Shapes that only the HTTP API uses: error body, pages, views, queue status, tokens."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from schemas.base import Frozen, Name
from schemas.events import Event
from schemas.guest import MESSAGES_MAX
from schemas.hooks import Hook
from schemas.inventory import RepositoryContent, Server, ServerFacts, ServerPool, Template, Vm
from schemas.requests import GuestKeyValue, VmSelector

T = TypeVar("T")


class ErrorDetail(Frozen):
    loc: list[str | int]
    msg: str


class ErrorBody(Frozen):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(Frozen):
    error: ErrorBody


class Page(BaseModel, Generic[T]):
    model_config = {"frozen": True, "extra": "forbid"}
    items: list[T]
    next_cursor: str | None = None


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class TokenInfo(Frozen):
    """A stored API token. The token itself is never stored, only its SHA-256."""

    id: str
    name: Name
    role: Role
    created_at: datetime
    expires_at: datetime | None = Field(
        default=None, description="when the token stops working (null: it does not expire)"
    )

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class QueueDepth(Frozen):
    queue: str
    depth: int
    oldest_job_age_s: float | None = None


class WorkerSeen(Frozen):
    name: str
    last_seen_s_ago: float
    queues: list[str] = Field(default_factory=list)


class QueueStatus(Frozen):
    queues: list[QueueDepth]
    running: list[str]
    waiting: list[str]
    workers: list[WorkerSeen]


class AbortRequest(Frozen):
    reason: Annotated[str, Field(max_length=500)] = ""


class RetryRequest(Frozen):
    reason: Annotated[str, Field(max_length=500)] = ""


class RecoverRequest(Frozen):
    """Mark a stuck or failed job as ended, by hand: nothing is undone or run."""

    state: Literal["succeeded", "failed"]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class FenceAck(Frozen):
    """An operator's acknowledgement that an unreachable server's guests are off (powered
    off by hand, or the host is gone): HA may then start its VMs elsewhere."""

    reason: Annotated[str, Field(min_length=1, max_length=500)]


class FenceRecord(Frozen):
    server: str
    by: str
    reason: str


class ServerView(Server):
    """A server with what vmorch knows of its state: maintenance (since when, by which
    job, why), whether its agent finds it unreachable, and what its agent last read from
    libvirt."""

    maintenance: dict[str, object] | None = None
    down_for_s: float = Field(default=0.0, description="unreachable this long (0: it answers)")
    facts: ServerFacts | None = None


class MigrationTarget(Frozen):
    server: str
    ok: bool
    reason: str = Field(description="why it cannot take the VM, or what it has")
    facts_age_s: float | None = Field(
        default=None, description="how old the facts this answer rests on are"
    )


class MigrationTargets(Frozen):
    """Every server of the VM's pool, with why it can or cannot take the VM now (as its
    agent last saw it; the migration's own pre-checks look again when it runs)."""

    vm: str
    server: str | None
    live: bool
    targets: list[MigrationTarget]


class TemplateView(Template):
    size_bytes: int = Field(default=0, description="the capacity of its disks")


class RepositoryView(Frozen):
    """A repository (a libvirt storage pool on the servers of the pools it is presented
    to) and what it holds, by kind, each with size and format."""

    name: str
    path: str = ""
    pools: list[str] = Field(description="the server pools it is presented to")
    templates: list[TemplateView] = Field(default_factory=list)
    isos: list[RepositoryContent] = Field(default_factory=list)
    virtual_disks: list[RepositoryContent] = Field(default_factory=list)
    assemblies: list[RepositoryContent] = Field(
        default_factory=list, description="each with its virtual systems and their templates"
    )


class ServerRegistration(Frozen):
    """A hypervisor to add to a pool, by its libvirt URI (`qemu+ssh://root@host/system`,
    `qemu+tls://host/system`, `test+unix:///default?socket=...`)."""

    name: Name
    pool: Name
    uri: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[a-z0-9+]+://[!-~]*$")]
    migration_host: Annotated[str | None, Field(max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")] = (
        None
    )


class ServerRegistered(Frozen):
    server: Server
    job: str = Field(description="the discovery job: the server joins its pool when it succeeds")


class RepositorySpec(Frozen):
    """A repository to present to a pool: a libvirt storage pool of this name that every
    server of the pool has (shared storage)."""

    path: Annotated[str, Field(max_length=4096)] = ""
    assume_shared: bool = False


class AntiAffinitySpec(Frozen):
    """The VMs (by name; ones not created yet may be named) that must never share a server."""

    vms: Annotated[list[Name], Field(min_length=2, max_length=64)]


class CpuGroupSpec(Frozen):
    """Servers of the pool whose CPUs are compatible (a server is in one group at most)."""

    servers: Annotated[list[Name], Field(min_length=1, max_length=256)]


class PoolGroups(Frozen):
    """A pool after a change of its groups, and what already breaks an anti-affinity group
    (placement keeps members apart from now on; VMs already together stay until moved)."""

    pool: ServerPool
    conflicts: list[str] = Field(default_factory=list)


class VmView(Vm):
    """A VM with its operation queue (job ids, the running one first)."""

    operations: list[str] = Field(default_factory=list)


class HookCreated(BaseModel):
    """A new or changed hook; `secret` (webhook hooks only, after a PATCH only when a new one
    was made) is shown this once: keep it to verify the `X-Vmorch-Signature` header of
    deliveries."""

    hook: Hook
    secret: str | None = None


class StreamEvent(Event):
    stream_id: str = Field(description="Redis stream entry id: pass it as `after` or Last-Event-ID")


class EventGap(Frozen):
    """Entries after `after` were trimmed from the stream before this reader got them: what
    came between `after` and `first_id` is gone. Sent as the `events.gap` event's data on SSE
    and as `gap` in a listing's page."""

    after: str = Field(description="the stream_id the reader asked to read after")
    first_id: str | None = Field(
        description="the oldest stream_id still kept (null: the stream is empty now)"
    )


class EventPage(Frozen):
    items: list[StreamEvent]
    next_after: str | None = Field(
        default=None, description="`after` of the next page; null at the end of the stream"
    )
    gap: EventGap | None = Field(
        default=None,
        description="set when entries after the requested `after` were trimmed (lost)",
    )


class MessagesRequest(Frozen):
    """`POST /v1/vms/{vm}/messages`: key/values for one VM's guest (a `vm.message` job)."""

    messages: Annotated[list[GuestKeyValue], Field(min_length=1, max_length=MESSAGES_MAX)]
    timeout_s: Annotated[float, Field(ge=1, le=86400)] = 300.0


class MessagesToMany(VmSelector):
    """`POST /v1/messages`: the same key/values to the guests of many VMs (one job)."""

    messages: Annotated[list[GuestKeyValue], Field(min_length=1, max_length=MESSAGES_MAX)]
    timeout_s: Annotated[float, Field(ge=1, le=86400)] = 300.0


class TokenRequest(Frozen):
    """A new API token: its name, role and, optionally, how long it works."""

    name: Name
    role: Literal["viewer", "operator", "admin"]  # (a request is validated strictly)
    expires_in_s: Annotated[int, Field(ge=1, le=10 * 366 * 86400)] | None = Field(
        default=None, description="seconds until it stops working (null: never)"
    )


class TokenCreated(TokenInfo):
    """A created token: the secret itself is shown this once."""

    token: str


class QueueMode(StrEnum):
    """accept: as usual. pause: jobs are taken, queued ones wait (running ones go on).
    drain: new jobs are refused (503), queued and running ones finish."""

    ACCEPT = "accept"
    PAUSE = "pause"
    DRAIN = "drain"


class QueueControlSpec(Frozen):
    """What an admin sets on one queue, and why (recorded with who and when)."""

    mode: Literal["accept", "pause", "drain"] = "accept"  # QueueMode's values
    rate_limit_per_minute: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        default=None,
        description="at most this many of the queue's jobs start per rolling minute; the "
        "others stay queued until the window lets them (null: no limit)",
    )
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class QueueControl(QueueControlSpec):
    changed_by: str
    changed_at: datetime


class QueueView(Frozen):
    """A queue's control and load: `pending` counts its queued, running and waiting jobs
    (what still runs when it drains); `held` the queued jobs a pause keeps from starting."""

    queue: str
    mode: QueueMode = QueueMode.ACCEPT
    rate_limit_per_minute: int | None = None
    reason: str = ""
    changed_by: str | None = None
    changed_at: datetime | None = None
    depth: int = 0
    oldest_job_age_s: float | None = None
    pending: int = 0
    held: int = 0


class HookRetryAccepted(Frozen):
    """A hook run's retry, handed to the routers: the new run records `retry_of`."""

    hook_id: str
    run_id: str
    request_event_id: str = Field(description="the hook.retry_requested event's id")
