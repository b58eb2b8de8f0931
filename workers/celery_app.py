"""The Celery app: JSON only, Redis broker, one queue per server pool.

Tasks carry job ids only; the job itself lives in Redis. Messages are acknowledged when a
task starts: a worker killed mid-step loses its message, and the router re-dispatches the
job once its lease has expired. Celery's visibility timeout is not what recovers work.
"""

from __future__ import annotations

from celery import Celery

from orchestrator.jobs.dispatch import ADVANCE_TASK  # noqa: F401 (re-exported)
from orchestrator.settings import Settings
from orchestrator.store import keys


def make_celery(settings: Settings) -> Celery:
    app = Celery("vmorch", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_default_queue=keys.DEFAULT_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=16,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app
