"""Baseline Celery app: chains of no-op tasks on the same broker and worker settings as vmorch.

Mirrors `workers.celery_app.make_celery` (JSON, prefetch multiplier 1, acks early, results
ignored, no events) and `workers.worker.run_worker` (prefork, no gossip/mingle/heartbeat,
INFO logging). The last task of a chain INCRs a Redis counter, so completion is countable.

    python bench/baseline_celery.py --redis-url redis://127.0.0.1:6390/0 -c 2   # a worker
"""

from __future__ import annotations

import argparse
import logging
import os

import redis
from celery import Celery, chain

from orchestrator.settings import Settings
from workers.celery_app import make_celery

QUEUE = "bench.default"
DONE_KEY = "bench:chains:done"
NOOP_TASK = "bench.noop"


def make_app(redis_url: str) -> Celery:
    # vmorch's own Celery settings, so the baseline cannot drift from what it is compared to
    app = make_celery(Settings(redis_url=redis_url))
    app.conf.task_default_queue = QUEUE
    clients: dict[int, redis.Redis] = {}

    @app.task(name=NOOP_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def noop(last: bool) -> None:
        if last:
            client = clients.get(os.getpid())
            if client is None:  # one client per process, made after fork
                clients.clear()
                client = clients[os.getpid()] = redis.Redis.from_url(redis_url)
            client.incr(DONE_KEY)

    return app


def send_chain(app: Celery, steps: int) -> None:
    """Publish one chain of `steps` no-op tasks; the last one counts the chain as done."""
    sig = app.signature
    chain(
        *(sig(NOOP_TASK, args=(i == steps - 1,), immutable=True) for i in range(steps))
    ).apply_async()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("-c", "--concurrency", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    make_app(args.redis_url).worker_main(
        [
            "worker",
            "-Q",
            QUEUE,
            "-n",
            f"bench@{os.getpid()}",
            "-P",
            "prefork",
            "-c",
            str(args.concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":
    main()
