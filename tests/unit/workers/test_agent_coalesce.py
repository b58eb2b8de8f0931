"""Reads issued together share one round trip (workers/agent/coalesce.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
from redis.exceptions import ResponseError

from workers.agent.coalesce import CoalescingRedis


def test_reads_issued_together_go_as_one_pipeline_each_with_its_own_reply() -> None:
    async def main() -> None:
        plain = fakeredis.FakeAsyncRedis(decode_responses=True)
        await plain.hset("h", mapping={"a": "1"})
        await plain.set("s", "x")
        redis = CoalescingRedis(plain)
        pipelines = 0
        make_pipeline = redis.pipeline

        def counted(*args: Any, **kw: Any) -> Any:
            nonlocal pipelines
            pipelines += 1
            return make_pipeline(*args, **kw)

        redis.pipeline = counted  # type: ignore[method-assign]
        # when several reads are issued at once, one of them failing
        got = await asyncio.gather(
            redis.hgetall("h"),
            redis.get("s"),
            redis.hgetall("missing"),
            redis.hgetall("s"),  # WRONGTYPE
            return_exceptions=True,
        )
        # then they took one pipeline, and each has the reply it would have had alone
        assert pipelines == 1
        assert got[:3] == [{"a": "1"}, "x", {}]
        assert isinstance(got[3], ResponseError)
        # and writes are not held back
        await redis.set("w", "1")
        assert await plain.get("w") == "1" and pipelines == 1
        await plain.aclose()

    asyncio.run(main())


def test_a_failed_round_trip_fails_every_read_in_it() -> None:
    async def main() -> None:
        plain = fakeredis.FakeAsyncRedis(decode_responses=True)
        redis = CoalescingRedis(plain)

        def broken(*args: Any, **kw: Any) -> Any:
            raise ConnectionError("redis went away")

        redis.pipeline = broken  # type: ignore[method-assign]
        got = await asyncio.gather(redis.get("a"), redis.get("b"), return_exceptions=True)
        assert [type(g) for g in got] == [ConnectionError, ConnectionError]
        await plain.aclose()

    asyncio.run(main())
