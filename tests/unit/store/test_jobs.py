"""Job store: compare-and-set transitions, idempotency, VM queues, listing."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import Conflict
from orchestrator.store import jobdoc
from schemas.jobs import TRANSITIONS, Job, JobState
from tasks.testing import Engine


def test_terminal_states_allow_no_transition() -> None:
    for state in JobState:
        assert (TRANSITIONS[state] == frozenset()) == state.terminal


def test_an_illegal_transition_is_refused(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    with pytest.raises(Conflict):
        engine.run(
            engine.jobs.update(job.id, lambda j: j.model_copy(update={"state": JobState.SUCCEEDED}))
        )
    assert engine.get(job.id).state == JobState.QUEUED


def test_every_transition_emits_an_event(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    engine.drain()
    entries = engine.run(engine.redis.xrange("vmorch:events"))
    types = [
        json.loads(f["e"])["type"] for _, f in entries if json.loads(f["e"])["subject"] == job.id
    ]
    assert types[0] == "job.queued"
    assert "job.running" in types and types[-1] == "job.succeeded"


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(engine: Engine) -> None:
    first = engine.submit({"kind": "noop", "steps": 2}, idem_key="k1")
    again = engine.submit({"kind": "noop", "steps": 2}, idem_key="k1")
    assert again.id == first.id
    with pytest.raises(Conflict):
        engine.submit({"kind": "noop", "steps": 3}, idem_key="k1")
    assert len(engine.broker.pending()) == 1  # the replay dispatched nothing


def test_a_concurrent_write_is_retried_not_lost(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 1})
    before = engine.run(engine.jobs.get_versioned(job.id))
    # another writer changes the record first
    engine.run(engine.jobs.update(job.id, lambda j: j.model_copy(update={"progress": 0.25})))
    status, _ = engine.run(
        engine.jobs.commit(before, before.job.model_copy(update={"progress": 0.75}))
    )
    assert status == "conflict"
    assert engine.get(job.id).progress == 0.25


def test_listing_is_newest_first_filtered_and_paged(engine: Engine) -> None:
    ids = [engine.submit({"kind": "noop", "steps": 1}).id for _ in range(5)]
    page1, cursor = engine.run(engine.jobs.list(limit=2))
    assert [j.id for j in page1] == ids[::-1][:2]
    page2, _cursor2 = engine.run(engine.jobs.list(limit=2, cursor=cursor))
    assert [j.id for j in page2] == ids[::-1][2:4]
    engine.run(engine.submitter.abort(ids[0]))
    aborted, _ = engine.run(engine.jobs.list(state="aborted"))
    assert [j.id for j in aborted] == [ids[0]]
    queued, _ = engine.run(engine.jobs.list(state="queued", kind="noop"))
    assert len(queued) == 4


def test_a_record_is_stored_without_defaults_and_reads_back_whole(engine: Engine) -> None:
    # given: jobs in several shapes (finished, failed with an error, waiting, queued with
    # an Idempotency-Key)
    done = engine.submit({"kind": "noop", "steps": 2})
    failed = engine.submit({"kind": "noop", "steps": 2, "fail_at": 1})
    waiting = engine.submit({"kind": "noop", "steps": 1, "wait_for": "x.y", "wait_timeout_s": 60})
    engine.drain(horizon_s=0)
    queued = engine.submit({"kind": "noop"}, idem_key="k", idem_scope="s")
    for job_id in (done.id, failed.id, waiting.id, queued.id):
        job = engine.get(job_id)
        raw = engine.run(engine.redis.hget(f"vmorch:job:{job_id}", "doc"))
        assert raw.startswith(jobdoc.PREFIX)  # deflated
        stored = json.loads(jobdoc.decode_json(raw))
        # then: no null or empty default is stored, but the request is whole...
        assert "abort_requested" not in stored and "undone_steps" not in stored
        assert all("retry_at" not in s for s in stored.get("steps", []))
        assert stored["request"] == job.request.model_dump(mode="json")
        # ...and the record reads back as the job, and the API shows every field
        assert Job.model_validate(stored) == job
        assert set(json.loads(job.model_dump_json())) == set(Job.model_fields)
    assert engine.get(waiting.id).wait is not None
    assert engine.get(failed.id).error is not None


def test_a_record_is_deflated_to_a_fraction_and_plain_json_records_still_read(
    engine: Engine,
) -> None:
    # given a finished 5-step job
    job = engine.submit({"kind": "noop", "steps": 5})
    engine.drain()
    raw = engine.run(engine.redis.hget(f"vmorch:job:{job.id}", "doc"))
    plain = jobdoc.decode_json(raw)
    # then its record is under a third of its JSON (the memory a finished job keeps)
    assert len(raw) * 3 < len(plain), (len(raw), len(plain))
    # and a record written by an older version (plain JSON) reads back the same
    engine.run(engine.redis.hset(f"vmorch:job:{job.id}", "doc", plain))
    assert engine.get(job.id) == jobdoc.decode(raw)
    # and a damaged record is a ValueError (retention deletes it and says so), not a crash
    with pytest.raises(ValueError):
        jobdoc.decode(jobdoc.PREFIX + "AAAA")


def test_a_step_event_names_its_step_and_the_state_it_went_to(engine: Engine) -> None:
    job = engine.submit({"kind": "noop", "steps": 2})
    engine.drain()
    data = [
        json.loads(f["e"])["data"]
        for _, f in engine.run(engine.redis.xrange("vmorch:events"))
        if json.loads(f["e"])["subject"] == job.id
    ]
    steps = [(d["step"], d["step_state"]) for d in data if "step" in d]
    assert steps == [
        ("noop-1", "running"),
        ("noop-1", "done"),
        ("noop-2", "running"),
        ("noop-2", "done"),
    ]
    assert all("steps" not in d for d in data)
