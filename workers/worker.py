"""`vmorch worker`: a Celery worker consuming the given pool queues (all known pools by default)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from redis.exceptions import RedisError

from orchestrator import metrics
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import keys
from tasks.celery_tasks import register
from workers.celery_app import make_celery

log = logging.getLogger("vmorch.worker")


async def _pool_names(settings: Settings) -> list[str]:
    r = connect(settings)
    try:
        return [p.name for p in await Services.build(settings, r).inventory.pools()]
    finally:
        await r.aclose()


def queues_for(settings: Settings, pools: list[str] | None, noop: str) -> list[str]:
    """The queues a worker consumes: its pools' (every known pool by default) and the
    default one; the noop queue only when asked (`noop`: "no", "also" or "only"), so that
    engine drills never hold the slots VM operations need."""
    if noop == "only":
        return [keys.NOOP_QUEUE]
    names = pools or asyncio.run(_pool_names(settings))
    queues = [keys.DEFAULT_QUEUE] + [keys.pool_queue(p) for p in names]
    return [*queues, keys.NOOP_QUEUE] if noop == "also" else queues


def _heartbeat(settings: Settings, name: str, queues: list[str], stop: threading.Event) -> None:
    """Tell the fleet (GET /v1/queue) this worker is alive, every 5 s, until `stop`."""

    async def beat_until_stopped() -> None:
        r = connect(settings)
        fleet = Services.build(settings, r).fleet
        try:
            while not stop.is_set():
                try:
                    await fleet.beat(name, queues)
                except RedisError:
                    log.warning("worker heartbeat failed", exc_info=True)
                await asyncio.to_thread(stop.wait, 5)
        finally:
            await r.aclose()

    asyncio.run(beat_until_stopped())


def run_worker(
    settings: Settings,
    pools: list[str] | None = None,
    concurrency: int | None = None,
    pool_impl: str = "prefork",
    noop: str = "no",
) -> None:
    shared = metrics.serve_multiprocess(settings.metrics_host, settings.metrics_port)
    app = make_celery(settings)
    register(app, settings)
    queues = queues_for(settings, pools, noop)
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
        metrics.remove_multiprocess_dir(shared)
