"""The parts of the SSE path that need no server: gap detection, a stream's bounded queue,
the seam between history and live entries (on fakeredis, the hub's reader not started),
caps, filters and lazy decoding."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import fakeredis
import pytest
from aiohttp.test_utils import make_mocked_request

from orchestrator import globs
from orchestrator.api.eventfilter import EventFilter, read_matching
from orchestrator.api.hub import Delivered, EventHub, Subscriber
from orchestrator.errors import TooManyStreams, ValidationFailed
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import Entry, StreamInfo, make_event
from schemas.api import EventGap, StreamEvent
from schemas.events import Event


def info(first: str | None, added: int, length: int, last: str, deleted: str = "0-0") -> StreamInfo:
    return StreamInfo(first, deleted, length, entries_added=added, last_id=last)


def test_lost_after_sees_trims_that_redis_does_not_record_as_deletions() -> None:
    trimmed = info("10-0", added=10, length=5, last="14-0")  # 5-0 .. 9-0 were trimmed
    assert trimmed.lost_after("0-0") and trimmed.lost_after("7-3")
    assert not trimmed.lost_after("10-0") and not trimmed.lost_after("12-0")
    emptied = info(None, added=10, length=0, last="14-0")
    assert emptied.lost_after("13-0") and not emptied.lost_after("14-0")
    # nothing ever removed: an old position is only old, nothing after it is missing
    assert not info("10-0", added=5, length=5, last="14-0").lost_after("1-0")
    # an XDEL'd entry after the position, older than the first entry kept
    deleted = info("12-0", added=3, length=3, last="14-0", deleted="11-0")
    assert deleted.lost_after("10-0")


def delivered(sid: str, type_: str = "test.x") -> Delivered:
    ev = make_event(type_, "t://a", None, {})
    return Delivered(sid, ev, ev.model_dump_json())


async def test_a_full_queue_is_emptied_and_its_stream_set_behind() -> None:
    sub = Subscriber("tok", EventFilter(), lambda: False, queue_max=3)
    for i in range(3):
        sub.offer(delivered(f"{i + 1}-0"))
    assert len(sub.queue) == 3 and not sub.behind

    sub.offer(delivered("4-0"))  # one too many
    assert sub.behind and len(sub.queue) == 0 and sub.overflows == 1
    sub.offer(delivered("5-0"))  # while behind: read from Redis later, not queued
    assert len(sub.queue) == 0
    assert await sub.next(0.01) is None  # woken without an entry: read from Redis first


async def test_next_waits_for_an_entry_and_end_wakes_it() -> None:
    sub = Subscriber("tok", EventFilter(), lambda: False, queue_max=3)
    assert await sub.next(0.01) is None  # nothing came
    waiting = asyncio.ensure_future(sub.next(10))
    await asyncio.sleep(0)  # one turn of the loop: it is waiting now
    d = delivered("1-0")
    sub.offer(d)
    assert await asyncio.wait_for(waiting, 1) is d
    waiting = asyncio.ensure_future(sub.next(10))
    await asyncio.sleep(0)
    sub.end("revoked")
    assert await asyncio.wait_for(waiting, 1) is None and sub.ended == "revoked"
    sub.offer(delivered("2-0"))
    assert not sub.queue  # an ended stream takes nothing


@pytest.fixture
async def hub() -> AsyncIterator[EventHub]:
    settings = Settings(redis_url="redis://unused", sse_max_per_token=2, sse_max_total=3)
    hub = EventHub(Services.build(settings, fakeredis.FakeAsyncRedis(decode_responses=True)))
    yield hub


async def add(hub: EventHub, n: int, type_: str = "test.x") -> list[str]:
    redis = hub._services.redis
    out = []
    for _ in range(n):
        ev = make_event(type_, "t://a", None, {})
        out.append(str(await redis.xadd(keys.EVENTS, {"e": ev.model_dump_json()})))
    return out


async def test_resume_takes_history_then_live_skipping_what_history_sent(hub: EventHub) -> None:
    # given: five entries; a stream resuming after the first
    ids = await add(hub, 5)
    sub, after = await hub.open("tok", EventFilter(), lambda: False, ids[0])
    read_history = hub._reader.after_checked

    async def meanwhile(start: str, count: int) -> tuple[StreamInfo, list[Entry]]:
        """While the stream reads history, a 6th entry comes and the hub fans out the 4th
        to the 6th (the first two are in the history read too)."""
        result = await read_history(start, count)
        if not sub.queue:
            ids.extend(await add(hub, 1))
            hub._fan_out(await hub._services.redis.xrange(keys.EVENTS, ids[3], "+"))
            assert [d.sid for d in sub.queue] == ids[3:]
        return result

    hub._reader.after_checked = meanwhile  # type: ignore[method-assign]
    items = hub.entries(sub, after, idle_s=0.01)
    got = [await anext(items) for _ in range(5)]
    assert [g.sid for g in got if isinstance(g, Delivered)] == ids[1:]  # each once, in order
    assert await anext(items) is None  # then nothing more: idle
    await items.aclose()


async def test_a_trimmed_resume_yields_the_gap_first(hub: EventHub) -> None:
    ids = await add(hub, 6)
    await hub._services.redis.xtrim(keys.EVENTS, minid=ids[3], approximate=False)
    sub, after = await hub.open("tok", EventFilter(), lambda: False, ids[0])
    items = hub.entries(sub, after, idle_s=0.01)
    first = await anext(items)
    assert first == EventGap(after=ids[0], first_id=ids[3])
    assert [(await anext(items)).sid for _ in range(3)] == ids[3:]  # type: ignore[union-attr]
    await items.aclose()


async def test_caps_per_token_and_in_total(hub: EventHub) -> None:
    a1 = (await hub.open("a", EventFilter(), lambda: False, None))[0]
    await hub.open("a", EventFilter(), lambda: False, None)
    with pytest.raises(TooManyStreams) as per_token:
        await hub.open("a", EventFilter(), lambda: False, None)
    assert per_token.value.details[0][0] == ["header", "Authorization"]
    await hub.open("b", EventFilter(), lambda: False, None)
    with pytest.raises(TooManyStreams) as total:
        await hub.open("c", EventFilter(), lambda: False, None)
    assert total.value.http_status == 429 and total.value.retry_after_s > 0
    hub.close(a1)
    hub.close(a1)  # twice: still one slot freed, not two
    await hub.open("c", EventFilter(), lambda: False, None)
    with pytest.raises(TooManyStreams):
        await hub.open("d", EventFilter(), lambda: False, None)


def test_type_globs_are_bounded_and_use_the_bounded_cache() -> None:
    ok = make_mocked_request("GET", "/v1/events?type=" + "a" * globs.MAX_GLOB_CHARS)
    assert EventFilter.from_query(ok).type_glob == "a" * globs.MAX_GLOB_CHARS
    long = make_mocked_request("GET", "/v1/events?type=" + "a" * (globs.MAX_GLOB_CHARS + 1))
    with pytest.raises(ValidationFailed) as e:
        EventFilter.from_query(long)
    assert e.value.details[0][0] == ["query", "type"]

    misses = globs._compiled.cache_info().misses
    flt = EventFilter(type_glob="vm.lifecycle.never-seen-before-*")
    assert flt.matches("vm.lifecycle.never-seen-before-x", None, None)
    assert not flt.matches(42, None, None)  # a type that is not even a string
    assert globs._compiled.cache_info().misses == misses + 1


def test_only_matching_entries_are_validated(caplog: pytest.LogCaptureFixture) -> None:
    bad = '{"type": "vm.lifecycle.started", "source": "s"}'  # no id, no time: not an Event
    caplog.set_level(logging.WARNING)
    assert read_matching("1-0", {"e": bad}, EventFilter(type_glob="job.*"), Event) is None
    assert not caplog.records  # filtered out on its raw attributes, never validated
    assert read_matching("1-0", {"e": bad}, EventFilter(type_glob="vm.*"), Event) is None
    assert "unreadable" in caplog.text
    good = make_event("vm.lifecycle.started", "s", "vm-1", {}).model_dump_json()
    ev = read_matching(
        "2-0", {"e": good}, EventFilter(subject="vm-1"), StreamEvent, stream_id="2-0"
    )
    assert isinstance(ev, StreamEvent) and ev.stream_id == "2-0"
