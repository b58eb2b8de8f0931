"""Pure job transitions: a running step's progress, and starting the next step in one write."""

from __future__ import annotations

from orchestrator.jobs import transitions as tr
from schemas.base import utcnow
from schemas.jobs import Job, JobLinks, JobState, StepRecord, StepState
from schemas.requests import Noop


def running_job(n: int = 4) -> Job:
    now = utcnow()
    job = Job(
        id="j1", kind="noop", request=Noop(kind="noop", steps=n), submitted_by="t",
        queue="q", created_at=now, updated_at=now, links=JobLinks(),
    )  # fmt: skip
    started = tr.started(job, [StepRecord(name=f"s{i}") for i in range(n)])
    assert started is not None
    return started


def test_a_running_steps_report_counts_in_the_jobs_progress() -> None:
    job = tr.step_running(running_job(), 0, 1)
    job = tr.step_done(job, 0, {})
    job = tr.step_running(job, 1, 1)
    reported = tr.step_progress(job, 1, 0.5, {"data_processed_bytes": 10})
    assert reported is not None
    assert reported.progress == round(1.5 / 4, 4)
    assert reported.steps[1].detail == {"data_processed_bytes": 10}
    # out of range is clamped; a step that is not running records nothing
    assert tr.step_progress(job, 1, 7.0, {}).steps[1].progress == 1.0  # type: ignore[union-attr]
    assert tr.step_progress(job, 2, 0.5, {}) is None
    # done, the step's own progress is gone and the job counts it whole
    done = tr.step_done(reported, 1, {})
    assert done.steps[1].progress is None and done.progress == 0.5


def test_the_next_step_starts_in_the_same_write_only_when_it_may() -> None:
    job = tr.step_running(running_job(), 0, 1)
    nxt = tr.next_running(tr.step_done(job, 0, {}), 1)
    assert [s.state for s in nxt.steps[:2]] == [StepState.DONE, StepState.RUNNING]
    assert nxt.steps[1].attempts == 1
    # not after an abort, nor for a step that was tried before (a retry has its backoff)
    aborting = tr.abort_requested(tr.step_done(job, 0, {}), "stop")
    assert aborting is not None and aborting.state == JobState.ABORTING
    assert tr.next_running(aborting, 1).steps[1].state == StepState.PENDING
    tried = tr.with_step(tr.step_done(job, 0, {}), 1, attempts=1)
    assert tr.next_running(tried, 1).steps[1].state == StepState.PENDING
    # past the last step: unchanged
    assert tr.next_running(job, 4) is job
