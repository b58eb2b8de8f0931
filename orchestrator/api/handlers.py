"""Request handlers. Each reads and validates its input, calls a store, returns a model."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.api.middleware import caller, validation_details
from orchestrator.errors import BadRequest, ValidationFailed
from orchestrator.jobs.submit import Submitter
from orchestrator.store import keys
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from schemas.api import AbortRequest, Page, QueueDepth, QueueStatus, WorkerSeen
from schemas.inventory import Vm
from schemas.jobs import Job, JobState
from schemas.requests import job_request_adapter

JOBS = web.AppKey("vmorch_jobs", JobStore)
INVENTORY = web.AppKey("vmorch_inventory", InventoryStore)
SUBMITTER = web.AppKey("vmorch_submitter", Submitter)

_IDEM_MAX = 200


class VmView(Vm):
    """A VM with its operation queue (job ids, the running one first)."""

    operations: list[str] = []


def respond(model: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers)


_LIST_ADAPTER: TypeAdapter[list[BaseModel]] = TypeAdapter(list[BaseModel])


def respond_list(items: Sequence[BaseModel], status: int = 200) -> web.Response:
    body = _LIST_ADAPTER.dump_json(list(items), serialize_as_any=True)
    return web.Response(body=body, status=status, content_type="application/json")


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise BadRequest("request body is empty", details=[(["body"], "a JSON object is required")])
    return json.loads(raw)


def _query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an integer", details=[(["query", name], "not an integer")]
        ) from None
    if not lo <= value <= hi:
        raise ValidationFailed(
            f"{name} must be between {lo} and {hi}",
            details=[(["query", name], f"must be between {lo} and {hi}")],
        )
    return value


async def _with_position(jobs: JobStore, job: Job) -> Job:
    """Fill in where a queued job stands in its VM's queue, and which job is ahead."""
    if job.state != JobState.QUEUED or not job.links.vm_id:
        return job
    queue = await jobs.vm_queue(job.links.vm_id)
    if job.id not in queue:
        return job
    pos = queue.index(job.id)
    return job.model_copy(
        update={"vm_queue_position": pos, "waiting_for_job": queue[pos - 1] if pos else None}
    )


# --- jobs ---------------------------------------------------------------------------------
async def submit_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        req = job_request_adapter.validate_python(body)
    except ValidationError as e:
        tag = body.get("kind") if isinstance(body, dict) else None
        raise ValidationFailed(
            "the job request is not valid",
            details=[(d.loc, d.msg) for d in validation_details(e, tag=tag)],
        ) from None
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not (0 < len(idem) <= _IDEM_MAX and idem.isprintable()):
        raise BadRequest(
            "Idempotency-Key must be 1-200 printable characters",
            details=[(["header", "Idempotency-Key"], "bad value")],
        )
    who = caller(request)
    job, replayed = await request.app[SUBMITTER].submit(
        req, submitted_by=who.name, idem_key=idem, idem_scope=who.id
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return respond(job, 202, **headers)


async def list_jobs(request: web.Request) -> web.Response:
    q = request.query
    state = q.get("state")
    if state is not None and state not in JobState.__members__.values():
        raise ValidationFailed(
            "unknown state",
            details=[
                (["query", "state"], "must be one of " + ", ".join(s.value for s in JobState))
            ],
        )
    cursor = q.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise ValidationFailed("bad cursor", details=[(["query", "cursor"], "not a cursor")])
    vm_id = None
    if q.get("vm"):
        vm = await request.app[INVENTORY].find_vm(q["vm"])
        vm_id = vm.id if vm else q["vm"]
    jobs, nxt = await request.app[JOBS].list(
        state=state,
        kind=q.get("kind"),
        vm_id=vm_id,
        cursor=cursor,
        limit=_query_int(request, "limit", 50, 1, 500),
    )
    return respond(Page[Job](items=jobs, next_cursor=nxt))


async def get_job(request: web.Request) -> web.Response:
    store = request.app[JOBS]
    job = await store.get(request.match_info["job_id"])
    return respond(await _with_position(store, job))


async def abort_job(request: web.Request) -> web.Response:
    reason = ""
    if await request.read():
        reason = AbortRequest.model_validate(await _json_body(request)).reason
    job = await request.app[SUBMITTER].abort(request.match_info["job_id"], reason)
    return respond(job, 202)


# --- inventory ----------------------------------------------------------------------------
async def list_vms(request: web.Request) -> web.Response:
    return respond_list(await request.app[INVENTORY].vms())


async def get_vm(request: web.Request) -> web.Response:
    vm = await request.app[INVENTORY].vm(request.match_info["vm"])
    ops = await request.app[JOBS].vm_queue(vm.id)
    return respond(VmView(**vm.model_dump(), operations=ops))


async def list_pools(request: web.Request) -> web.Response:
    return respond_list(await request.app[INVENTORY].pools())


async def list_servers(request: web.Request) -> web.Response:
    return respond_list(await request.app[INVENTORY].servers())


async def list_templates(request: web.Request) -> web.Response:
    return respond_list(await request.app[INVENTORY].templates())


async def queue_status(request: web.Request) -> web.Response:
    store = request.app[JOBS]
    r = store.redis
    pools = await request.app[INVENTORY].pools()
    names = [keys.DEFAULT_QUEUE] + [keys.pool_queue(p.name) for p in pools]
    now_s = time.time()
    depths = []
    for name in names:
        depth = await r.zcard(keys.jobs_queued(name))
        oldest = await r.zrange(keys.jobs_queued(name), 0, 0, withscores=True)
        age = round(now_s - oldest[0][1] / 1_000_000, 3) if oldest else None
        depths.append(QueueDepth(queue=name, depth=depth, oldest_job_age_s=age))
    running = await r.zrevrange(keys.jobs_state(JobState.RUNNING), 0, 999)
    running += await r.zrevrange(keys.jobs_state(JobState.ABORTING), 0, 999)
    waiting = await r.zrevrange(keys.jobs_state(JobState.WAITING), 0, 999)
    seen = await r.zrangebyscore(keys.WORKERS, (now_s - 60) * 1000, "+inf", withscores=True)
    workers = []
    for name, ms in seen:
        qs = await r.get(keys.worker(name))
        workers.append(
            WorkerSeen(
                name=name,
                last_seen_s_ago=round(now_s - ms / 1000, 3),
                queues=qs.split(",") if qs else [],
            )
        )
    return respond(QueueStatus(queues=depths, running=running, waiting=waiting, workers=workers))


async def health(request: web.Request) -> web.Response:
    await request.app[JOBS].redis.ping()
    return web.json_response({"status": "ok"})
