"""Our hand-pushed Celery messages match what Celery's own producer writes to Redis."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from orchestrator.jobs.dispatch import ADVANCE_TASK, TaskMessages
from orchestrator.settings import Settings
from workers.celery_app import make_celery

pytestmark = pytest.mark.integration

IDS = {
    "headers.id",
    "headers.root_id",
    "properties.correlation_id",
    "properties.delivery_tag",
    "properties.reply_to",
}  # per message, or result-backend only


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_message_matches_celery_send_task(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushall()
    app = make_celery(Settings(redis_url=redis_url))
    app.send_task(ADVANCE_TASK, args=["job-1"], queue="vmorch.pool.t")
    real = json.loads(r.rpop("vmorch.pool.t"))
    ours = json.loads(TaskMessages(app).advance("job-1", "vmorch.pool.t"))
    a, b = flat(real), flat(ours)
    differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - IDS
    assert differing <= {"headers.ignore_result"}, differing
    assert base64.b64decode(real["body"]) == base64.b64decode(ours["body"])
    r.close()
