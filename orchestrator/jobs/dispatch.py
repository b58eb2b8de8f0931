"""Publishing `vmorch.advance` messages straight onto a Celery queue in Redis.

Celery's producer is blocking and costly per message (it was 70% of the api's CPU in
bench/): a thread hop, a new Redis client per publish in kombu's transport. So the message is
built with Celery's own `as_task_v2` and kombu's serializer, wrapped in the envelope kombu's
Redis transport stores, and pushed with the caller's own Redis connection: inside the Lua
script that creates a job (one round trip, and no job stored without its message), or by a
plain LPUSH. Workers consume it as any Celery message; `tests/` checks it against what
`send_task` itself writes.

A publish that is lost (the process dies first) is not a lost job: the job is already in
Redis with a dispatch timer, and the router publishes it again when the timer passes.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps as kombu_dumps
from redis.asyncio import Redis

ADVANCE_TASK = "vmorch.advance"  # the one task: run the job's next step(s)
TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"


def producer_app() -> Celery:
    """A Celery app used only to build messages (no broker connection is ever made)."""
    return Celery("vmorch", set_as_current=False)


class TaskMessages:
    """Builds the Redis-transport form of an `advance` message for a queue.

    Celery's `as_task_v2` builds the message of a task once (it was a third of the cost of
    a message); each message is that template with its own task id and arguments, in the
    places `as_task_v2` puts them (the test against `send_task` checks the result)."""

    def __init__(self, celery: Celery):
        self.celery = celery
        self._templates: dict[str, Any] = {}

    def _message(self, task_id: str, task: str, args: list[Any]) -> Any:
        tmpl = self._templates.get(task)
        if tmpl is None:
            tmpl = self._templates[task] = self.celery.amqp.as_task_v2(
                TEMPLATE_ID, task, args=[], kwargs={}
            )
        headers = {**tmpl.headers, "id": task_id, "root_id": task_id, "argsrepr": repr(args)}
        properties = {**tmpl.properties, "correlation_id": task_id}
        return tmpl._replace(headers=headers, properties=properties, body=(args, {}, tmpl.body[2]))

    def advance(self, job_id: str, queue: str) -> str:
        return self.encode(ADVANCE_TASK, [job_id], queue)

    def encode(self, task: str, args: list[Any], queue: str) -> str:
        task_id = str(uuid.uuid4())
        msg = self._message(task_id, task, args)
        content_type, content_encoding, body = kombu_dumps(  # type: ignore[no-untyped-call]
            msg.body, serializer="json"
        )
        raw = body.encode() if isinstance(body, str) else body
        properties = {
            **msg.properties,
            "delivery_mode": 2,
            # what Celery sends for `queue=name`: the default exchange, routed by queue name
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        envelope = {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": msg.headers,
            "properties": properties,
        }
        return json.dumps(envelope)


class Dispatcher:
    """Pushes `advance` messages for jobs onto their queues."""

    def __init__(self, redis: Redis, messages: TaskMessages):
        self.redis = redis
        self.messages = messages

    def message(self, job_id: str, queue: str) -> str:
        return self.messages.advance(job_id, queue)

    async def dispatch(self, job_id: str, queue: str) -> None:
        await self.redis.lpush(queue, self.message(job_id, queue))

    async def queued(self, queue: str) -> int:
        """Messages waiting in a Celery queue."""
        return int(await self.redis.llen(queue))
