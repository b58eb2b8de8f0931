"""The step runner: order, retries, compensation, abort, per-VM order, fencing."""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.errors import LeaseLost
from schemas.jobs import JobState, StepState
from tasks.testing import Engine


def states(job: object) -> list[str]:
    return [s.state.value for s in job.steps]  # type: ignore[attr-defined]


def test_noop_workflow_runs_every_step_in_order(engine: Engine) -> None:
    # given a 4-step job
    job = engine.submit({"kind": "noop", "steps": 4})
    # when the engine runs it
    engine.drain()
    # then every step is done once and the job succeeded with full progress
    done = engine.get(job.id)
    assert done.state == JobState.SUCCEEDED
    assert states(done) == ["done"] * 4
    assert [s.attempts for s in done.steps] == [1, 1, 1, 1]
    assert done.progress == 1.0
    assert done.result == {f"step{i}": "ok" for i in range(1, 5)}
    assert all(s.started_at and s.ended_at and s.started_at <= s.ended_at for s in done.steps)


def test_transient_failures_are_retried_until_they_pass(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 2, "transient_failures": 2})
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.SUCCEEDED
    assert [s.attempts for s in done.steps] == [3, 3]


def test_transient_failures_past_the_attempt_limit_fail_and_compensate(engine: Engine) -> None:
    # step_max_attempts is 3 in these settings; 5 transient errors exceed it
    job = engine.submit({"kind": "noop", "steps": 2, "transient_failures": 5})
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.FAILED
    assert states(done) == ["failed", "skipped"]
    assert done.steps[0].attempts == 3
    assert done.error is not None and done.error.code == "hypervisor_unavailable"


def test_permanent_failure_undoes_done_steps_in_reverse(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 4, "fail_at": 3})
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.FAILED
    assert states(done) == ["undone", "undone", "failed", "skipped"]
    assert done.undone_steps == ["noop-1", "noop-2"]
    assert "noop-3" in done.error.message


def test_abort_of_a_queued_job_drops_it(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 2})
    engine.run(engine.submitter.abort(job.id, "changed my mind"))
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.ABORTED
    assert states(done) == []  # never started
    assert "changed my mind" in done.error.message


def test_abort_of_a_running_job_stops_at_the_step_boundary_and_undoes(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 3})
    # run exactly one step, then ask for an abort
    job_id = engine.broker.pop()
    from tasks.runner.advance import advance

    advance(engine.rt, job_id)
    assert engine.get(job.id).state == JobState.RUNNING
    aborting = engine.run(engine.submitter.abort(job.id))
    assert aborting.state == JobState.ABORTING
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.ABORTED
    assert states(done) == ["undone", "skipped", "skipped"]


def test_abort_of_an_ended_job_is_a_conflict(engine: Engine) -> None:
    import pytest

    from orchestrator.errors import Conflict

    job = engine.submit({"kind": "noop", "steps": 1})
    engine.drain()
    with pytest.raises(Conflict):
        engine.run(engine.submitter.abort(job.id))


def test_a_second_worker_cannot_take_a_held_job(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    token = engine.run(engine.rt.leases.acquire_and_read(job.id))[0]
    assert token is not None
    from tasks.runner.advance import advance

    assert advance(engine.rt, job.id) == "busy"
    assert engine.get(job.id).state == JobState.QUEUED


def test_a_worker_whose_lease_was_taken_over_records_nothing(engine: Engine) -> None:
    # given a job whose lease was taken by worker A, then expired and taken by worker B
    job = engine.submit({"kind": "noop", "steps": 1})
    old = engine.run(engine.rt.leases.acquire_and_read(job.id))[0]
    engine.run(engine.redis.delete(f"vmorch:lease:{job.id}"))  # A's lease expires
    new = engine.run(engine.rt.leases.acquire_and_read(job.id))[0]
    assert new is not None and old is not None and new > old
    # when A tries to record a transition with its old fencing token
    import pytest

    with pytest.raises(LeaseLost):
        engine.run(
            engine.jobs.update(job.id, lambda j: j.model_copy(update={"progress": 0.5}), fence=old)
        )
    # then nothing changed, while B's token still writes
    assert engine.get(job.id).progress == 0.0
    engine.run(
        engine.jobs.update(job.id, lambda j: j.model_copy(update={"progress": 0.5}), fence=new)
    )
    assert engine.get(job.id).progress == 0.5


def test_steps_of_a_failed_job_stay_failed_when_a_stale_message_arrives(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 2, "fail_at": 1})
    engine.drain()
    engine.broker.push(job.id)  # at-least-once: a duplicate message
    assert engine.drain() == ["advanced"]
    assert engine.get(job.id).state == JobState.FAILED
    assert engine.get(job.id).steps[1].state == StepState.SKIPPED


