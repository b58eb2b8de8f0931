"""The event stream over HTTP: listing, SSE with resume and filters, one job followed live.

The app runs in-process (make_app) on the test's event loop, so every
wait here is async and bounded; workers are real Celery processes on the private Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aredis
from aiohttp.test_utils import TestServer

from orchestrator.api import events as streams
from tests.integration.conftest import Api, Proc
from tests.integration.ssekit import Sse, app_server, blocked_reads, emit, open_streams, sse, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aredis.Redis]:
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


@pytest.fixture
async def server(api: Api, redis_url: str, redis: aredis.Redis) -> AsyncIterator[TestServer]:
    """The API with the stream routes, wired as app.py wires them."""
    async with app_server(redis_url, redis) as srv:
        yield srv


@pytest.fixture
async def http(api: Api) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api.token}"}) as s:
        yield s


async def test_sse_resumes_with_last_event_id_missing_nothing(
    server: TestServer, http: aiohttp.ClientSession, redis: aredis.Redis
) -> None:
    await emit(redis, "test.before")  # before the client connects: not sent (new events only)
    resp, reader = await sse(http, server.make_url("/v1/events/stream"))
    seen = [await emit(redis, f"test.a{i}", f"s{i}") for i in range(3)]
    got = await reader.until(seen[-1])
    assert [e.id for e in got] == seen
    assert [e.event for e in got] == ["test.a0", "test.a1", "test.a2"]
    first = json.loads(got[0].data)
    assert first["type"] == "test.a0" and first["subject"] == "s0" and "stream_id" not in first
    resp.close()  # the client goes away; the hub lets go of its stream
    await until(lambda: open_streams(server, 0), 10, "the stream to close")

    missed = [await emit(redis, f"test.b{i}") for i in range(4)]
    resp, reader = await sse(
        http, server.make_url("/v1/events/stream"), {"Last-Event-ID": seen[-1]}
    )
    marker = await emit(redis, "test.marker")
    again = await reader.until(marker)
    assert [e.id for e in again] == [*missed, marker]  # exactly the missed ones, in order
    resp.close()

    # ?after= resumes the same way; Last-Event-ID wins when both are given
    url = server.make_url("/v1/events/stream").with_query(after=seen[0])
    resp, reader = await sse(http, url, {"Last-Event-ID": missed[1]})
    assert [e.id for e in await reader.until(marker)] == [*missed[2:], marker]
    resp.close()
    resp, reader = await sse(http, url)
    assert [e.id for e in await reader.until(marker)] == [*seen[1:], *missed, marker]
    resp.close()


async def test_sse_filters_by_type_glob_subject_and_source(
    server: TestServer, http: aiohttp.ClientSession, redis: aredis.Redis
) -> None:
    url = server.make_url("/v1/events/stream").with_query(type="vm.lifecycle.*", subject="vm-1")
    resp, reader = await sse(http, url)
    wanted = [await emit(redis, "vm.lifecycle.started", "vm-1")]
    await emit(redis, "vm.lifecycle.started", "vm-2")
    await emit(redis, "job.running", "vm-1")
    await emit(redis, "vm.lifecycle", "vm-1")
    wanted.append(await emit(redis, "vm.lifecycle.stopped", "vm-1", source="libvirt://s2"))
    wanted.append(await emit(redis, "vm.lifecycle.deleted", "vm-1"))
    assert [e.id for e in await reader.until(wanted[-1])] == wanted
    resp.close()

    url = server.make_url("/v1/events/stream").with_query(source="libvirt://s2", after="0")
    resp, reader = await sse(http, url)
    assert [e.id for e in await reader.until(wanted[1])] == [wanted[1]]
    resp.close()


async def test_sse_sends_keep_alive_when_nothing_matching_came(
    server: TestServer,
    http: aiohttp.ClientSession,
    redis: aredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "KEEPALIVE_S", 0.3)
    resp, reader = await sse(http, server.make_url("/v1/events/stream").with_query(type="x"))
    assert await reader.comment() == ": connected"
    await emit(redis, "y")  # filtered out: nothing is written for it
    assert await reader.comment(10) == ": keep-alive"
    resp.close()


async def test_sse_streams_end_when_the_app_shuts_down(
    server: TestServer, http: aiohttp.ClientSession, redis: aredis.Redis
) -> None:
    streams_open = [await sse(http, server.make_url(p)) for p in ("/v1/events/stream",) * 2]
    await until(lambda: open_streams(server, 2), 10, "the streams to open")
    assert await blocked_reads(redis, 1)  # one connection reads for both
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 5  # not aiohttp's 60 s shutdown timeout
    for _, reader in streams_open:
        assert await reader.next(5) is None  # a clean end of stream
    await until(lambda: blocked_reads(redis, 0), 10, "stream connections to close")


async def test_list_filters_and_pages_with_next_after(
    server: TestServer,
    http: aiohttp.ClientSession,
    redis: aredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [
        await emit(redis, f"vm.lifecycle.{'started' if i % 2 else 'stopped'}", f"vm-{i % 3}")
        for i in range(12)
    ]
    await emit(redis, "job.succeeded", "job-1", source="vmorch://worker")

    async def page(**q: str) -> dict[str, Any]:
        async with http.get(server.make_url("/v1/events").with_query(q)) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    everything = await page()
    assert [e["stream_id"] for e in everything["items"]][:12] == ids
    assert len(everything["items"]) == 13 and everything["next_after"] is None
    assert everything["items"][0]["type"] == "vm.lifecycle.stopped"

    got, after, pages = [], None, 0
    while True:
        p = await page(type="vm.lifecycle.st*", limit="4", **({"after": after} if after else {}))
        got += [e["stream_id"] for e in p["items"]]
        pages += 1
        if (after := p["next_after"]) is None:
            break
    assert got == ids and pages == 4  # three full pages, then an empty one that ends it

    assert [e["stream_id"] for e in (await page(subject="vm-1"))["items"]] == ids[1::3]
    started = await page(type="*.started", subject="vm-1")
    assert [e["stream_id"] for e in started["items"]] == [i for i in ids[1::3] if ids.index(i) % 2]
    only = (await page(source="vmorch://worker"))["items"]
    assert [e["type"] for e in only] == ["job.succeeded"]
    assert (await page(after=ids[-1], type="vm.*"))["items"] == []

    # a bounded scan: few matches far apart come back over several calls, none lost
    monkeypatch.setattr(streams, "SCAN_MAX", 5)
    found, after, calls = [], None, 0
    while True:
        p = await page(source="vmorch://worker", **({"after": after} if after else {}))
        found += p["items"]
        calls += 1
        if (after := p["next_after"]) is None:
            break
    assert [e["type"] for e in found] == ["job.succeeded"] and calls == 3


async def test_bad_input_is_422_naming_the_field_and_no_token_is_401(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    async def status(path: str, loc: list[str] | None, code: int = 422, **kw: Any) -> None:
        async with http.get(server.make_url(path), **kw) as resp:
            body = await resp.json()
            assert resp.status == code, body
            assert body["error"]["code"] == {401: "unauthorized", 404: "not_found"}.get(
                code, "validation_error"
            )
            if loc is not None:
                assert body["error"]["details"][0]["loc"] == loc, body

    await status("/v1/events?after=nope", ["query", "after"])
    await status("/v1/events?after=1-2-3", ["query", "after"])
    await status("/v1/events?after=99999999999999999999-0", ["query", "after"])
    await status("/v1/events?limit=0", ["query", "limit"])
    await status("/v1/events?limit=1001", ["query", "limit"])
    await status("/v1/events?limit=many", ["query", "limit"])
    await status("/v1/events/stream?after=x", ["query", "after"])
    await status("/v1/events/stream", ["header", "Last-Event-ID"], headers={"Last-Event-ID": "x"})
    await status("/v1/jobs/nope/stream", None, 404)
    for path in ("/v1/events", "/v1/events/stream", "/v1/jobs/nope/stream"):
        await status(path, None, 401, headers={"Authorization": ""})
        await status(path, None, 401, headers={"Authorization": "Bearer wrong"})


async def test_job_stream_snapshot_then_transitions_until_the_end(
    server: TestServer,
    http: aiohttp.ClientSession,
    start_worker: Callable[..., Proc],
) -> None:
    body = {"kind": "noop", "steps": 3, "step_delay_ms": 100}
    async with http.post(server.make_url("/v1/jobs"), json=body) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["id"]
    resp, reader = await sse(http, server.make_url(f"/v1/jobs/{job_id}/stream"))
    snap = await reader.next()
    assert snap is not None and snap.event == "job.snapshot" and snap.id is None
    assert json.loads(snap.data)["id"] == job_id and json.loads(snap.data)["state"] == "queued"

    await asyncio.to_thread(start_worker)  # no worker until now: the job was still queued
    events: list[Sse] = []
    while (ev := await reader.next(60)) is not None:
        events.append(ev)
    resp.close()
    assert events and events[-1].event == "job.succeeded"
    assert all(json.loads(e.data)["subject"] == job_id for e in events)
    assert json.loads(events[-1].data)["data"]["progress"] == 1
    # exactly the job's events after its creation (the snapshot's state), none lost
    url = server.make_url("/v1/events").with_query(subject=job_id)
    async with http.get(url) as r:
        listed = (await r.json())["items"]
    assert listed[0]["type"] == "job.queued"
    assert [e.id for e in events] == [e["stream_id"] for e in listed[1:]]
    assert "job.running" in [e.event for e in events]
    assert [e.event for e in events].count("job.step") >= 3

    # a job that has ended: the snapshot, then the end of the stream
    resp, reader = await sse(http, server.make_url(f"/v1/jobs/{job_id}/stream"))
    snap = await reader.next()
    assert snap is not None and json.loads(snap.data)["state"] == "succeeded"
    assert await reader.next() is None
    resp.close()
