"""How a workflow is declared: an ordered list of steps, each with `run` and `undo`.

A step converges on a target state ("volume X exists", "domain Y running"), so running it
twice is harmless: delivery is at least once, and a step whose worker died is run again.
`run` returns outputs (JSON values) that later steps and the job's result can read; `undo`
reverses the step's effect and must also converge (undoing what is already gone is fine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from orchestrator.errors import AbortRequested, LeaseLost
from orchestrator.store.fence import Fence
from schemas.jobs import Job

if TYPE_CHECKING:
    from tasks.runtime import Runtime
    from workers.hypervisor.adapter import Hypervisor

T = TypeVar("T")
Outputs = dict[str, Any]


@dataclass(frozen=True)
class Wait:
    """What a step returns to wait for an event without holding a worker: an event of
    `types` about `subject`, newer than the stream position `since` (taken before the step
    acted), within `timeout_s`. At the deadline the step fails, or, with
    on_timeout="escalate", the step's `escalate` runs (a forced stop after a graceful one)."""

    types: list[str]
    subject: str
    since: str
    timeout_s: float
    on_timeout: Literal["fail", "escalate"] = "fail"
    outputs: Outputs = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[StepContext], Outputs | Wait | None]
    undo: Callable[[StepContext], None] | None = None
    description: str = ""
    # For a step that waits: `settled` checks the actual state (None: not yet), so a wait
    # whose event was missed still ends; `escalate` runs at the deadline if asked to.
    settled: Callable[[StepContext], Outputs | None] | None = None
    escalate: Callable[[StepContext], Outputs] | None = None
    # A step that waits in rounds (an evacuation's migrations, a migration's turn for a
    # slot): `resume` runs each time its wait ends (its event came, or at a recheck; no
    # worker is held between rounds) and returns the step's outputs, or the next Wait.
    # The Wait's deadline is that round's.
    resume: Callable[[StepContext], Outputs | Wait] | None = None
    # ...and at its round's deadline, one last `resume` before the step fails (for a
    # resume without side effects that ends the step itself at the deadline: a message
    # job failing what was not answered)
    last_look: bool = False
    # Undo a step that failed, too: right when a failure can leave part of its effect behind
    # (a clone of disk 0 of 2); wrong when the target state may have held before the step
    # (undoing a failed "ensure running" would power off a VM this job never started).
    undo_on_failure: bool = True
    # A point of no return (a cold move's switch to the target): once it is done,
    # compensation stops there, and the steps before it keep their effect.
    no_return: bool = False


WorkflowBuilder = Callable[[Any], list[Step]]
"""Builds a job's steps from its request. Must be deterministic: the journal is matched by
position and name when a job is resumed by another worker."""


@dataclass
class StepContext:
    """What a step sees: its job, the outputs of earlier steps, and the runtime."""

    job: Job
    runtime: Runtime
    attempt: int
    outputs: Outputs = field(default_factory=dict)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    abort_seen: threading.Event = field(default_factory=threading.Event)
    token: int | None = None  # the fencing token of the lease this worker holds
    # records how far the step is (0-1) and what it last saw, in the job (and its event)
    reporter: Callable[[float, dict[str, Any]], None] | None = None

    @property
    def request(self) -> Any:
        return self.job.request

    @property
    def fence(self) -> Fence | None:
        """Pass to every store write: it lands only while this worker holds the lease."""
        return None if self.token is None else Fence(self.job.id, self.token)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a store coroutine (inventory, jobs) on the runtime's loop thread."""
        return self.runtime.loop.run(coro)

    def stream_position(self) -> str:
        """Where the event stream stands now: take it before acting, pass it to Wait."""
        return self.run(self.runtime.waits.position())

    def expect(self, vm_id: str, types: list[str]) -> None:
        """Record one event this job's next action causes on the VM (one of `types`), so
        the router attributes it to this job: it then fires no hooks for unexpected
        changes. Call once per event expected."""
        self.run(self.runtime.expectations.expect(vm_id, self.job.id, types))

    def hypervisor(self, server: str, probe_s: float | None = None) -> Hypervisor:
        """The server's adapter (`probe_s`: give up on an unreachable or hung server after
        this long, instead of the usual retry budget and call deadline). Also a safe point:
        no hypervisor change after losing the lease; and its calls stop waiting as soon as
        one is reached (an abort, a lost lease), even while the hypervisor does not answer."""
        self.check()
        if self.token is not None and not self.run(
            self.runtime.leases.holds(self.job.id, self.token)
        ):
            self.lease_lost.set()
            self.check()
        srv = self.run(self.runtime.inventory.server(server))
        return self.runtime.hypervisors.get(
            srv.uri, retry_s=probe_s, check=self.check, timeout_s=probe_s
        )

    def report(self, fraction: float, detail: dict[str, Any] | None = None) -> None:
        """Say how far the step is: the job's progress and a `job.step` event show it."""
        if self.reporter is not None:
            self.reporter(fraction, detail or {})

    def check(self) -> None:
        """A safe point: stop here if the lease is gone or an abort was asked for."""
        if self.lease_lost.is_set():
            raise LeaseLost(f"job {self.job.id}: lease lost")
        if self.abort_seen.is_set():
            raise AbortRequested(f"job {self.job.id}: abort requested")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) on an abort or a lost lease."""
        self.check()
        if self.abort_seen.wait(seconds) or self.lease_lost.is_set():
            self.check()
