"""Baseline HTTP server: a bare aiohttp app doing one async Redis write per POST, and for
GET /v1/jobs the Redis reads of vmorch's unfiltered listing (the newest 50 ids of
`vmorch:jobs:all`, their docs in one pipeline) answered as they are, without parsing them.

Same stack and loop settings as `vmorch api` (aiohttp `web.run_app`, default asyncio loop,
no access log, one process, redis.asyncio with decode_responses=True).

    python bench/baseline_app.py --port 8081 --redis-url redis://127.0.0.1:6390/0
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aredis
from aiohttp import web

from orchestrator.store import jobdoc

REDIS = web.AppKey("redis", aredis.Redis)


async def submit(request: web.Request) -> web.Response:
    body = await request.read()
    job_id = str(uuid.uuid4())
    await request.app[REDIS].set(f"bench:k:{job_id}", body)
    return web.json_response({"id": job_id, "state": "queued"}, status=202)


async def list_jobs(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    ids = await redis.zrevrange("vmorch:jobs:all", 0, 49)
    pipe = redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"vmorch:job:{job_id}", "doc")
    # inflated (the stored form, `jobdoc`), not parsed
    docs = [jobdoc.decode_json(d) for d in await pipe.execute() if d is not None]
    body = '{"items":[' + ",".join(docs) + '],"next_cursor":null}'
    return web.Response(text=body, content_type="application/json")


async def health(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(redis_url: str) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/jobs", submit)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/healthz", health)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = aredis.Redis.from_url(redis_url, decode_responses=True)
        yield
        await app[REDIS].aclose()

    app.cleanup_ctx.append(lifecycle)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    args = ap.parse_args()
    web.run_app(
        make_app(args.redis_url), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