def slow_retry_engine() -> Engine:
    from orchestrator.settings import Settings

    return Engine(
        Settings(
            redis_url="redis://unused",
            lease_ms=1000,
            retry_base_s=60,
            retry_max_s=60,
            step_max_attempts=3,
        )
    )


def test_a_duplicate_message_does_not_cut_a_retry_backoff_short() -> None:
    from tasks.runner.advance import advance

    engine = slow_retry_engine()
    try:
        job = engine.submit({"kind": "noop", "steps": 1, "transient_failures": 5})
        advance(engine.rt, engine.broker.pop())  # attempt 1 fails transiently
        assert engine.get(job.id).steps[0].retry_at is not None
        for _ in range(3):  # duplicates arrive during the 30-60 s backoff
            assert advance(engine.rt, job.id) == "advanced"
        step = engine.get(job.id).steps[0]
        assert step.attempts == 1 and step.state == StepState.PENDING
        assert engine.get(job.id).state == JobState.RUNNING
    finally:
        engine.close()


def test_abort_during_a_retry_backoff_undoes_the_half_done_step() -> None:
    from tasks.runner.advance import advance

    engine = slow_retry_engine()
    try:
        job = engine.submit({"kind": "noop", "steps": 2, "transient_failures": 5})
        advance(engine.rt, engine.broker.pop())
        engine.run(engine.submitter.abort(job.id))
        advance(engine.rt, engine.broker.pop())
        done = engine.get(job.id)
        assert done.state == JobState.ABORTED
        assert states(done) == ["undone", "skipped"]
    finally:
        engine.close()


def test_idempotency_keys_belong_to_their_caller(engine: Engine) -> None:
    a = engine.submit({"kind": "noop"}, idem_key="same", idem_scope="token-a")
    b = engine.submit({"kind": "noop", "steps": 2}, idem_key="same", idem_scope="token-b")
    assert a.id != b.id


def test_quick_steps_run_in_one_message_within_the_slice() -> None:
    from orchestrator.settings import Settings
    from tasks.runner.advance import advance

    engine = Engine(Settings(redis_url="redis://unused", step_slice_ms=5000))
    try:
        job = engine.submit({"kind": "noop", "steps": 5})
        assert advance(engine.rt, engine.broker.pop()) == "advanced"
        # one message ran all five steps and ended the job; nothing was published after it
        assert engine.get(job.id).state == JobState.SUCCEEDED
        assert engine.broker.pending() == []
    finally:
        engine.close()


def test_within_the_slice_one_write_ends_a_step_and_starts_the_next() -> None:
    import json

    from orchestrator.settings import Settings
    from tasks.runner.advance import advance

    engine = Engine(Settings(redis_url="redis://unused", step_slice_ms=5000))
    try:
        job = engine.submit({"kind": "noop", "steps": 5})
        advance(engine.rt, engine.broker.pop())
        done = engine.get(job.id)
        assert done.state == JobState.SUCCEEDED
        # every step ran once, in order, each started before it ended
        assert [s.attempts for s in done.steps] == [1] * 5
        for a, b in zip(done.steps, done.steps[1:], strict=False):
            assert a.started_at and a.ended_at and b.started_at
            assert a.started_at <= a.ended_at <= b.started_at
        # and the job wrote 7 times, not 12: queued, running with step 1 running, four
        # writes that each end a step and start the next, and the last one ending the job
        entries = engine.run(engine.redis.xrange("vmorch:events"))
        events = [json.loads(f["e"]) for _, f in entries if f.get("s") == job.id]
        assert [e["type"] for e in events] == [
            "job.queued",
            "job.running",
            *["job.step"] * 4,
            "job.succeeded",
        ]
        assert events[1]["data"]["running_step"] == "noop-1"
        assert [(e["data"]["step"], e["data"]["running_step"]) for e in events[2:6]] == [
            (f"noop-{i}", f"noop-{i + 1}") for i in range(1, 5)
        ]
    finally:
        engine.close()


