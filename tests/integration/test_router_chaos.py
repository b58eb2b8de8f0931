"""A router SIGKILLed with events pending: another router finishes them, at least once,
with each hook action idempotent per event. Its own Redis and routers, so the session's
router does not take part."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from orchestrator.lab.redis_server import RedisServer
from orchestrator.store import keys
from orchestrator.store.events import make_event
from orchestrator.store.hooks import HookStore
from schemas.hooks import HookSpec
from tests.integration.conftest import Proc, WebhookReceiver, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="vmorch-chaos-"))
    server = RedisServer(d, appendonly=False, require_password=True)
    yield server.start()
    server.stop()


def test_a_router_killed_mid_event_loses_nothing(private_redis: str) -> None:
    receiver = WebhookReceiver(delay_s=2.0)
    env = {
        **os.environ,
        "VMORCH_REDIS_URL": private_redis,
        "VMORCH_CLAIM_IDLE_MS": "500",
        "VMORCH_HOOK_LEASE_MS": "1500",
        "VMORCH_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
        "VMORCH_SWEEP_INTERVAL_S": "0.3",
    }
    workdir = Path(tempfile.mkdtemp(prefix="vmorch-chaos-"))

    async def given() -> tuple[str, str]:
        r = aredis.Redis.from_url(private_redis, decode_responses=True)
        store = HookStore(r)
        web_hook, _ = await store.create(
            HookSpec.model_validate(
                {
                    "name": "slow",
                    "match": {"types": ["test.chaos"]},
                    "window_s": 0,
                    "action": {
                        "kind": "webhook",
                        "retries": 0,
                        "timeout_s": 10,
                        "url": f"http://127.0.0.1:{receiver.port}/hook",
                    },
                }
            )
        )
        job_hook, _ = await store.create(
            HookSpec.model_validate(
                {
                    "name": "jobs",
                    "match": {"types": ["test.chaos"]},
                    "window_s": 0,
                    "action": {"kind": "submit_job", "request": {"kind": "noop", "steps": 1}},
                }
            )
        )
        await r.aclose()
        return web_hook.id, job_hook.id

    web_id, job_id = asyncio.run(given())
    # given router A, busy delivering an event's webhook
    a = Proc(["router"], env, workdir / "router-a.log")
    b: Proc | None = None
    r = redis.Redis.from_url(private_redis, decode_responses=True)
    try:
        wait_until(
            lambda: r.exists(keys.EVENTS) and r.xinfo_groups(keys.EVENTS),
            20,
            "router A's consumer group",
        )
        event = make_event("test.chaos", "vmorch://test", "s1", {})
        chaos_id = r.xadd(keys.EVENTS, {"e": event.model_dump_json()})
        wait_until(lambda: receiver.deliveries, 10, "router A's delivery to begin")
        # when it is SIGKILLed with the event pending, and router B runs
        a.kill(signal.SIGKILL)
        a.p.wait(10)
        # (the job its other hook submitted may be pending too: A read its job.queued entry
        # and may have died before acknowledging it)
        pending = r.xpending_range(keys.EVENTS, "routers", "-", "+", 10)
        assert chaos_id in {p["message_id"] for p in pending}, pending
        b = Proc(["router"], env, workdir / "router-b.log")
        # then B finishes it: the entry is acknowledged and each hook's run recorded once
        wait_until(
            lambda: r.xpending(keys.EVENTS, "routers")["pending"] == 0,
            30,
            "router B to finish the event",
        )
        web_runs = r.lrange(keys.hook_runs(web_id), 0, -1)
        job_runs = r.lrange(keys.hook_runs(job_id), 0, -1)
        assert len(web_runs) == 1 and '"delivered"' in web_runs[0]
        assert len(job_runs) == 1
        # the webhook arrived at least once, every copy with the same delivery id
        assert len(receiver.deliveries) >= 1
        assert set(receiver.deliveries) == {f"{web_id}:{event.id}"}
        # and the job was submitted exactly once, whichever router got to it
        assert r.zcard(keys.jobs_kind("noop")) == 1
    finally:
        a.stop()
        if b is not None:
            b.stop()
        r.close()
