"""The live queue board of `vmorch jobs watch`: the jobs not ended (and those that ended
in the last LINGER_S, so that an end is seen), the queues' depths and the workers. It
starts from GET /v1/jobs and /v1/queue and is then kept up to date by job events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from orchestrator.cli.jobview import TERMINAL
from orchestrator.cli.output import Column, ago, percent, state, table, when

LINGER_S = 15.0
ACTIVE_STATES = ("running", "waiting", "aborting", "queued")
_ORDER = {s: i for i, s in enumerate((*ACTIVE_STATES, "failed", "aborted", "succeeded"))}


def _running_step(job: Mapping[str, Any]) -> str:
    steps = job.get("steps") or []
    live = [s["name"] for s in steps if s.get("state") in ("running", "waiting", "undoing")]
    return live[0] if live else ""


class QueueBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.jobs: dict[str, dict[str, Any]] = {}
        self.ended_at: dict[str, float] = {}
        self.status: Mapping[str, Any] | None = None  # GET /v1/queue
        self.modes: list[Mapping[str, Any]] = []  # GET /v1/queues (when the api has it)

    def load(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Rows from job documents (a listing)."""
        for job in jobs:
            self.jobs[job["id"]] = {
                "id": job["id"],
                "kind": job.get("kind", ""),
                "state": job.get("state", ""),
                "progress": job.get("progress"),
                "step": _running_step(job),
                "vm": (job.get("links") or {}).get("vm_name") or "",
                "created_at": job.get("created_at"),
                "updated_at": when(job.get("updated_at")),
            }
            self._note_end(job["id"])

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one job event (an envelope); whether the board changed. Events older
        than what a row already shows (read before the listing) are skipped."""
        etype = str(event.get("type", ""))
        data = event.get("data") or {}
        job_id = data.get("job_id")
        if not etype.startswith("job.") or etype == "job.child_ended" or not job_id:
            return False
        at = when(event.get("time"))
        row = self.jobs.get(job_id)
        if row is None:
            row = self.jobs[job_id] = {"id": job_id, "vm": "", "created_at": event.get("time")}
        elif row.get("updated_at") and at and at < row["updated_at"]:
            return False
        row["kind"] = data.get("kind", row.get("kind", ""))
        row["state"] = data.get("state", row.get("state", ""))
        row["progress"] = data.get("progress", row.get("progress"))
        step = data.get("running_step") or (
            data.get("step") if data.get("step_state") in ("running", "waiting") else ""
        )
        row["step"] = step if row["state"] not in TERMINAL else ""
        row["updated_at"] = at
        self._note_end(job_id)
        return True

    def _note_end(self, job_id: str) -> None:
        if self.jobs[job_id].get("state") in TERMINAL:
            self.ended_at.setdefault(job_id, self.clock())
        else:
            self.ended_at.pop(job_id, None)

    def prune(self) -> bool:
        """Drop rows that ended more than LINGER_S ago; whether any went."""
        now = self.clock()
        gone = [j for j, t in self.ended_at.items() if now - t > LINGER_S]
        for j in gone:
            self.jobs.pop(j, None)
            self.ended_at.pop(j, None)
        return bool(gone)

    def rows(self) -> list[dict[str, Any]]:
        return sorted(
            self.jobs.values(),
            key=lambda r: (_ORDER.get(r.get("state", ""), 99), str(r.get("created_at") or "")),
        )

    def render(self) -> RenderableType:
        status = self.status or {}
        workers = status.get("workers", [])
        summary = Text.assemble(
            ("running ", "bold"),
            str(len(status.get("running", []))),
            ("   waiting ", "bold"),
            str(len(status.get("waiting", []))),
            ("   workers ", "bold"),
            str(len(workers)),
            ("   jobs shown ", "bold"),
            str(len(self.jobs)),
        )
        jobs = table(self.rows(), BOARD_COLUMNS, title="jobs", empty="no job queued or running")
        return Group(queues_table(self.status, self.modes), summary, Text(""), jobs)


def queues_table(
    status: Mapping[str, Any] | None, modes: Iterable[Mapping[str, Any]] | None
) -> RenderableType:
    """One row per queue: its depth and oldest age (GET /v1/queue) beside its mode, rate
    limit and load (GET /v1/queues, when the api has it)."""
    depth = {q["queue"]: q for q in (status or {}).get("queues", [])}
    control = {m["queue"]: m for m in modes or []}
    names = list(depth) + [n for n in control if n not in depth]
    rows = [{"queue": n, **control.get(n, {}), **depth.get(n, {})} for n in names]
    return table(rows, QUEUE_COLUMNS, title="queues")


QUEUE_COLUMNS = [
    Column("queue", lambda q: q["queue"], no_wrap=True),
    Column("mode", lambda q: state(q.get("mode"))),
    Column("rate/min", lambda q: q.get("rate_limit_per_minute"), justify="right"),
    Column("depth", lambda q: q.get("depth"), justify="right"),
    Column(
        "oldest",
        lambda q: f"{q['oldest_job_age_s']:.0f}s" if q.get("oldest_job_age_s") else "",
        justify="right",
    ),
    Column("pending", lambda q: q.get("pending"), justify="right"),
    Column("held", lambda q: q.get("held") or "", justify="right"),
    Column("reason", lambda q: q.get("reason")),
]

BOARD_COLUMNS = [
    Column("id", lambda r: r["id"], no_wrap=True),
    Column("kind", lambda r: r.get("kind"), no_wrap=True),
    Column("state", lambda r: state(r.get("state"))),
    Column("progress", lambda r: percent(r.get("progress")), justify="right"),
    Column("step", lambda r: r.get("step")),
    Column("vm", lambda r: r.get("vm")),
    Column("age", lambda r: ago(r.get("created_at"))),
]