def test_an_abort_seen_at_a_step_end_starts_no_further_step() -> None:
    from orchestrator.settings import Settings
    from tasks.runner.advance import advance

    engine = Engine(Settings(redis_url="redis://unused", step_slice_ms=5000))
    job = engine.submit({"kind": "noop", "steps": 3, "step_delay_ms": 1})
    # given an abort requested while the first step acts
    aborted: list[bool] = []

    def abort_once() -> None:
        if not aborted:
            aborted.append(True)
            engine.run(engine.submitter.abort(job.id))

    real_sleep = StepContextSleep.patch(abort_once)
    try:
        advance(engine.rt, engine.broker.pop())
        engine.drain()
        done = engine.get(job.id)
    finally:
        real_sleep.restore()
        engine.close()
    # then the write that ended step 1 did not start step 2: it was undone, the rest skipped
    assert done.state == JobState.ABORTED
    assert states(done) == ["undone", "skipped", "skipped"]
    assert done.steps[1].attempts == 0


def test_a_slice_ends_by_putting_the_rest_back_on_the_queue() -> None:
    from orchestrator.settings import Settings
    from tasks.runner.advance import advance

    engine = Engine(Settings(redis_url="redis://unused", step_slice_ms=50))
    try:
        job = engine.submit({"kind": "noop", "steps": 3, "step_delay_ms": 60})
        advance(engine.rt, engine.broker.pop())
        assert states(engine.get(job.id)) == ["done", "pending", "pending"]
        assert engine.broker.pending() == [job.id]
        engine.drain()
        assert engine.get(job.id).state == JobState.SUCCEEDED
    finally:
        engine.close()


def _post(engine: Engine, type_: str, subject: str) -> None:
    from orchestrator.store.events import EventLog, make_event

    engine.run(EventLog(engine.redis).publish(make_event(type_, "test://", subject, {})))


def test_a_waiting_job_holds_no_worker_and_resumes_on_its_event(engine: Engine) -> None:
    from tasks.runner.advance import advance

    job = engine.submit({"kind": "noop", "steps": 2, "wait_for": "test.ping"})
    advance(engine.rt, engine.broker.pop())  # step 1
    advance(engine.rt, engine.broker.pop())  # step 2 starts waiting; the worker returns
    waiting = engine.get(job.id)
    assert waiting.state == JobState.WAITING and waiting.wait is not None
    assert waiting.wait.types == ["test.ping"] and waiting.wait.subject == job.id
    assert not engine.run(engine.rt.leases.held(job.id))
    # an event about another subject changes nothing; the matching one resumes the job
    _post(engine, "test.ping", "someone-else")
    sid = engine.run(engine.redis.xrevrange("vmorch:events", count=1))[0][0]
    from schemas.events import Event

    last = Event.model_validate_json(
        engine.run(engine.redis.xrevrange("vmorch:events", count=1))[0][1]["e"]
    )
    assert engine.run(engine.rt.waits.on_event(sid, last)) == []
    _post(engine, "test.ping", job.id)
    sid, fields = engine.run(engine.redis.xrevrange("vmorch:events", count=1))[0]
    assert engine.run(engine.rt.waits.on_event(sid, Event.model_validate_json(fields["e"]))) == [
        job.id
    ]
    engine.broker.push(job.id)
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.wait is None
    assert done.steps[1].outputs["event"]["type"] == "test.ping"


