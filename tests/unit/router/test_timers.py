"""The router's sweep: re-dispatch what was lost, never what is merely waiting."""

from __future__ import annotations

from orchestrator.router.timers import Timers
from orchestrator.services import Services
from orchestrator.settings import Settings
from tasks.testing import Engine


def router(engine: Engine, **kw: float) -> Timers:
    settings = Settings(redis_url="redis://unused", redispatch_after_s=0.001, **kw)
    return Timers(Services.build(settings, engine.redis))


def test_a_job_whose_message_is_waiting_in_line_gets_no_duplicate(engine: Engine) -> None:
    job = engine.submit({"kind": "noop"})
    assert engine.broker.pending() == [job.id]
    assert engine.run(router(engine).sweep()) == 0
    assert engine.broker.pending() == [job.id]


def test_a_job_whose_message_was_lost_is_dispatched_again(engine: Engine) -> None:
    job = engine.submit({"kind": "noop"})
    engine.broker.pop()  # a worker took it, acknowledged it, and died before starting
    assert engine.run(router(engine).sweep()) == 1
    assert engine.broker.pending() == [job.id]


def test_a_step_whose_worker_died_is_dispatched_even_in_a_backlog(engine: Engine) -> None:
    # given a job whose step was running when its worker died (lease gone), and a backlog
    job = engine.submit({"kind": "noop", "steps": 2, "step_delay_ms": 1})
    engine.run(engine.jobs.update(job.id, lambda j: None))
    engine.broker.pop()
    engine.run(engine.rt.leases.acquire_and_read(job.id))[0]  # the dead worker's lease...
    # (no real worker here: mark the step running, as the dead worker had)
    from schemas.jobs import JobState, StepRecord, StepState

    engine.run(
        engine.jobs.update(
            job.id,
            lambda j: j.model_copy(
                update={
                    "state": JobState.RUNNING,
                    "steps": [
                        StepRecord(name="noop-1", state=StepState.RUNNING, attempts=1),
                        StepRecord(name="noop-2"),
                    ],
                }
            ),
        )
    )
    engine.run(engine.redis.delete(f"vmorch:lease:{job.id}"))  # ...expires
    other = engine.submit({"kind": "noop"})  # keeps the queue non-empty
    # when the router sweeps
    assert engine.run(router(engine).sweep()) == 1
    # then the job is dispatched again despite the queue
    assert engine.broker.pending() == [other.id, job.id]
    engine.drain()
    done = engine.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.steps[0].attempts == 2


def test_a_job_waiting_too_long_in_line_is_dispatched_again(engine: Engine) -> None:
    job = engine.submit({"kind": "noop"})
    assert engine.run(router(engine, redispatch_max_wait_s=0.001).sweep()) == 1
    assert engine.broker.pending() == [job.id, job.id]
