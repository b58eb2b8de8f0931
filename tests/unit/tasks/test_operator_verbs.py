"""Operator verbs on the hand-driven engine: retry from the failed step, recover by hand,
and queue controls (pause, drain, rate limit)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from orchestrator.errors import Conflict, LeaseLost, QueueDraining
from orchestrator.jobs.transitions import Planned, plan_records
from orchestrator.store import keys
from schemas.api import QueueControl, QueueMode
from schemas.jobs import Job, JobLinks, JobState, StepRecord, StepState
from tasks.runner.advance import advance
from tasks.testing import Engine

NOOP = keys.NOOP_QUEUE


def _ctl(mode: QueueMode, rate: int | None = None) -> QueueControl:
    return QueueControl(
        mode=mode,
        rate_limit_per_minute=rate,
        reason="test",
        changed_by="tester",
        changed_at=datetime.now(UTC),
    )


def _control(engine: Engine, mode: QueueMode, rate: int | None = None) -> list[str]:
    released: list[str] = engine.run(engine.services.queues.set(NOOP, _ctl(mode, rate)))
    for job_id in released:
        engine.run(engine.dispatcher.dispatch(job_id, NOOP))
    return released


# -- retry -------------------------------------------------------------------------------------
def test_a_failed_job_is_retried_as_a_new_job_and_the_failed_attempt_is_kept(
    engine: Engine,
) -> None:
    # given a job failed at step 3 by an injected fault (its steps 1-2 undone)
    engine.rt.settings = engine.rt.settings.model_copy(update={"chaos_fail_steps": ["noop:noop-3"]})
    failed = engine.submit({"kind": "noop", "steps": 4})
    engine.drain()
    assert engine.get(failed.id).state == JobState.FAILED
    # when the fault is gone and an operator retries it
    engine.rt.settings = engine.rt.settings.model_copy(update={"chaos_fail_steps": []})
    retry, replayed = engine.run(engine.services.recovery.retry(failed.id, by="alice"))
    engine.drain()
    # then the new job succeeded, linked both ways, and the failed record is unchanged
    assert not replayed and retry.id != failed.id
    done, old = engine.get(retry.id), engine.get(failed.id)
    assert done.state == JobState.SUCCEEDED and done.links.retry_of == failed.id
    assert done.submitted_by == "alice"
    assert old.state == JobState.FAILED and old.retried_as == retry.id
    assert [s.state for s in old.steps] == ["undone", "undone", "failed", "skipped"]
    # and asking again gives the same new job, not a third one
    again, replayed = engine.run(engine.services.recovery.retry(failed.id, by="bob"))
    assert again.id == retry.id and replayed


def test_only_failed_or_aborted_jobs_are_retried(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    with pytest.raises(Conflict, match="queued"):
        engine.run(engine.services.recovery.retry(job.id, by="alice"))
    engine.drain()
    with pytest.raises(Conflict, match="succeeded"):
        engine.run(engine.services.recovery.retry(job.id, by="alice"))


def _job(steps: list[StepRecord]) -> Job:
    now = datetime.now(UTC)
    return Job.model_validate(
        {
            "id": "j",
            "kind": "noop",
            "request": {"kind": "noop", "steps": len(steps)},
            "steps": [s.model_dump() for s in steps],
            "submitted_by": "t",
            "queue": NOOP,
            "created_at": now,
            "updated_at": now,
        }
    )


def test_a_retry_goes_on_from_the_first_step_whose_effect_is_gone() -> None:
    # the failed attempt left its first two steps done: the first keeps its effect (no
    # undo), the second has an undo (it held something for the old job)
    carried = [
        StepRecord(name="a", state=StepState.DONE, attempts=1, outputs={"x": 1}),
        StepRecord(name="b", state=StepState.DONE, attempts=2),
    ]
    plan = [Planned("a", "A", keeps=True), Planned("b", "B"), Planned("c", "C")]
    records = plan_records(_job(carried), plan)
    assert [r.state for r in records] == ["done", "pending", "pending"]
    assert records[0].outputs == {"x": 1} and records[2].name == "c"
    # a done point of no return keeps itself and what came before it
    plan[1] = Planned("b", "B", no_return=True)
    assert [r.state for r in plan_records(_job(carried), plan)] == ["done", "done", "pending"]
    # a plan that changed since (another step first) keeps nothing
    changed = [Planned("z"), *plan]
    assert [r.state for r in plan_records(_job(carried), changed)] == ["pending"] * 4


# -- recover -----------------------------------------------------------------------------------
def test_a_waiting_job_marked_succeeded_by_hand_ends_with_the_reason(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1, "wait_for": "test.never"})
    engine.drain(horizon_s=0)
    assert engine.get(job.id).state == JobState.WAITING
    done = engine.run(
        engine.services.recovery.recover(
            job.id, JobState.SUCCEEDED, by="alice", reason="checked the VM by hand"
        )
    )
    assert done.state == JobState.SUCCEEDED and done.wait is None
    assert done.recovery is not None and done.recovery.from_state == JobState.WAITING
    assert (done.recovery.by, done.recovery.reason) == ("alice", "checked the VM by hand")
    assert engine.run(engine.services.waits.get(job.id)) is None
    # the event says who and why
    fields = engine.run(engine.redis.xrevrange(keys.EVENTS, count=1))[0][1]
    assert fields["t"] == "job.succeeded" and "checked the VM by hand" in fields["e"]


def test_a_worker_still_on_a_recovered_job_is_refused_its_next_write(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 2})
    engine.drain()  # succeeded; then a stuck one: taken by a worker that hangs
    stuck = engine.submit({"kind": "noop", "steps": 2})
    advance(engine.rt, engine.broker.pop())  # step 1 of 2: running
    token = engine.run(engine.rt.leases.acquire_and_read(stuck.id))[0]
    assert token and engine.get(stuck.id).state == JobState.RUNNING
    engine.run(
        engine.services.recovery.recover(stuck.id, JobState.FAILED, by="alice", reason="hung")
    )
    mark = {"progress": 0.9}
    with pytest.raises(LeaseLost):  # the lease was taken from it, and the job ended by hand
        engine.run(engine.jobs.update(stuck.id, lambda j: j.model_copy(update=mark), fence=token))
    # even a worker that took the lease again afterwards (a late message) writes nothing
    again = engine.run(engine.rt.leases.acquire_and_read(stuck.id))[0]
    with pytest.raises(LeaseLost):
        engine.run(engine.jobs.update(stuck.id, lambda j: j.model_copy(update=mark), fence=again))
    ended = engine.get(stuck.id)
    assert ended.state == JobState.FAILED and ended.error and "hung" in ended.error.message
    with pytest.raises(Conflict, match="already"):
        engine.run(engine.services.recovery.recover(job.id, JobState.SUCCEEDED, by="a", reason="x"))


def test_a_queued_job_is_not_recovered_but_aborted(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    with pytest.raises(Conflict, match="abort it instead"):
        engine.run(engine.services.recovery.recover(job.id, JobState.FAILED, by="a", reason="x"))


# -- queue controls ----------------------------------------------------------------------------
def test_a_paused_queue_holds_its_queued_jobs_until_it_accepts_again(engine: Engine) -> None:
    _control(engine, QueueMode.PAUSE)
    job = engine.submit({"kind": "noop", "steps": 1})
    engine.drain(horizon_s=0)
    assert engine.get(job.id).state == JobState.QUEUED
    assert engine.run(engine.redis.smembers(keys.queue_held(NOOP))) == {job.id}
    assert engine.run(engine.redis.zscore(keys.JOBS_DUE, job.id)) is None  # no churn
    dropped = engine.submit({"kind": "noop", "steps": 1})
    engine.drain(horizon_s=0)
    engine.run(engine.submitter.abort(dropped.id))  # an aborted job is held no longer
    assert engine.run(engine.redis.smembers(keys.queue_held(NOOP))) == {job.id}
    released = engine.run(engine.services.queues.set(NOOP, _ctl(QueueMode.ACCEPT)))
    assert released == [job.id]  # the caller dispatches it; should it die first, the timer
    assert engine.run(engine.redis.zscore(keys.JOBS_DUE, job.id)) is not None
    engine.drain(horizon_s=0)
    assert engine.get(job.id).state == JobState.SUCCEEDED


def test_a_draining_queue_refuses_new_jobs_and_names_what_is_pending(engine: Engine) -> None:
    queued = engine.submit({"kind": "noop", "steps": 1})
    _control(engine, QueueMode.DRAIN)
    with pytest.raises(QueueDraining) as refused:
        engine.submit({"kind": "noop", "steps": 1})
    assert refused.value.http_status == 503
    assert NOOP in refused.value.message and "1 job(s) still pending" in refused.value.message
    # the work of a running job (an evacuation's children) is not refused
    child = engine.submit({"kind": "noop", "steps": 1}, links=JobLinks(parent_job=queued.id))
    engine.drain(horizon_s=0)  # what was queued before still runs
    assert engine.get(queued.id).state == JobState.SUCCEEDED
    assert engine.get(child.id).state == JobState.SUCCEEDED


def test_a_rate_limit_lets_n_jobs_start_per_minute_and_times_the_rest(engine: Engine) -> None:
    _control(engine, QueueMode.ACCEPT, rate=2)
    jobs = [engine.submit({"kind": "noop", "steps": 1}) for _ in range(3)]
    engine.drain(horizon_s=0)
    states = [engine.get(j.id).state for j in jobs]
    assert states.count(JobState.SUCCEEDED) == 2 and states.count(JobState.QUEUED) == 1
    late = next(j for j in jobs if engine.get(j.id).state == JobState.QUEUED)
    due_ms = engine.run(engine.redis.zscore(keys.JOBS_DUE, late.id))
    assert 55_000 < due_ms - time.time() * 1000 <= 60_000


def test_a_recovered_job_whose_worker_was_on_it_hands_its_vm_on_a_lease_later(
    engine: Engine,
) -> None:
    # given two jobs queued on one VM, the first held by a (hung) worker
    now = datetime.now(UTC)
    made = []
    for _ in range(2):
        job = _job([StepRecord(name="noop-1")]).model_copy(
            update={
                "id": str(uuid.uuid4()),
                "links": JobLinks(vm_id="vm-1"),
                "created_at": now,
                "updated_at": now,
            }
        )
        assert engine.run(engine.jobs.create(job)).status == "created"
        made.append(job)
    first, second = made
    engine.run(
        engine.jobs.update(first.id, lambda j: j.model_copy(update={"state": JobState.RUNNING}))
    )
    assert engine.run(engine.rt.leases.acquire_and_read(first.id)) is not None
    # when an admin marks it failed
    t0 = time.time() * 1000
    engine.run(engine.services.recovery.recover(first.id, JobState.FAILED, by="a", reason="hung"))
    # then the next job of the VM is due a lease later, not at once
    due = engine.run(engine.redis.zscore(keys.JOBS_DUE, second.id))
    lease_ms = engine.rt.settings.lease_ms
    assert t0 + lease_ms - 50 <= due <= time.time() * 1000 + lease_ms
    assert engine.run(engine.jobs.vm_queue("vm-1")) == [second.id]