def test_an_event_before_the_wait_is_registered_still_counts(engine: Engine) -> None:
    from tasks.workflows import noop

    # given a step that takes the stream position, then acts (here: its delay) and only
    # then registers its wait, and an event that arrives during the action
    job = engine.submit({"kind": "noop", "steps": 1, "step_delay_ms": 1, "wait_for": "test.go"})
    real_sleep = StepContextSleep.patch(lambda: _post(engine, "test.go", job.id))
    try:
        engine.drain()
    finally:
        real_sleep.restore()
    # then the registration found it on the stream and the job went on at once
    done = engine.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.steps[0].outputs["event"]["type"] == "test.go"
    assert noop  # the workflow under test


def test_a_wait_that_times_out_fails_or_escalates_as_declared(engine: Engine) -> None:
    failing = engine.submit(
        {"kind": "noop", "steps": 1, "wait_for": "never", "wait_timeout_s": 0.2}
    )
    escalating = engine.submit(
        {
            "kind": "noop",
            "steps": 1,
            "wait_for": "never",
            "wait_timeout_s": 0.2,
            "on_timeout": "escalate",
        }
    )
    engine.drain()
    failed, escalated = engine.get(failing.id), engine.get(escalating.id)
    assert failed.state == JobState.FAILED and "never" in failed.error.message
    assert escalated.state == JobState.SUCCEEDED
    assert escalated.result["escalated"] is True


def test_abort_of_a_waiting_job(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1, "wait_for": "never"})
    engine.drain(horizon_s=0)
    assert engine.get(job.id).state == JobState.WAITING
    engine.run(engine.submitter.abort(job.id))
    engine.drain(horizon_s=0)
    done = engine.get(job.id)
    assert done.state == JobState.ABORTED and states(done) == ["undone"]
    assert engine.run(engine.rt.waits.get(job.id)) is None


class StepContextSleep:
    """Runs a callback in place of the step's sleep: 'something happens during the action'."""

    def __init__(self, original: object) -> None:
        self.original = original

    @classmethod
    def patch(cls, during: object) -> StepContextSleep:
        from tasks.step import StepContext

        saved = cls(StepContext.sleep)
        StepContext.sleep = lambda self, seconds: during()  # type: ignore[assignment,method-assign,misc]
        return saved

    def restore(self) -> None:
        from tasks.step import StepContext

        StepContext.sleep = self.original  # type: ignore[method-assign]


def test_a_step_waiting_in_rounds_keeps_its_deadline_across_rechecks(
    settings: Any, monkeypatch: Any
) -> None:
    """A resume that finds nothing new (no event, the same wait) neither moves the
    deadline nor rewrites the job: the step fails at the round's deadline."""
    import fakeredis

    from tasks.step import Step, Wait
    from tasks.testing import Engine
    from tasks.workflows import registry

    rounds: list[int] = []

    def wait(ctx: Any) -> Wait:
        rounds.append(1)
        return Wait(types=["never.*"], subject=ctx.job.id, since="0-0", timeout_s=0.5)

    step = Step("rounds", wait, None, "waits in rounds", resume=wait)
    monkeypatch.setitem(registry.WORKFLOWS, "noop", lambda req: [step])
    quick = settings.model_copy(update={"wait_recheck_s": 0.05})
    e = Engine(quick, lambda: fakeredis.FakeAsyncRedis(decode_responses=True))
    try:
        job = e.submit({"kind": "noop", "steps": 1})
        t0 = time.monotonic()
        e.drain(horizon_s=2.0)
        took = time.monotonic() - t0
        done = e.get(job.id)
        assert done.state == JobState.FAILED, done
        assert "before the deadline" in (done.error.message if done.error else "")
        assert took < 1.5, took
        assert len(rounds) >= 4  # looked at again and again, each time the same wait
        events = e.run(e.redis.xrange("vmorch:events"))
        mine = [f for _id, f in events if f.get("s") == job.id]
        waits = [f for f in mine if f["t"] == "job.waiting"]
        steps = [json.loads(f["e"])["data"].get("step_state") for f in mine if f["t"] == "job.step"]
        # one wait, written once: no write (nor event) per recheck
        assert len(waits) == 1 and "waiting" not in steps, (len(waits), steps)
    finally:
        e.close()
