"""Job listing pages: ties on the created-µs score neither skip nor repeat a job (L15)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.errors import ValidationFailed
from orchestrator.store import keys
from orchestrator.store.jobs import JobStore
from schemas.jobs import Job
from schemas.requests import Noop
from tasks.testing import Engine

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def store_job(engine: Engine, created: datetime) -> str:
    """A queued noop job created at exactly `created` (as two api processes may)."""
    job = Job(
        id=str(uuid.uuid4()),
        kind="noop",
        request=Noop(kind="noop", steps=1),
        submitted_by="test",
        queue=keys.NOOP_QUEUE,
        created_at=created,
        updated_at=created,
    )
    assert engine.run(engine.jobs.create(job)).status == "created"
    return job.id


def all_pages(engine: Engine, limit: int, **filters: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        jobs, cursor = engine.run(engine.jobs.list(limit=limit, cursor=cursor, **filters))
        pages.append([j.id for j in jobs])
        if cursor is None:
            return pages
        assert JobStore.valid_cursor(cursor)


def newest_first(ids_by_time: list[tuple[datetime, str]]) -> list[str]:
    return [i for _, i in sorted(ids_by_time, reverse=True)]


@pytest.mark.parametrize("limit", [1, 3, 7, 40])
def test_jobs_created_in_the_same_microsecond_are_each_listed_once(
    store_engine: Engine, limit: int
) -> None:
    # given: 25 jobs created in one microsecond, between jobs created before and after
    stored = [(T0 - timedelta(seconds=1), store_job(store_engine, T0 - timedelta(seconds=1)))]
    stored += [(T0, store_job(store_engine, T0)) for _ in range(25)]
    stored += [(T0 + timedelta(seconds=1), store_job(store_engine, T0 + timedelta(seconds=1)))]
    # when: paging through all of them, page boundaries falling among the ties
    pages = all_pages(store_engine, limit)
    # then: every job once, in one order (newest first, ties by id descending)
    listed = [i for page in pages for i in page]
    assert listed == newest_first(stored)
    assert all(len(p) == limit for p in pages[:-1])


def test_a_filtered_listing_pages_through_ties_too(store_engine: Engine) -> None:
    ids = [store_job(store_engine, T0) for _ in range(12)]
    store_engine.run(store_engine.submitter.abort(ids[3]))
    store_engine.run(store_engine.submitter.abort(ids[8]))
    queued = [i for page in all_pages(store_engine, 4, state="queued") for i in page]
    assert queued == sorted(set(ids) - {ids[3], ids[8]}, reverse=True)
    aborted = [i for page in all_pages(store_engine, 1, state="aborted") for i in page]
    assert aborted == sorted([ids[3], ids[8]], reverse=True)


def test_a_score_only_cursor_of_an_older_version_still_pages(store_engine: Engine) -> None:
    older = [store_job(store_engine, T0 - timedelta(seconds=s)) for s in (1, 2)]
    store_job(store_engine, T0)
    cursor = str(int(T0.timestamp() * 1_000_000))
    jobs, nxt = store_engine.run(store_engine.jobs.list(limit=10, cursor=cursor))
    assert [j.id for j in jobs] == older and nxt is None


@pytest.mark.parametrize(
    "cursor", ["", "12a", "١٢٣", "1-abc", "1-" + "G" * 36, "1" * 21, f"1-{uuid.uuid4()}-"]
)
def test_a_malformed_cursor_is_refused(engine: Engine, cursor: str) -> None:
    assert not JobStore.valid_cursor(cursor)
    with pytest.raises(ValidationFailed):
        engine.run(engine.jobs.list(cursor=cursor))


def test_a_page_reads_only_the_records_it_returns(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: more jobs than a page
    for i in range(60):
        store_job(engine, T0 + timedelta(seconds=i))
    parsed: list[str] = []
    real = Job.model_validate_json

    def counting(doc: str | bytes) -> Job:
        job = real(doc)
        parsed.append(job.id)
        return job

    monkeypatch.setattr(Job, "model_validate_json", counting)
    # when: a page of 10, unfiltered or by one filter (the index answers it)
    for filters in ({}, {"state": "queued"}, {"kind": "noop"}):
        parsed.clear()
        page, _ = engine.run(engine.jobs.list(limit=10, **filters))
        # then: 10 records parsed, not a read-ahead batch
        assert len(page) == 10 and parsed == [j.id for j in page]
