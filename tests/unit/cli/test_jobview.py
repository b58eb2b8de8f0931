"""What people see of a job: its causal chain, its steps, its live progress; and the queue
board kept up to date by job events."""

from __future__ import annotations

from typing import Any

from rich.console import Console, RenderableType

from orchestrator.cli.jobview import Related, job_detail, progress_line, progress_view
from orchestrator.cli.queueview import LINGER_S, QueueBoard

JOB = "3f6c9a3e-1111-4c1e-9d7e-000000000001"
PARENT = "3f6c9a3e-2222-4c1e-9d7e-000000000002"
CHILD = "3f6c9a3e-3333-4c1e-9d7e-000000000003"
EVENT = "9b2e4f10-aaaa-4bbb-8ccc-0000000000ee"


def text(renderable: RenderableType) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(renderable)
    return console.export_text()


def job(**over: Any) -> dict[str, Any]:
    return {
        "id": JOB,
        "kind": "vm.ha_restart",
        "state": "failed",
        "progress": 0.5,
        "submitted_by": "hook:ha",
        "queue": "vmorch.pool.pool-a",
        "created_at": "2024-05-01T10:00:00+00:00",
        "started_at": "2024-05-01T10:00:01+00:00",
        "ended_at": "2024-05-01T10:00:04.500000+00:00",
        "request": {"kind": "vm.ha_restart", "vm": "web1"},
        "links": {
            "vm_id": "vm-uuid",
            "vm_name": "web1",
            "pool": "pool-a",
            "hook_id": "hk1",
            "event_id": EVENT,
            "parent_job": PARENT,
        },
        "steps": [
            {
                "name": "place",
                "state": "done",
                "attempts": 1,
                "started_at": "2024-05-01T10:00:01+00:00",
                "ended_at": "2024-05-01T10:00:02+00:00",
            },
            {
                "name": "start",
                "state": "failed",
                "attempts": 3,
                "started_at": "2024-05-01T10:00:02+00:00",
                "ended_at": "2024-05-01T10:00:04+00:00",
                "error": {"code": "hypervisor_unavailable", "message": "srv-a1 did not answer"},
            },
        ],
        "error": {"code": "hypervisor_unavailable", "message": "srv-a1 did not answer"},
        "result": {},
        **over,
    }


def related() -> Related:
    return Related(
        hook_id="hk1",
        hook={"id": "hk1", "name": "ha-restart"},
        run={
            "event_id": EVENT,
            "event_type": "vm.lifecycle.crashed",
            "subject": "vm-uuid",
            "at": "2024-05-01T10:00:00+00:00",
            "outcome": "submitted",
            "job_id": JOB,
        },
        event_id=EVENT,
        parent_id=PARENT,
        parent={"id": PARENT, "kind": "server.maintenance", "state": "running", "links": {}},
        children=[
            {"id": CHILD, "kind": "vm.migrate", "state": "succeeded", "links": {"vm_name": "web2"}}
        ],
    )


def test_show_renders_the_causal_chain_from_event_to_children_in_order() -> None:
    out = text(job_detail(job(), related()))
    chain = [
        f"event vm.lifecycle.crashed  id {EVENT}  subject vm-uuid",
        "hook ha-restart (hk1)  submitted",
        f"parent job {PARENT}  server.maintenance  running",
        f"this job {JOB}  vm.ha_restart  failed  vm web1  submitted by hook:ha",
        f"child {CHILD}  vm.migrate  succeeded  vm web2",
    ]
    positions = [out.index(line) for line in chain]
    assert positions == sorted(positions), out


def test_show_renders_the_steps_with_attempts_timings_and_errors() -> None:
    out = text(job_detail(job(), related()))
    place = next(line for line in out.splitlines() if " place " in line)
    start = next(line for line in out.splitlines() if " start " in line)
    assert "done" in place and "1.0s" in place
    assert "failed" in start and " 3 " in start and "2.0s" in start
    assert "hypervisor_unavailable: srv-a1 did not answer" in start
    assert "took" in out and "3.5s" in out  # the job, started to ended


def test_links_the_api_no_longer_has_are_said_so() -> None:
    rel = Related(hook_id="gone", parent_id=PARENT, children_complete=False)
    out = text(job_detail(job(), rel))
    assert "hook gone (deleted)" in out
    assert f"parent job {PARENT} (no longer kept)" in out
    assert "more child jobs may exist" in out


def test_a_job_without_links_is_its_own_root() -> None:
    out = text(job_detail(job(links={}, state="succeeded", error=None), Related()))
    assert f"this job {JOB}" in out and "event" not in out.split("causal chain")[1]


def test_progress_view_and_line() -> None:
    j = job(state="running", progress=0.25, error=None, ended_at=None)
    out = text(progress_view(j))
    assert JOB in out and "running" in out and "25.0%" in out and "place" in out
    assert progress_line(j) == "running    25.0%  place:done start:failed"


def ev(type_: str, job_id: str, time: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "time": time, "data": {"job_id": job_id, **data}}


def test_the_queue_board_follows_job_events_and_lets_ended_jobs_go() -> None:
    now = [100.0]
    board = QueueBoard(clock=lambda: now[0])
    board.load([job(state="running", updated_at="2024-05-01T10:00:03+00:00")])
    # an event older than the listing is skipped; a newer one applies
    assert not board.apply(ev("job.step", JOB, "2024-05-01T10:00:02+00:00", state="queued"))
    assert board.apply(
        ev(
            "job.step",
            JOB,
            "2024-05-01T10:00:05+00:00",
            state="running",
            progress=0.75,
            step="start",
            step_state="running",
            kind="k",
        )
    )
    assert board.jobs[JOB]["step"] == "start" and board.jobs[JOB]["progress"] == 0.75
    # a new job appears; a child's end (about its parent) is not a row
    assert board.apply(
        ev("job.queued", CHILD, "2024-05-01T10:00:06+00:00", state="queued", kind="vm.start")
    )
    assert not board.apply(ev("job.child_ended", PARENT, "2024-05-01T10:00:06+00:00"))
    assert [r["id"] for r in board.rows()] == [JOB, CHILD]  # running before queued
    # an end stays shown for a while, then goes
    board.apply(ev("job.succeeded", JOB, "2024-05-01T10:00:07+00:00", state="succeeded"))
    assert board.jobs[JOB]["step"] == "" and not board.prune()
    now[0] += LINGER_S + 1
    assert board.prune() and list(board.jobs) == [CHILD]
    board.status = {
        "queues": [{"queue": "vmorch.noop", "depth": 1}],
        "running": [],
        "waiting": [],
        "workers": [{"name": "w1"}],
    }
    board.modes = [{"queue": "vmorch.noop", "mode": "pause", "reason": "drill"}]
    out = text(board.render())
    assert "vmorch.noop" in out and "pause" in out and "drill" in out and CHILD in out
