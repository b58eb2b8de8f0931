"""`vmorch worker`: a Celery worker consuming the given pool queues (all known pools by default)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis

from orchestrator.settings import Settings
from orchestrator.store import keys
from tasks.celery_tasks import register
from workers.celery_app import make_celery

log = logging.getLogger("vmorch.worker")


def _queues(settings: Settings, pools: list[str] | None) -> list[str]:
    if not pools:
        r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            pools = sorted(r.smembers(keys.POOLS))
        finally:
            r.close()
    return [keys.DEFAULT_QUEUE] + [keys.pool_queue(p) for p in pools]


def _heartbeat(settings: Settings, name: str, queues: list[str], stop: threading.Event) -> None:
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    while not stop.is_set():
        try:
            pipe = r.pipeline(transaction=False)
            pipe.zadd(keys.WORKERS, {name: int(time.time() * 1000)})
            pipe.set(keys.worker(name), ",".join(queues), ex=60)
            pipe.execute()
        except redis.RedisError:
            log.warning("worker heartbeat failed", exc_info=True)
        stop.wait(5)


def run_worker(
    settings: Settings,
    pools: list[str] | None = None,
    concurrency: int | None = None,
    pool_impl: str = "prefork",
) -> None:
    app = make_celery(settings)
    register(app, settings)
    queues = _queues(settings, pools)
    name = f"vmorch@{socket.gethostname()}-{time.time_ns() % 1_000_000}"
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(settings, name, queues, stop), daemon=True).start()
    try:
        app.worker_main(
            [
                "worker",
                "-Q",
                ",".join(queues),
                "-n",
                name,
                "-P",
                pool_impl,
                "-c",
                str(concurrency or settings.worker_concurrency),
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        stop.set()
