"""Messages to guests and what their guest programs said: the per-VM outbox, each
message's record and status, and the guest's state (`keys.py`: guest:*, gmsg:*).

A message job writes its messages (`enqueue`: ids derived from the job, so a step run
again writes nothing twice) and rings the doorbell; the agent of the VM's server sends the
outbox in order whenever the guest is connected and ready, and records each answer
(`answer`). A status only moves forward: queued -> delivered -> acknowledged | failed; a
late answer after a failure (a deadline passed) changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from redis.asyncio import Redis

from orchestrator.store import keys
from orchestrator.store.events import make_event
from schemas.base import Frozen
from schemas.event_types import GUEST_ANSWERED, SOURCE_ENGINE
from schemas.guest import GuestState, QemuAgent, Ready

TERMINAL = ("acknowledged", "failed")
DOORBELL_MAXLEN = 10_000
KEYS_MAX = 256  # keys reported per guest, kept
DROP_REASONS = ("too_long", "invalid", "rate")

# KEYS: message record, outbox, its job's count, events
# ARGV: status, answer fields (JSON object), now iso, the "all answered" event (envelope)
# A terminal status leaves the outbox and counts down the job's messages not yet answered;
# the last one appends `guest.messages.answered` (subject: the job), the one event the job
# waits for (not one per message). A status never goes back.
_ANSWER = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'missing' end
if cur == 'acknowledged' or cur == 'failed' then return cur end
if ARGV[1] == 'delivered' and cur == 'delivered' then return cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'answer', ARGV[2], ARGV[1] .. '_at', ARGV[3])
if ARGV[1] == 'acknowledged' or ARGV[1] == 'failed' then
  redis.call('LREM', KEYS[2], 0, redis.call('HGET', KEYS[1], 'id'))
  local left = redis.call('HINCRBY', KEYS[3], 'pending', -1)
  if left == 0 then
    local job = redis.call('HGET', KEYS[1], 'job_id')
    redis.call('XADD', KEYS[4], '*', 'e', ARGV[4], 't', 'guest.messages.answered', 's', job)
  end
end
return 'ok'
"""


