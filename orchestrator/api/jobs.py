"""Jobs over HTTP: submit, list, show, abort, retry, recover."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, services
from orchestrator.api.middleware import caller
from orchestrator.errors import Forbidden
from orchestrator.store.jobs import JobStore
from schemas.api import AbortRequest, Page, RecoverRequest, RetryRequest, Role
from schemas.jobs import Job, JobState
from schemas.requests import Noop, job_request_adapter

M = TypeVar("M", bound=BaseModel)


async def _with_position(jobs: JobStore, job: Job) -> Job:
    """Fill in where a queued job stands in its VM's queue, and which job is ahead."""
    if job.state != JobState.QUEUED or not job.links.vm_id:
        return job
    pos, ahead = await jobs.ahead_of(job)
    return job.model_copy(update={"vm_queue_position": pos, "waiting_for_job": ahead})


async def submit_job(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        # strict: the types the document gives ("2" is not 2, 0 is not false)
        req = job_request_adapter.validate_python(body, strict=True)
    except ValidationError as e:
        tag = body.get("kind") if isinstance(body, dict) else None
        raise invalid("job request", e, tag=tag) from None
    idem = params(request)["Idempotency-Key"]
    who = caller(request)
    if isinstance(req, Noop) and not who.role.allows(Role.ADMIN):
        raise Forbidden("noop jobs (engine drills) are for admins only")
    job, replayed = await services(request).submitter.submit(
        req, submitted_by=who.name, idem_key=idem, idem_scope=who.id
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return respond(job, 202, **headers)


async def list_jobs(request: web.Request) -> web.Response:
    q, svc = params(request), services(request)  # checked against the route's schemas
    vm_id = None
    if q["vm"]:
        vm = await svc.inventory.find_vm(q["vm"])
        vm_id = vm.id if vm else q["vm"]
    jobs, nxt = await svc.jobs.list(
        state=q["state"],
        kind=q["kind"] or None,
        vm_id=vm_id,
        cursor=q["cursor"],
        limit=q["limit"],
    )
    return respond(Page[Job](items=jobs, next_cursor=nxt))


async def get_job(request: web.Request) -> web.Response:
    store = services(request).jobs
    job = await store.get(request.match_info["job_id"])
    return respond(await _with_position(store, job))


async def abort_job(request: web.Request) -> web.Response:
    reason = (await _optional_body(request, AbortRequest, "abort request")).reason
    job = await services(request).submitter.abort(request.match_info["job_id"], reason)
    return respond(job, 202)


async def _optional_body(request: web.Request, model: type[M], what: str) -> M:
    """A body that may be left out (then the model's defaults)."""
    if not await request.read():
        return model()
    try:
        return model.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid(what, e) from None


async def retry_job(request: web.Request) -> web.Response:
    await _optional_body(request, RetryRequest, "retry request")  # the reason: for the audit
    svc, who = services(request), caller(request)
    old = await svc.jobs.get(request.match_info["job_id"])
    if isinstance(old.request, Noop) and not who.role.allows(Role.ADMIN):
        raise Forbidden("noop jobs (engine drills) are for admins only")
    job, replayed = await svc.recovery.retry(old.id, by=who.name)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return respond(job, 202, **headers)


async def recover_job(request: web.Request) -> web.Response:
    try:
        req = RecoverRequest.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("recover request", e) from None
    job = await services(request).recovery.recover(
        request.match_info["job_id"],
        JobState(req.state),
        by=caller(request).name,
        reason=req.reason,
    )
    return respond(job)
