"""Job records in Redis: create, read, compare-and-set updates, listing and the dispatch timer.

All writes go through the scripts in `orchestrator.store.lua`, so each transition is atomic and
emits its event in the same step. Writers pass the version they read; a concurrent writer
makes the call return `conflict` and `update()` re-reads and tries again. Workers also pass
their fencing token: a worker whose lease has gone gets `fenced` and must stop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from orchestrator.clock import now_ms
from orchestrator.errors import Conflict, LeaseLost, NotFound, ValidationFailed
from orchestrator.metrics import JOB_TRANSITIONS
from orchestrator.store import jobdoc, keys, lua
from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.base import utcnow
from schemas.inventory import Vm
from schemas.jobs import TRANSITIONS, Job, JobState, StepState

MAX_SCAN = 2000  # job records one listing call reads at most
# a listing cursor: created µs, then (optional, from this version on) the job id there
CURSOR_RE = re.compile(r"(?P<score>[0-9]{1,20})(?:-(?P<job_id>[0-9a-f-]{36}))?", re.ASCII)
CreateStatus = Literal["created", "exists", "mismatch", "name_taken", "draining"]
Mutation = Callable[[Job], Job | None]
Entries = list[tuple[str, int]]  # (job id, score) from an index


def _created_us(job: Job) -> int:
    return int(job.created_at.timestamp() * 1_000_000)


def job_event(job: Job, old: JobState | None, source: str, step: str | None = None) -> str:
    """The event for a job change: `job.<state>` on a transition, `job.step` otherwise.

    A step's event says which step and the state it went to, not the whole step list: a
    job emits an event or two per step, and a list in each made the stream's share of a job grow
    with the square of its steps (the journal is the job's, `GET /v1/jobs/{id}`)."""
    changed = old != job.state
    data: dict[str, Any] = {
        "job_id": job.id,
        "kind": job.kind,
        "state": job.state.value,
        "progress": job.progress,
    }
    if changed and old is not None:
        data["from"] = old.value
    if job.links.vm_id:
        data["vm_id"] = job.links.vm_id
    if job.links.hook_id:
        data["hook_id"] = job.links.hook_id
    if job.links.retry_of and job.state == JobState.QUEUED:
        data["retry_of"] = job.links.retry_of
    if job.recovery is not None and changed:
        data["recovered_by"], data["reason"] = job.recovery.by, job.recovery.reason
    if step is not None:
        data["step"] = step
        record = next((s for s in job.steps if s.name == step), None)
        if record is not None:
            data["step_state"] = record.state.value
    # one write may end a step (or start the job) and start the next step: the runner's
    # usual path, so the event names the step running now too
    running = next((s.name for s in job.steps if s.state == StepState.RUNNING), None)
    if running is not None and running != step:
        data["running_step"] = running
    kind = f"job.{job.state.value}" if changed else "job.step"
    return make_event(kind, source, job.id, data).model_dump_json()


def _child_ended(old: Job, after: Job, source: str) -> tuple[str, str]:
    """A child job's end as an event about its parent (`job.child_ended`, subject the
    parent's id), written with the end itself: a parent waiting for its children (an
    evacuation) is woken by it. ("", "") for any other change."""
    parent = after.links.parent_job
    if not parent or old.state.terminal or not after.state.terminal:
        return "", ""
    data = {"job_id": after.id, "kind": after.kind, "state": after.state.value}
    if after.links.vm_id:
        data["vm_id"] = after.links.vm_id
    return make_event(et.JOB_CHILD_ENDED, source, parent, data).model_dump_json(), parent


@dataclass(frozen=True)
class Position:
    """Where a listing stands in an index: a score (created µs) and the job id there. No
    id (a cursor of an older version, score only): every job of that score is passed."""

    score: int
    job_id: str | None = None


def parse_cursor(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    m = CURSOR_RE.fullmatch(cursor)
    if m is None:
        raise ValidationFailed("bad cursor", details=[(["query", "cursor"], "not a cursor")])
    return Position(int(m["score"]), m["job_id"])


def format_cursor(pos: Position) -> str:
    return str(pos.score) if pos.job_id is None else f"{pos.score}-{pos.job_id}"


@dataclass(frozen=True)
class CreateResult:
    status: CreateStatus
    job_id: str


@dataclass(frozen=True)
class Versioned:
    job: Job
    version: str


class JobStore:
    def __init__(
        self,
        redis: Redis,
        *,
        idem_ttl_s: int = 86400,
        redispatch_after_s: float = 15.0,
    ):
        self.redis = redis
        self.idem_ttl_s = idem_ttl_s
        self.redispatch_after_ms = int(redispatch_after_s * 1000)
        self._create = redis.register_script(lua.CREATE_JOB)
        self._commit = redis.register_script(lua.COMMIT_JOB)
        self._claim_due = redis.register_script(lua.CLAIM_DUE)
        self._leave = redis.register_script(lua.LEAVE_QUEUE)

    async def create(
        self,
        job: Job,
        *,
        idem_key: str | None = None,
        request_sha: str = "",
        reserve_vm: Vm | None = None,
        message: str = "",
        refuse_if_draining: bool = True,
    ) -> CreateResult:
        """Store a new queued job, append it to its VM's queue, reserve a new VM's name, and
        push `message` on the job's Celery queue if the job may start at once (all atomic;
        `draining`, nothing stored, when the job's queue drains and the job is not exempt)."""
        vm_id, also = job.links.vm_id, job.links.source_vm_id
        created = _created_us(job)
        event = job_event(job, None, "vmorch://api")
        res = await self._create(
            keys=[
                keys.job(job.id),
                keys.idempotency(idem_key) if idem_key else lua.NONE_KEY,
                keys.JOBS_ALL,
                keys.jobs_state(JobState.QUEUED),
                keys.jobs_kind(job.kind),
                keys.jobs_vm(vm_id) if vm_id else lua.NONE_KEY,
                keys.vm_queue(vm_id) if vm_id else lua.NONE_KEY,
                keys.jobs_queued(job.queue),
                keys.EVENTS,
                keys.JOBS_DUE,
                keys.vm(reserve_vm.id) if reserve_vm else lua.NONE_KEY,
                keys.vm_name(reserve_vm.name) if reserve_vm else lua.NONE_KEY,
                keys.VMS,
                job.queue,
                keys.vm_queue(also) if also else lua.NONE_KEY,
                keys.QUEUE_CONTROLS,
            ],
            args=[
                job.id,
                self.stored_doc(job),
                created,
                f"{job.id} {request_sha}" if idem_key else "",
                self.idem_ttl_s,
                "1" if vm_id else "0",
                event,
                now_ms() + self.redispatch_after_ms,
                reserve_vm.model_dump_json() if reserve_vm else "",
                reserve_vm.name if reserve_vm else "",
                reserve_vm.id if reserve_vm else "",
                message,
                job.queue if refuse_if_draining else "",
            ],
        )
        status, job_id, _position = res
        if status == "created":
            JOB_TRANSITIONS.labels(job.kind, JobState.QUEUED.value).inc()
        return CreateResult(status, job_id)

    async def idempotent_job(self, scoped_key: str) -> tuple[str, str] | None:
        """(job id, request sha256) recorded under an Idempotency-Key, if any."""
        raw = await self.redis.get(keys.idempotency(scoped_key))
        if not raw:
            return None
        job_id, _, sha = str(raw).partition(" ")
        return job_id, sha

    async def get_versioned(self, job_id: str) -> Versioned | None:
        doc, version = await self.redis.hmget(keys.job(job_id), ["doc", "version"])
        if doc is None:
            return None
        return Versioned(jobdoc.decode(doc), version)

    async def get(self, job_id: str) -> Job:
        v = await self.get_versioned(job_id)
        if v is None:
            raise NotFound(f"job {job_id} not found")
        return v.job

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        return [jobdoc.decode(d) for d in await self._docs(job_ids) if d is not None]

    async def _docs(self, job_ids: list[str]) -> list[str | None]:
        """The stored docs of `job_ids`, in one round trip (None for a job that is gone)."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for jid in job_ids:
            pipe.hget(keys.job(jid), "doc")
        return list(await pipe.execute())

    async def commit(
        self,
        before: Versioned,
        after: Job,
        *,
        fence: int | None = None,
        source: str = "vmorch://engine",
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
        force: bool = False,
        heads_due_ms: int | None = None,
    ) -> tuple[str, list[str]]:
        """Write `after` if the record is still at `before.version` (and the lease matches).
        `force`: an operator's recovery, which may end a job from any state;
        `heads_due_ms`: when the jobs a terminal job hands its VMs to are due (now if None).

        Returns (status, new VM-queue heads): set when a terminal job hands its VM (or its
        two: a clone's source too) to the next job; the caller dispatches them.
        """
        old = before.job
        if fence is not None and old.recovery is not None:
            return "fenced", []  # an operator ended it by hand: no worker writes to it
        if not force and old.state != after.state and after.state not in TRANSITIONS[old.state]:
            raise Conflict(f"job {old.id}: {old.state} -> {after.state} is not allowed")
        vm_id = after.links.vm_id
        emit = old.state != after.state or step is not None
        status, heads = await self._commit(
            keys=[
                keys.job(old.id),
                keys.lease(old.id),
                keys.EVENTS,
                keys.jobs_state(old.state),
                keys.jobs_state(after.state),
                keys.jobs_queued(old.queue),
                keys.vm_queue(vm_id) if vm_id else lua.NONE_KEY,
                keys.JOBS_DUE,
                keys.JOBS_ENDED,
                keys.vm_queue(also) if (also := after.links.source_vm_id) else lua.NONE_KEY,
            ],
            args=[
                before.version,
                "" if fence is None else str(fence),
                self.stored_doc(after),
                after.state.value,
                job_event(after, old.state, source, step) if emit else "",
                old.id,
                _created_us(old),
                "1" if after.state.terminal else "0",
                "" if due_ms is None else str(due_ms),
                now_ms(),
                f"job.{after.state.value}" if old.state != after.state else "job.step",
                *_child_ended(old, after, source),
                "" if heads_due_ms is None else str(heads_due_ms),
            ],
        )
        if status == "ok" and old.state != after.state:
            JOB_TRANSITIONS.labels(after.kind, after.state.value).inc()
        return status, list(heads)

    async def update(
        self,
        job_id: str,
        mutate: Mutation,
        *,
        fence: int | None = None,
        source: str = "vmorch://engine",
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
        force: bool = False,
        heads_due_ms: int | None = None,
    ) -> tuple[Job, list[str]]:
        """Read, apply `mutate`, compare-and-set; repeat on a concurrent write.

        `mutate` returns the new job, or None to write nothing. Raises LeaseLost if the
        fencing token no longer matches.
        """
        v, heads = await self.update_v(
            job_id,
            mutate,
            fence=fence,
            source=source,
            step=step,
            due_ms=due_ms,
            force=force,
            heads_due_ms=heads_due_ms,
        )
        return v.job, heads

    async def update_v(
        self,
        job_id: str,
        mutate: Mutation,
        *,
        current: Versioned | None = None,
        fence: int | None = None,
        source: str = "vmorch://engine",
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
        force: bool = False,
        heads_due_ms: int | None = None,
    ) -> tuple[Versioned, list[str]]:
        """`update`, starting from `current` (saves a read when the caller holds the last
        version it wrote); returns the version written, to pass to the next call."""
        before = current
        while True:
            if before is None:
                before = await self.get_versioned(job_id)
                if before is None:
                    raise NotFound(f"job {job_id} not found")
            after = mutate(before.job)
            if after is None:
                return before, []
            after = after.model_copy(update={"updated_at": utcnow()})
            status, heads = await self.commit(
                before,
                after,
                fence=fence,
                source=source,
                step=step,
                due_ms=due_ms,
                force=force,
                heads_due_ms=heads_due_ms,
            )
            if status == "ok":
                return Versioned(after, str(int(before.version) + 1)), heads
            if status == "fenced":
                raise LeaseLost(f"job {job_id}: lease lost, not recording")
            if status == "missing":
                raise NotFound(f"job {job_id} not found")
            before = None  # a concurrent write: read again

    async def leave_vm_queue(self, job_id: str, vm_id: str) -> str | None:
        """Take the job out of the VM's queue before it ends; the job that goes on there
        (now its head), which the caller dispatches, if any."""
        head = await self._leave(
            keys=[keys.vm_queue(vm_id), keys.JOBS_DUE], args=[job_id, now_ms()]
        )
        return str(head) or None

    async def vm_queue(self, vm_id: str) -> list[str]:
        return list(await self.redis.lrange(keys.vm_queue(vm_id), 0, -1))

    async def ahead_of(self, job: Job) -> tuple[int, str | None]:
        """Where a queued job stands in its VM queues: (its place in the queue where it is
        furthest back, the job just ahead of it there); (0, None) when it is first in each
        (a clone's source is its second queue)."""
        pos, ahead = 0, None
        for vm_id in (job.links.vm_id, job.links.source_vm_id):
            if not vm_id:
                continue
            queue = await self.vm_queue(vm_id)
            if job.id in queue and (i := queue.index(job.id)) > pos:
                pos, ahead = i, queue[i - 1]
        return pos, ahead

    async def claim_due(self, limit: int = 100) -> list[str]:
        """Jobs whose dispatch timer has passed; their timers move forward by redispatch_after."""
        now = now_ms()
        return list(
            await self._claim_due(
                keys=[keys.JOBS_DUE], args=[now, now + self.redispatch_after_ms, limit]
            )
        )

    async def set_due(self, job_id: str, due_ms: int) -> None:
        await self.redis.zadd(keys.JOBS_DUE, {job_id: due_ms})

    async def clear_due(self, job_id: str) -> None:
        await self.redis.zrem(keys.JOBS_DUE, job_id)

    @staticmethod
    def stored_doc(job: Job) -> str:
        """The record's `doc` field: the job without the fields that hold their defaults
        (nulls, empty lists, zero counts), which reads back as the same Job, deflated
        (`jobdoc`). Its request and wait are kept whole, so that a default
        changed in a later version does not change what a stored job asked for."""
        rest = job.model_dump_json(exclude_defaults=True, exclude={"request", "wait"})
        wait = "" if job.wait is None else f',"wait":{job.wait.model_dump_json()}'
        # `rest` is an object with `id` at least: splice the two fields in after its brace
        # the request as stored: a secret value sealed, not redacted (context "sealed")
        request = job.request.model_dump_json(context={"sealed": True})
        return jobdoc.encode_json(f'{{"request":{request}{wait},{rest[1:]}')

    @staticmethod
    def valid_cursor(cursor: str) -> bool:
        """Whether `cursor` is one `list` hands out (or an older score-only one); ASCII only."""
        return CURSOR_RE.fullmatch(cursor) is not None

    async def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        vm_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first. Scans the most selective index and filters the rest.

        At most `MAX_SCAN` records are read per call: a sparse filter returns a short page
        with a cursor to go on from, rather than walking the whole index in one request.
        The cursor is the last position scanned, `<created µs>-<job id>`: jobs created in
        the same microsecond (two api processes) are told apart by id, so a page boundary
        among them neither skips nor repeats one.
        """
        index = (
            keys.jobs_vm(vm_id)
            if vm_id
            else keys.jobs_state(state)
            if state
            else keys.jobs_kind(kind)
            if kind
            else keys.JOBS_ALL
        )
        out: list[Job] = []
        pos = parse_cursor(cursor)
        scanned = 0
        # the index itself answers one filter: its entries match it, but for a job changed
        # between the two reads; with more filters, read ahead for the ones that do not
        exact = sum(1 for f in (state, kind, vm_id) if f) <= 1
        while len(out) < limit:
            if scanned >= MAX_SCAN and pos is not None:
                return out, format_cursor(pos)
            want = limit - len(out) if exact else max(limit * 2, 100)
            batch = await self._entries_after(index, pos, want)
            scanned += len(batch)
            if not batch:
                return out, None
            docs = await self._docs([jid for jid, _ in batch])
            for (jid, score), doc in zip(batch, docs, strict=True):
                pos = Position(score, jid)
                if doc is None:
                    continue  # deleted between the two reads
                job = jobdoc.decode(doc)  # only as many as the page takes
                if (
                    (state and job.state != state)
                    or (kind and job.kind != kind)
                    or (vm_id and job.links.vm_id != vm_id)
                ):
                    continue
                out.append(job)
                if len(out) == limit:
                    return out, format_cursor(pos)
        return out, None

    async def _entries_after(self, index: str, pos: Position | None, count: int) -> Entries:
        """Up to `count` (job id, score) entries of `index` that come after `pos` newest
        first, the order ZREVRANGEBYSCORE returns: score descending, then id descending
        (Redis orders equal scores by member, bytewise; ids are ASCII, as Python compares).

        The ties of `pos`'s score are read whole and those not yet passed kept: ties are
        jobs created in one microsecond, a handful at most."""
        if pos is None:
            raw = await self.redis.zrevrangebyscore(
                index, "+inf", "-inf", start=0, num=count, withscores=True
            )
            return [(m, int(s)) for m, s in raw]
        out: Entries = []
        if pos.job_id is not None:
            ties = await self.redis.zrevrangebyscore(index, pos.score, pos.score)
            out = [(m, pos.score) for m in ties if m < pos.job_id][:count]
        if len(out) < count:
            raw = await self.redis.zrevrangebyscore(
                index, f"({pos.score}", "-inf", start=0, num=count - len(out), withscores=True
            )
            out += [(m, int(s)) for m, s in raw]
        return out
