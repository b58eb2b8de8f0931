"""Following jobs live over SSE instead of polling: one job's stream (`jobs watch ID`,
`--wait`) with its steps and a progress bar, and the queue board (`jobs watch`) from the
job events of the event stream.

While a job's stream runs, the job is read again (GET) only after events came, at most
every REFETCH_S: the events say which step changed, the read adds attempts, timings and
errors. A stream that breaks is opened again (a new snapshot), so nothing is missed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

from rich.live import Live

from orchestrator.cli.context import Context, query
from orchestrator.cli.durations import format_duration
from orchestrator.cli.exitcodes import CliError, ExitCode, exit_code_for_job
from orchestrator.cli.jobview import TERMINAL, progress_line, progress_view
from orchestrator.cli.output import clock, percent, span
from orchestrator.cli.queueview import ACTIVE_STATES, QueueBoard
from orchestrator.cli.sse import Follower, SseEvent, StreamEnded

TICK_S = 0.5  # a live view is redrawn at least this often (elapsed times move)
REFETCH_S = 0.5
STATUS_REFRESH_S = 2.0
BOARD_LISTING_LIMIT = 200
Emit = Literal["view", "lines", "final"]


def _ends(event: SseEvent) -> bool:
    """Whether a job's stream is over after `event` (its end, or a snapshot of an end)."""
    if event.type == "job.snapshot":
        return str(event.json().get("state")) in TERMINAL
    return event.type in {f"job.{s}" for s in TERMINAL}


def _envelope(event: SseEvent) -> dict[str, Any]:
    """An SSE event as a JSON line: the event envelope (with its stream_id, to resume
    from), or for a snapshot an envelope of type job.snapshot whose data is the job."""
    doc = event.json()
    if event.type == "job.snapshot":
        return {"type": "job.snapshot", "subject": doc.get("id"), "data": doc}
    return {**doc, "stream_id": event.id} if event.id else doc


def _apply(job: dict[str, Any], data: dict[str, Any]) -> None:
    """What a job event says, onto the job we show, until the next read: its state and
    progress, the state of the step it names, and the step running now (a queued job's
    snapshot may not list its steps yet: they are added as events name them)."""
    for key in ("state", "progress"):
        if key in data:
            job[key] = data[key]
    steps = job.setdefault("steps", [])
    for name, st in ((data.get("step"), data.get("step_state")),
                     (data.get("running_step"), "running")):  # fmt: skip
        if not name or not st:
            continue
        step = next((s for s in steps if s.get("name") == name), None)
        if step is None:
            steps.append({"name": name, "state": st})
        else:
            step["state"] = st


class _JobView:
    """Where a followed job is shown: a live view (a terminal), a line per change (a pipe),
    the stream's events as JSON lines, or nothing until the end (one JSON document)."""

    def __init__(self, ctx: Context, emit: Emit) -> None:
        self.out = ctx.out
        self.emit = emit
        self.live: Live | None = None
        self.last_line = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[_JobView]:
        if self.emit == "view" and self.out.interactive:
            with Live(console=self.out.console, refresh_per_second=4) as live:
                self.live = live
                yield self
            self.live = None
        else:
            yield self

    def event(self, event: SseEvent) -> None:
        if self.emit == "lines":
            self.out.json_line(_envelope(event))

    def show(self, job: dict[str, Any]) -> None:
        if self.emit != "view":
            return
        if self.live is not None:
            self.live.update(progress_view(job))
            return
        line = progress_line(job)
        if line != self.last_line:
            self.out.note(line)
            self.last_line = line

    def end(self, job: dict[str, Any]) -> None:
        """After the live view: the job as a JSON document, or a line saying how it ended."""
        if self.emit == "final":
            self.out.document(job)
        elif self.emit == "view":
            took = span(job.get("started_at"), job.get("ended_at"))
            end = f"job {job['id']} {job['state']}" + (f" in {took}" if took else "")
            if job.get("error"):
                end += f": {job['error'].get('code')}: {job['error'].get('message')}"
            self.out.note(end)


def follow_job(
    ctx: Context, job_id: str, *, timeout: timedelta | None = None, emit: Emit = "view"
) -> int:
    """Follow one job until it ends; the exit code of its end (or TIMED_OUT, the job
    going on, when `timeout` runs out first)."""
    client = ctx.client
    deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
    view = _JobView(ctx, emit)
    job: dict[str, Any] | None = None
    stale, read_at = False, 0.0
    follower = Follower(
        lambda _last: client.stream(f"/v1/jobs/{job_id}/stream"), resume=False, until=_ends
    )
    with follower, view.running():
        while job is None or job.get("state") not in TERMINAL:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return _timed_out(ctx, view, job_id, job, timeout)
            try:
                event = follower.next(TICK_S if left is None else min(TICK_S, left))
            except StreamEnded:
                break
            if event is not None:
                view.event(event)
                if event.type == "job.snapshot":
                    job, read_at = event.json(), time.monotonic()
                elif job is not None and event.type.startswith("job."):
                    _apply(job, event.json().get("data") or {})
                    stale = True
            if job is not None and stale and time.monotonic() - read_at >= REFETCH_S:
                job, stale, read_at = ctx.call("GET", f"/v1/jobs/{job_id}"), False, time.monotonic()
            if job is not None:
                view.show(job)
        final: dict[str, Any] = ctx.call("GET", f"/v1/jobs/{job_id}")
        view.show(final)
    view.end(final)
    if final["state"] not in TERMINAL:  # the stream ended early and for good
        raise CliError(ExitCode.UNREACHABLE, f"the stream of job {job_id} ended before the job")
    return exit_code_for_job(final["state"])


