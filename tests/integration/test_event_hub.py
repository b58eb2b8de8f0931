"""SSE streams fed by the api's one stream reader (review H3, H2's gap, L6), over HTTP.

The api runs in this process (its Redis connections named, so CLIENT LIST on the private
Redis tells them apart from the session's api, router and agents), or, for `vmorch token
revoke`, as the session's api process. Streams filter on `type=test.*` so that events of
other processes do not get in the way."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aredis
from aiohttp.test_utils import TestServer

from orchestrator.api import events as streams
from orchestrator.api import hub as hub_module
from orchestrator.api.hub import HUB
from orchestrator.store import keys
from orchestrator.store.events import stream_after
from orchestrator.store.tokens import TokenStore
from schemas.api import Role
from tests.integration.conftest import Api
from tests.integration.ssekit import (
    APP_CONNECTION,
    HUB_CONNECTION,
    Sse,
    SseReader,
    app_connections,
    app_server,
    blocked_reads,
    emit,
    emit_many,
    hub_idle,
    open_streams,
    raw_stream,
    sse,
    until,
)

pytestmark = pytest.mark.integration
TESTS = "/v1/events/stream?type=test.*"


@pytest.fixture
async def redis(api: Api, redis_url: str) -> AsyncIterator[aredis.Redis]:
    """Our private Redis, flushed for this test (by `api`'s fleet)."""
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


async def viewer(r: aredis.Redis, name: str = "viewer") -> tuple[str, str]:
    """A new viewer token and its id."""
    token, info = await TokenStore(r).create(name, Role.VIEWER)
    return token, info.id


def session(token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


async def get(s: aiohttp.ClientSession, url: Any) -> tuple[int, Any, dict[str, str]]:
    async with s.get(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_twenty_streams_share_one_redis_connection(
    redis_url: str, redis: aredis.Redis
) -> None:
    # given: the api in this process, its pool used once (a listing), one stream open
    tokens = [(await viewer(redis, f"v{i}"))[0] for i in range(3)]  # 8 streams per token at most
    async with app_server(redis_url, redis) as srv:
        sessions = [session(t) for t in tokens]
        try:
            assert (await get(sessions[0], srv.make_url("/v1/events")))[0] == 200
            first = await sse(sessions[0], srv.make_url(TESTS))
            await until(lambda: blocked_reads(redis, 1), 10, "the hub to block in XREAD")
            before = await app_connections(redis)

            # when: 19 more clients open a stream each
            opened = [first] + [
                await sse(sessions[i % 3], srv.make_url(TESTS)) for i in range(1, 20)
            ]
            await until(lambda: open_streams(srv, 20), 10, "20 open streams")
            during = await app_connections(redis)

            # then: still one connection reads the stream, and the pool has not grown with
            # the streams (one more at most: the token re-check may run beside an open)
            assert before[HUB_CONNECTION] == during[HUB_CONNECTION] == 1, (before, during)
            assert during[APP_CONNECTION] <= before[APP_CONNECTION] + 1, (before, during)
            eid = await emit(redis, "test.fanout")
            for _, reader in opened:
                assert [e.id for e in await reader.until(eid)] == [eid]
            for resp, _ in opened:
                resp.close()
            await until(lambda: open_streams(srv, 0), 10, "the streams to close")
            assert (await app_connections(redis))[HUB_CONNECTION] == 1
            # and with no stream open the hub stops reading (its last XREAD ends, no new one)
            await emit(redis, "test.nobody")
            await until(lambda: hub_idle(redis), 10, "the hub to stop reading")
            # a stream opened now still gets what comes after it
            resp, reader = await sse(sessions[0], srv.make_url(TESTS))
            eid = await emit(redis, "test.again")
            assert [e.id for e in await reader.until(eid)] == [eid]
            resp.close()
        finally:
            for s in sessions:
                await s.close()


async def test_streams_past_the_caps_get_429_with_retry_after(
    redis_url: str, redis: aredis.Redis
) -> None:
    (a, _), (b, _), (c, _) = [await viewer(redis, n) for n in "abc"]
    async with (
        app_server(redis_url, redis, sse_max_per_token=2, sse_max_total=3) as srv,
        session(a) as sa,
        session(b) as sb,
        session(c) as sc,
    ):
        url = srv.make_url(TESTS)
        a_streams = [await sse(sa, url), await sse(sa, url)]

        # a third stream of the same token, of any kind, is refused
        for path in (TESTS, "/v1/jobs/no-such-job/stream"):
            status, body, headers = await get(sa, srv.make_url(path))
            assert status == 429, body
            assert body["error"]["code"] == "too_many_streams", body
            assert body["error"]["details"][0]["loc"] == ["header", "Authorization"], body
            assert int(headers["Retry-After"]) > 0

        # another token may open one more; then the process is full for every token
        b_stream = await sse(sb, url)
        status, body, headers = await get(sc, url)
        assert status == 429 and body["error"]["code"] == "too_many_streams", body
        assert "per api process" in body["error"]["details"][0]["msg"]
        assert int(headers["Retry-After"]) > 0
        assert (await get(sc, srv.make_url("/v1/events")))[0] == 200  # a listing is no stream

        # a closed stream frees its slot
        a_streams[0][0].close()
        await until(lambda: open_streams(srv, 2), 10, "the closed stream to be let go")
        c_stream = await sse(sc, url)
        for resp, _ in (a_streams[1], b_stream, c_stream):
            resp.close()


async def test_revoking_a_token_ends_its_streams_within_seconds(
    redis_url: str, redis: aredis.Redis
) -> None:
    (a, a_id), (b, _) = await viewer(redis, "a"), await viewer(redis, "b")
    async with app_server(redis_url, redis) as srv, session(a) as sa, session(b) as sb:
        url = srv.make_url(TESTS)
        a_streams = [await sse(sa, url), await sse(sa, url)]
        b_resp, b_reader = await sse(sb, url)
        await until(lambda: open_streams(srv, 3), 10, "three open streams")

        # when: a's token is revoked
        await TokenStore(redis).revoke(a_id)
        revoked = time.monotonic()

        # then: both of a's streams end (next() fails after 5 s), b's goes on
        for _, reader in a_streams:
            assert await reader.next(5) is None
            assert ": token revoked" in reader.comments
        assert time.monotonic() - revoked < 5
        eid = await emit(redis, "test.after-revoke")
        assert [e.id for e in await b_reader.until(eid)] == [eid]
        assert (await get(sa, url))[0] == 401
        b_resp.close()


async def test_vmorch_token_revoke_ends_the_api_process_streams(
    api_url: str, env: dict[str, str], redis: aredis.Redis
) -> None:
    (a, a_id), (b, _) = await viewer(redis, "a"), await viewer(redis, "b")
    async with session(a) as sa, session(b) as sb:
        _, a_reader = await sse(sa, api_url + TESTS)
        b_resp, b_reader = await sse(sb, api_url + TESTS)
        assert await a_reader.comment() == ": connected"
        cli = [sys.executable, "-m", "orchestrator.cli", "token", "revoke", a_id]
        done = await asyncio.to_thread(subprocess.run, cli, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        assert await a_reader.next(5) is None
        assert time.monotonic() - revoked < 5
        eid = await emit(redis, "test.after-revoke")
        assert [e.id for e in await b_reader.until(eid)] == [eid]
        b_resp.close()


@pytest.mark.parametrize("queue_max", [1000, 10])
async def test_resume_across_history_and_live_sends_every_event_once_in_order(
    redis_url: str, redis: aredis.Redis, monkeypatch: pytest.MonkeyPatch, queue_max: int
) -> None:
    """queue_max 1000: one seam, history then live. 10: the stream falls behind (while it
    reads history, as timing has it, and surely at a burst larger than its queue) and
    catches up from Redis each time."""
    monkeypatch.setattr(hub_module, "HISTORY_BATCH", 50)  # many history reads, live entries between
    start = await emit(redis, "test.start")
    await emit_many(redis, 600, "test.backlog")
    (token, _) = await viewer(redis)
    async with app_server(redis_url, redis, sse_queue_max=queue_max) as srv, session(token) as s:
        # when: a client resumes after `start` while events keep coming
        _, reader = await sse(s, srv.make_url(TESTS), {"Last-Event-ID": start})

        async def writer() -> str:
            for i in range(280):
                last = await emit(redis, f"test.live{i % 3}")
                if i == 150:
                    await emit(redis, "other.event")  # filtered out, live
            return last

        got = await reader.until(await writer(), 30)
        # and then a burst in one MULTI: the hub's next read hands all 20 to the stream at
        # once, more than a queue of 10 holds, whatever the timing above was
        await emit_many(redis, 20, "test.burst", atomic=True)
        marker = await emit(redis, "test.marker")
        got += await reader.until(marker, 30)
        overflows = srv.app[HUB].stats()["overflows"]

    # then: exactly the test events after `start`, in stream order, each once
    expected = [
        sid
        for sid, f in await redis.xrange(keys.EVENTS, f"({start}", "+")
        if json.loads(f["e"])["type"].startswith("test.")
    ]
    ids = [e.id for e in got]
    assert len(ids) == len(set(ids)) == 901
    assert ids == expected
    assert (overflows > 0) == (queue_max == 10)


async def test_resuming_from_a_trimmed_id_gets_a_gap_event_first(
    redis_url: str, redis: aredis.Redis
) -> None:
    ids = await emit_many(redis, 10, "test.g")
    await redis.xtrim(keys.EVENTS, minid=ids[5], approximate=False)  # ids[:5] are gone
    (token, _) = await viewer(redis)
    async with app_server(redis_url, redis) as srv, session(token) as s:
        resp, reader = await sse(s, srv.make_url(TESTS), {"Last-Event-ID": ids[1]})
        gap = await reader.next()
        assert gap is not None and gap.event == "events.gap" and gap.id is None, gap
        envelope = json.loads(gap.data)
        assert envelope["type"] == "events.gap" and envelope["source"] == "vmorch://api"
        assert envelope["data"] == {"after": ids[1], "first_id": ids[5]}
        marker = await emit(redis, "test.marker")
        assert [e.id for e in await reader.until(marker)] == [*ids[5:], marker]
        resp.close()

        # from the first entry kept on, nothing was lost: no gap
        resp, reader = await sse(s, srv.make_url(TESTS), {"Last-Event-ID": ids[5]})
        assert [e.id for e in await reader.until(marker)] == [*ids[6:], marker]
        resp.close()

        async def page(**q: str) -> dict[str, Any]:
            status, body, _ = await get(s, srv.make_url("/v1/events").with_query(q))
            assert status == 200, body
            return dict(body)

        listed = await page(after=ids[1], type="test.*")
        assert listed["gap"] == {"after": ids[1], "first_id": ids[5]}
        assert [e["stream_id"] for e in listed["items"]] == [*ids[5:], marker]
        assert (await page(after=ids[5]))["gap"] is None
        assert (await page(after=marker))["gap"] is None
        assert (await page())["gap"] is None  # from the start: whatever is kept, no promise
        await redis.xtrim(keys.EVENTS, maxlen=0, approximate=False)
        assert (await page(after=ids[1]))["gap"] == {"after": ids[1], "first_id": None}


async def test_a_stalled_client_does_not_grow_memory_or_hold_up_others(
    redis_url: str, redis: aredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "WRITE_STALL_S", 3.0)
    (token, _) = await viewer(redis)
    async with (
        app_server(redis_url, redis, sse_queue_max=50) as srv,
        session(token) as s,
        raw_stream(srv, TESTS, token),  # given: a client that never reads...
    ):
        hub = srv.app[HUB]
        # ...and one that does
        resp, reader = await sse(s, srv.make_url(TESTS))
        await until(lambda: open_streams(srv, 2), 10, "two streams")

        # when: 8 MB of events go out (more than the kernel buffers of the stalled one)
        reading = asyncio.create_task(read_all(reader, 2000))
        max_queued = 0
        for _ in range(20):
            await emit_many(redis, 100, "test.big", pad=4000)
            max_queued = max(max_queued, hub.stats()["max_queued"])
        got = await asyncio.wait_for(reading, 60)

        # then: the reading client got all of it, in order, once
        assert len(got) == len(set(got)) == 2000 and got == sorted(got, key=_parts)
        # no queue grew past its bound (bursts of 100 overflowed them instead), and the
        # stalled stream is let go once its client has taken nothing for WRITE_STALL_S
        assert max_queued <= 50 and hub.stats()["overflows"] >= 1, hub.stats()
        await until(lambda: open_streams(srv, 1), 15, "the stalled stream to be closed")
        resp.close()


async def test_a_slow_client_overtaken_by_trimming_is_told_of_the_gap(
    redis_url: str, redis: aredis.Redis
) -> None:
    (token, _) = await viewer(redis)
    async with (
        app_server(redis_url, redis, sse_queue_max=20) as srv,
        raw_stream(srv, TESTS, token) as reader,
    ):
        # given: a client that stops reading while 8 MB of events go out
        ids = [sid for _ in range(20) for sid in await emit_many(redis, 100, "test.big", 4000)]

        async def stuck() -> bool:  # more events than its queue holds, until it is behind
            ids.extend(await emit_many(redis, 25, "test.big", 4000))
            return await behind(srv, 1)

        await until(stuck, 10, "the stream to fall behind")

        # when: the stream is trimmed past the stream's position, then the client reads on
        keep = ids[-5]
        await redis.xtrim(keys.EVENTS, minid=keep, approximate=False)
        events: list[Sse] = []
        while not events or events[-1].id != ids[-1]:
            ev = await reader.next(30)
            assert ev is not None, events[-3:]
            events.append(ev)

    # then: a prefix of what it missed, the gap, then what is kept, each once
    cut = next(i for i, e in enumerate(events) if e.event == "events.gap")
    sent = [e.id for e in events[:cut]]
    assert sent == ids[: len(sent)] and len(sent) < len(ids) - 5
    gap = json.loads(events[cut].data)["data"]
    assert gap["first_id"] == keep and not stream_after(sent[-1], gap["after"]), (sent[-1], gap)
    assert [e.id for e in events[cut + 1 :]] == ids[-5:]


async def behind(srv: TestServer, n: int) -> bool:
    return int(srv.app[HUB].stats()["behind"]) == n


async def read_all(reader: SseReader, n: int) -> list[str]:
    got: list[str] = []
    while len(got) < n:
        ev = await reader.next(30)
        assert ev is not None and ev.id is not None
        got.append(ev.id)
    return got


def _parts(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq)
