"""The Celery app: JSON only, Redis broker, one queue per server pool.

Tasks carry job ids only; the job itself lives in Redis. Messages are acknowledged when a
task starts: a worker killed mid-step loses its message, and the router re-dispatches the
job once its lease has expired. Celery's visibility timeout is not what recovers work.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from orchestrator.jobs.dispatch import ADVANCE_TASK  # noqa: F401 (re-exported)
from orchestrator.redisurl import sentinel_url
from orchestrator.settings import Settings
from orchestrator.store import keys


def broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and kombu transport options, from the one VMORCH_REDIS_URL.

    The broker's connections get `connect`'s timeouts and keepalive (kombu's default is to
    wait for ever: a publish or ack on a stalled Redis would hang the worker). A
    `redis+sentinel://` URL becomes kombu's own spelling of the same Sentinels and service,
    so the worker's consumer asks them for the master, and again after a failover."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": int(settings.redis_health_check_s),
    }
    sentinels = sentinel_url(settings.redis_url)
    if sentinels is None:
        return settings.redis_url, options
    sentinel_kwargs = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        **sentinels.sentinel_auth(),
    }
    return sentinels.kombu_url(), {
        **options,
        "master_name": sentinels.service,
        "sentinel_kwargs": sentinel_kwargs,
    }


def make_celery(settings: Settings) -> Celery:
    url, transport_options = broker(settings)
    app = Celery("vmorch", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_default_queue=keys.DEFAULT_QUEUE,
        broker_connection_retry_on_startup=True,
        # an error reply on the consumer's connection reconnects it rather than ending the
        # worker: a fenced old master refuses BRPOP with NOREPLICAS (docs/deployment.md)
        broker_channel_error_retry=True,
        broker_pool_limit=16,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app
