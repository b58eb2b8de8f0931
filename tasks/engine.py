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
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.errors import AbortRequested, LeaseLost
from schemas.jobs import Job

if TYPE_CHECKING:
    from tasks.runtime import Runtime
    from workers.hypervisor import Hypervisor

T = TypeVar("T")
Outputs = dict[str, Any]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[StepContext], Outputs | None]
    undo: Callable[[StepContext], None] | None = None
    description: str = ""
    # Undo a step that failed, too: right when a failure can leave part of its effect behind
    # (a clone of disk 0 of 2); wrong when the target state may have held before the step
    # (undoing a failed "ensure running" would power off a VM this job never started).
    undo_on_failure: bool = True


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

    @property
    def request(self) -> Any:
        return self.job.request

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a store coroutine (inventory, jobs) on the runtime's loop thread."""
        return self.runtime.loop.run(coro)

    def hypervisor(self, server: str) -> Hypervisor:
        """The server's adapter. Also a safe point: no hypervisor change after losing the lease."""
        self.check()
        srv = self.run(self.runtime.inventory.server(server))
        return self.runtime.hypervisors.get(srv.uri)

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