class MessageRecord(Frozen):
    """One message to one VM's guest."""

    id: str
    vm_id: str
    job_id: str
    op: str = "set"
    key: str | None = None
    value: str | None = Field(default=None, description="sealed (a token) when secret")
    secret: bool = False
    name: str | None = None
    args: dict[str, Any] | None = None
    deadline_ms: int = 0
    status: str = "queued"
    answer: dict[str, Any] = Field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class GuestStore:
    def __init__(self, redis: Redis, message_ttl_s: float = 7 * 86400):
        self.redis = redis
        self.ttl_s = int(message_ttl_s)
        self._answer = redis.register_script(_ANSWER)

    # --- the message jobs' side -------------------------------------------------------------
    async def enqueue(self, records: list[MessageRecord]) -> None:
        """Write the messages not yet written (by id) and append them to their VMs'
        outboxes in order, then ring the doorbell for each VM. Run again: nothing twice."""
        if not records:
            return
        pipe = self.redis.pipeline(transaction=False)
        for r in records:
            pipe.exists(keys.guest_message(r.id))
        there = await pipe.execute()
        pipe = self.redis.pipeline(transaction=True)
        for job_id in dict.fromkeys(r.job_id for r in records):  # once: a re-run adds none
            n = sum(1 for r in records if r.job_id == job_id)
            pipe.hsetnx(keys.guest_job(job_id), "pending", n)
            pipe.expire(keys.guest_job(job_id), self.ttl_s)
        for r, exists in zip(records, there, strict=True):
            if exists:
                continue
            doc = r.model_dump(mode="json", exclude={"answer"})
            fields = {k: _field(v) for k, v in doc.items() if v is not None}
            pipe.hset(keys.guest_message(r.id), mapping=fields)
            pipe.expire(keys.guest_message(r.id), self.ttl_s)
            pipe.rpush(keys.guest_outbox(r.vm_id), r.id)
        for vm_id in dict.fromkeys(r.vm_id for r in records):
            pipe.xadd(keys.GUEST_DOORBELL, {"vm": vm_id}, maxlen=DOORBELL_MAXLEN, approximate=True)
        await pipe.execute()

    async def messages(self, ids: list[str]) -> list[MessageRecord | None]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(keys.guest_message(i))
        return [_record(h) if h else None for h in await pipe.execute()]

    async def fail(self, msg_id: str, error: str) -> bool:
        """Fail a message not yet answered (its deadline passed, its job was aborted);
        False when it was answered first."""
        return await self.answer(msg_id, "failed", {"error": error}) == "ok"

    # --- the agent's side -------------------------------------------------------------------
    async def outbox(self, vm_id: str) -> list[MessageRecord]:
        ids = list(await self.redis.lrange(keys.guest_outbox(vm_id), 0, -1))
        out: list[MessageRecord] = []
        gone: list[str] = []
        for i, rec in zip(ids, await self.messages(ids), strict=True):
            if rec is None:
                gone.append(i)  # expired
            elif rec.status not in TERMINAL:
                out.append(rec)
        if gone:
            pipe = self.redis.pipeline(transaction=False)
            for i in gone:
                pipe.lrem(keys.guest_outbox(vm_id), 0, i)
            await pipe.execute()
        return out

    async def answer(self, msg_id: str, status: str, answer: dict[str, Any]) -> str:
        """Record `status` (delivered, acknowledged, failed) and the answer; returns "ok",
        "missing", or the status that was already final."""
        vm_id, job_id = await self.redis.hmget(keys.guest_message(msg_id), ["vm_id", "job_id"])
        if vm_id is None or job_id is None:
            return "missing"
        done = make_event(GUEST_ANSWERED, SOURCE_ENGINE, job_id, {"job_id": job_id})
        return str(
            await self._answer(
                keys=[keys.guest_message(msg_id), keys.guest_outbox(vm_id),
                      keys.guest_job(job_id), keys.EVENTS],
                args=[status, json.dumps(answer), _now(), done.model_dump_json()],
            )
        )  # fmt: skip

    async def doorbell_position(self) -> str:
        """The doorbell's newest entry (read on from there)."""
        last = await self.redis.xrevrange(keys.GUEST_DOORBELL, count=1)
        return str(last[0][0]) if last else "0-0"

    async def doorbell(self, after: str, block_ms: int) -> tuple[str, set[str]]:
        """VMs whose outbox grew after `after` (waiting up to block_ms), and the new position."""
        reply = await self.redis.xread({keys.GUEST_DOORBELL: after}, count=1000, block=block_ms)
        vms: set[str] = set()
        pos = after
        for _stream, entries in reply or []:
            for sid, fields in entries:
                pos = sid
                if "vm" in fields:
                    vms.add(fields["vm"])
        return pos, vms

    async def connected(self, vm_id: str, server: str, ready: Ready) -> None:
        now = _now()
        await self.redis.hset(
            keys.guest(vm_id),
            mapping={
                "connected": "1",
                "server": server,
                "version": ready.version,
                "boot_id": ready.boot_id,
                "ready_at": now,
                "last_seen": now,
            },
        )

    async def seen(self, vm_id: str) -> None:
        await self.redis.hset(keys.guest(vm_id), "last_seen", _now())

    async def disconnected(self, vm_id: str, server: str) -> None:
        """The channel closed (the VM stopped, or moved: only if it was this server's)."""
        if await self.redis.hget(keys.guest(vm_id), "server") == server:
            await self.redis.hset(keys.guest(vm_id), "connected", "0")

    async def qemu_agent(self, vm_id: str, info: dict[str, Any] | None) -> None:
        """Record what the VM's QEMU guest agent said (None: it has none that answers)."""
        if info is None:
            await self.redis.hdel(keys.guest(vm_id), "qemu_agent")
        else:
            doc = QemuAgent.model_validate({**info, "seen_at": _now()})
            await self.redis.hset(keys.guest(vm_id), "qemu_agent", doc.model_dump_json())

    async def report(self, vm_id: str, values: dict[str, str]) -> None:
        k = keys.guest_keys(vm_id)
        have = await self.redis.hlen(k)
        if have >= KEYS_MAX:
            known = set(await self.redis.hkeys(k))
            values = {key: v for key, v in values.items() if key in known}
        if values:
            await self.redis.hset(k, mapping=values)

    async def dropped(self, vm_id: str, reason: str, n: int = 1) -> None:
        await self.redis.hincrby(keys.guest(vm_id), f"dropped:{reason}", n)

    async def state(self, vm_id: str) -> GuestState:
        h = await self.redis.hgetall(keys.guest(vm_id))
        reported = await self.redis.hgetall(keys.guest_keys(vm_id))
        return GuestState(
            vm_id=vm_id,
            connected=h.get("connected") == "1",
            server=h.get("server"),
            version=h.get("version"),
            boot_id=h.get("boot_id") or None,
            ready_at=h.get("ready_at"),
            last_seen=h.get("last_seen"),
            keys=dict(reported),
            dropped={r: int(h[f"dropped:{r}"]) for r in DROP_REASONS if f"dropped:{r}" in h},
            qemu_agent=(
                QemuAgent.model_validate_json(h["qemu_agent"]) if h.get("qemu_agent") else None
            ),
        )


def _field(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def _record(h: dict[str, str]) -> MessageRecord:
    return MessageRecord(
        id=h["id"],
        vm_id=h["vm_id"],
        job_id=h["job_id"],
        op=h.get("op", "set"),
        key=h.get("key"),
        value=h.get("value"),
        secret=h.get("secret") == "1",
        name=h.get("name"),
        args=json.loads(h["args"]) if h.get("args") else None,
        deadline_ms=int(h.get("deadline_ms") or 0),
        status=h.get("status", "queued"),
        answer=json.loads(h["answer"]) if h.get("answer") else {},
    )
