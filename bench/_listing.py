"""Phase 4: `GET /v1/jobs` latency with many jobs stored (vmorch vs a bare aiohttp app that
does the same Redis reads and returns the stored docs inflated, unparsed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta

import aiohttp
import redis.asyncio as aredis
from _load import session
from _procs import (
    Config,
    Row,
    admin_headers,
    note,
    percentile,
    start_api_and_baseline,
    start_redis,
)

from orchestrator.clock import now_ms
from orchestrator.store import keys
from orchestrator.store.jobs import JobStore
from schemas.base import utcnow
from schemas.jobs import Job, JobState, StepRecord, StepState
from schemas.requests import Noop


def finished_job(steps: int) -> Job:
    """A record shaped like a finished E2E job: `steps` no-op steps done, with timestamps."""
    t = utcnow()
    records = [
        StepRecord(
            name=f"noop-{i}",
            description="does nothing",
            state=StepState.DONE,
            attempts=1,
            started_at=t + timedelta(milliseconds=2 * i),
            ended_at=t + timedelta(milliseconds=2 * i + 1),
            outputs={f"step{i}": "ok"},
        )
        for i in range(1, steps + 1)
    ]
    return Job(
        id=str(uuid.uuid4()),
        kind="noop",
        request=Noop(kind="noop", steps=steps),
        state=JobState.SUCCEEDED,
        steps=records,
        progress=1.0,
        submitted_by="bench",
        queue=keys.NOOP_QUEUE,
        created_at=t,
        updated_at=t,
        started_at=t,
        ended_at=t,
        result={f"step{i}": "ok" for i in range(1, steps + 1)},
    )


# Stores finished jobs as the terminal commit leaves them (record, indexes, jobs:ended), one
# call per chunk of ids: a copy of one template record each, its id put in.
FILL = """
-- KEYS: all state_succeeded kind ended   ARGV: record key prefix, template doc, its id,
-- first created_us, ended_ms, then the new job ids
for i = 6, #ARGV do
  local id = ARGV[i]
  local doc = string.gsub(ARGV[2], ARGV[3], id)
  local created = tonumber(ARGV[4]) + i
  redis.call('HSET', ARGV[1] .. id, 'doc', doc, 'state', 'succeeded', 'version', 12)
  for k = 1, 3 do redis.call('ZADD', KEYS[k], created, id) end
  redis.call('ZADD', KEYS[4], ARGV[5], id)
end
return #ARGV - 5
"""
CHUNK = 1000
PLACEHOLDER = "x" * 36  # the template's id: no character Lua patterns treat specially


async def store_jobs(redis_url: str, count: int, steps: int) -> float:
    """Store `count` finished jobs of `steps` steps; returns jobs per second."""
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    fill = r.register_script(FILL)
    template = finished_job(steps).model_copy(update={"id": PLACEHOLDER})
    doc = JobStore.stored_doc(template)
    created_us = int(template.created_at.timestamp() * 1_000_000)
    t0 = time.perf_counter()
    try:
        for start in range(0, count, CHUNK):
            ids = [str(uuid.uuid4()) for _ in range(min(CHUNK, count - start))]
            await fill(
                keys=[
                    keys.JOBS_ALL,
                    keys.jobs_state(JobState.SUCCEEDED),
                    keys.jobs_kind("noop"),
                    keys.JOBS_ENDED,
                ],
                args=[keys.job(""), doc, PLACEHOLDER, created_us + start, now_ms(), *ids],
            )
    finally:
        await r.aclose()
    return count / (time.perf_counter() - t0)


async def time_gets(url: str, headers: dict[str, str], n: int) -> list[float]:
    """`n` GETs one after another (no queueing in the server): latencies in ms."""
    out = []
    async with session(1) as http:
        for _ in range(5):  # warm-up: the connection, the server's first requests
            await _get(http, url, headers)
        for _ in range(n):
            t = time.perf_counter()
            await _get(http, url, headers)
            out.append((time.perf_counter() - t) * 1000)
    return out


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200 or b'"items":[{' not in body:
            raise RuntimeError(f"GET {url}: HTTP {resp.status} {body[:200]!r}")


def phase_listing(cfg: Config) -> list[Row]:
    with ExitStack() as stack:
        server = start_redis(stack, cfg, "redis-list")
        _, _, api_url, base_url = start_api_and_baseline(stack, cfg, server, "list")
        headers = admin_headers(server.url)
        note(f"listing: storing {cfg.list_jobs} jobs of {cfg.steps} steps")
        rate = asyncio.run(store_jobs(server.url, cfg.list_jobs, cfg.steps))
        note(f"listing: stored at {rate:.0f} jobs/s; {cfg.list_requests} GETs each")
        v = asyncio.run(time_gets(f"{api_url}/v1/jobs", headers, cfg.list_requests))
        b = asyncio.run(time_gets(f"{base_url}/v1/jobs", headers, cfg.list_requests))
    n = cfg.list_jobs
    return [
        (f"HTTP GET /v1/jobs (50 newest), {n} jobs stored, p50 (ms)", *_p(v, b, 50), ".2f", None),
        (f"HTTP GET /v1/jobs (50 newest), {n} jobs stored, p99 (ms)", *_p(v, b, 99), ".2f", None),
    ]


def _p(v: list[float], b: list[float], p: float) -> tuple[float, float]:
    return percentile(v, p), percentile(b, p)