def _timed_out(
    ctx: Context, view: _JobView, job_id: str, job: dict[str, Any] | None, timeout: Any
) -> int:
    if view.emit == "final" and job is not None:
        ctx.out.document(job)
    state = (job or {}).get("state", "unknown")
    raise CliError(
        ExitCode.TIMED_OUT,
        f"timed out after {format_duration(timeout.total_seconds())}: job {job_id} is still "
        f"{state} (it goes on; `vmorch jobs watch {job_id}` follows it)",
        error_code="timed_out",
    )


def queue_snapshot(ctx: Context) -> dict[str, Any]:
    """The queue's state now: its active jobs, GET /v1/queue and (when there) /v1/queues."""
    jobs: list[Any] = []
    for st in ACTIVE_STATES:
        jobs += ctx.get("/v1/jobs", state=st, limit=BOARD_LISTING_LIMIT)["items"]
    return {"jobs": jobs, "queue": ctx.call("GET", "/v1/queue"), "queues": ctx.find("/v1/queues")}


def _load(board: QueueBoard, snap: dict[str, Any]) -> None:
    board.load(snap["jobs"])
    board.status = snap["queue"]
    board.modes = snap["queues"] or []


def watch_queue(ctx: Context, *, duration: timedelta | None = None) -> int:
    """The queue board until Ctrl-C (or `duration`): live in a terminal, else a line per
    job event; with --json a snapshot line, then the job events as JSON lines."""
    client, out = ctx.client, ctx.out
    path = query("/v1/events/stream", type="job.*")
    end = None if duration is None else time.monotonic() + duration.total_seconds()
    board = QueueBoard()
    with Follower(lambda last: client.stream(path, last_event_id=last), resume=True) as events:
        snap = queue_snapshot(ctx)  # after the stream is asked for: no change falls between
        _load(board, snap)
        if out.json:
            out.json_line({"type": "queue.snapshot", "data": snap})
        elif not out.interactive:
            out.show(board.render())
        live = Live(board.render(), console=out.console) if out.interactive else None
        with live if live is not None else contextlib.nullcontext():
            refreshed, stale = time.monotonic(), False
            while end is None or time.monotonic() < end:
                event = events.next(TICK_S)
                if event is not None:
                    stale = _on_event(ctx, board, event, lines=live is None) or stale
                if stale and time.monotonic() - refreshed >= STATUS_REFRESH_S:
                    board.status = ctx.call("GET", "/v1/queue")
                    board.modes = ctx.find("/v1/queues") or []
                    refreshed, stale = time.monotonic(), False
                board.prune()
                if live is not None:
                    live.update(board.render())
    return ExitCode.OK


def _on_event(ctx: Context, board: QueueBoard, event: SseEvent, *, lines: bool) -> bool:
    """One event of the stream onto the board (and out, where no live view shows it);
    whether the queues' counts may have changed."""
    if event.type == "events.gap":  # events were lost: start over
        _load(board, queue_snapshot(ctx))
        return True
    doc = event.json()
    job_id = (doc.get("data") or {}).get("job_id")
    new = job_id not in board.jobs
    changed = board.apply(doc)
    if ctx.out.json:
        ctx.out.json_line({**doc, "stream_id": event.id})
        return changed
    if changed and new and (job := ctx.find(f"/v1/jobs/{job_id}")):
        board.load([job])  # its VM and steps, which the events do not carry
    if lines:
        ctx.out.note(_event_line(doc))
    return changed


def _event_line(doc: dict[str, Any]) -> str:
    """A job event for logs and pipes: time, type, job, kind, state, progress, step."""
    data = doc.get("data") or {}
    progress = data.get("progress")
    step = (
        "" if str(data.get("state")) in TERMINAL else data.get("running_step") or data.get("step")
    )
    return "  ".join(
        [clock(doc.get("time")), f"{doc.get('type', ''):<13}", str(data.get("job_id", "")),
         f"{data.get('kind', ''):<24}", f"{data.get('state', ''):<9}",
         percent(progress) if isinstance(progress, int | float) else " " * 6, step or ""]
    ).rstrip()  # fmt: skip
