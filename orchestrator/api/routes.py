"""The whole route table: each entry gives the router its handler, the auth check its role
and the OpenAPI document its schemas."""

from __future__ import annotations

from typing import Any

from orchestrator.api import (
    alerts,
    audit,
    events,
    guests,
    hooks,
    inventory,
    jobs,
    pools,
    queue,
    repositories,
    tokens,
)
from orchestrator.api.routing import Query, Route
from schemas.alerts import Alert
from schemas.api import (
    AbortRequest,
    AntiAffinitySpec,
    CpuGroupSpec,
    EventPage,
    FenceAck,
    FenceRecord,
    HookCreated,
    HookRetryAccepted,
    MessagesRequest,
    MessagesToMany,
    MigrationTargets,
    Page,
    PoolGroups,
    QueueControlSpec,
    QueueStatus,
    QueueView,
    RecoverRequest,
    RepositorySpec,
    RepositoryView,
    RetryRequest,
    Role,
    ServerRegistered,
    ServerRegistration,
    ServerView,
    TokenCreated,
    TokenInfo,
    TokenRequest,
    VmView,
)
from schemas.audit import AuditRecord
from schemas.base import NAME_MAX, NAME_PATTERN
from schemas.guest import GuestState
from schemas.hooks import Hook, HookPatch, HookRun, HookSpec
from schemas.inventory import Server, ServerPool, Template, Vm
from schemas.jobs import Job, JobState
from schemas.requests import ClientJobRequest

VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN


def _limit(hi: int, default: int) -> Query:
    schema = {"type": "integer", "minimum": 1, "maximum": hi, "default": default}
    return Query("limit", f"page size (1-{hi})", schema)


def _text(max_length: int = 200) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length}


_IDEMPOTENCY_KEY = Query(
    "Idempotency-Key",
    "same key and body return the same job (1-200 printable ASCII characters)",
    {"type": "string", "pattern": "^[ -~]{1,200}$"},
)

_EVENT_FILTERS = (
    Query("type", "event type, an fnmatch glob (vm.lifecycle.*)"),
    Query("subject", "exact subject (a job or VM id)", _text()),
    Query("source", "exact source (libvirt://server-1)", _text()),
    Query(
        "after",
        "stream_id to start after (exclusive); SSE: new events only without it",
        {"type": "string", "pattern": "^([0-9]{1,20}(-[0-9]{1,20})?)?$"},
    ),
)


def _jobs() -> list[Route]:
    return [
        Route(
            "POST",
            "/v1/jobs",
            jobs.submit_job,
            "Submit a job",
            OPERATOR,
            body=ClientJobRequest,
            response=Job,
            status=202,
            headers=(_IDEMPOTENCY_KEY,),
        ),
        Route(
            "GET",
            "/v1/jobs",
            jobs.list_jobs,
            "List jobs, newest first",
            VIEWER,
            response=Page[Job],
            query=(
                Query(
                    "state",
                    "filter by state",
                    {"type": "string", "enum": [s.value for s in JobState]},
                ),
                Query(
                    "kind",
                    "filter by kind (vm.start)",
                    {"type": "string", "pattern": "^[a-z0-9._-]{0,64}$"},
                ),
                Query("vm", "VM id or name", _text(100)),
                _limit(500, 50),
                Query(
                    "cursor",
                    "next_cursor of the previous page (<created µs>-<job id>)",
                    {"type": "string", "pattern": "^[0-9]{1,20}(-[0-9a-f-]{36})?$"},
                ),
            ),
        ),
        Route(
            "GET", "/v1/jobs/{job_id}", jobs.get_job, "A job with its steps", VIEWER, response=Job
        ),
        Route(
            "POST",
            "/v1/jobs/{job_id}/abort",
            jobs.abort_job,
            "Abort a job",
            OPERATOR,
            body=AbortRequest,
            body_required=False,
            response=Job,
            status=202,
        ),
        Route(
            "POST",
            "/v1/jobs/{job_id}/retry",
            jobs.retry_job,
            "Retry a failed or aborted job from its failed step, as a new job linked to it "
            "(retry_of / retried_as); asked again, the same new job",
            OPERATOR,
            body=RetryRequest,
            body_required=False,
            response=Job,
            status=202,
        ),
        Route(
            "POST",
            "/v1/jobs/{job_id}/recover",
            jobs.recover_job,
            "Mark a stuck or failed job succeeded or failed by hand, with a reason (nothing is "
            "undone or run; a worker still on it is stopped)",
            ADMIN,
            body=RecoverRequest,
            response=Job,
        ),
        Route(
            "GET",
            "/v1/jobs/{job_id}/stream",
            events.stream_job,
            "Follow one job as text/event-stream: job.snapshot, then its events until it ends",
            VIEWER,
        ),
    ]


_QUEUE_SCHEMA = {"type": "string", "pattern": r"^vmorch\.[A-Za-z0-9._-]{1,80}$"}
_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}


def _pool_group_routes() -> list[Route]:
    out = []
    for path, what, spec, put, delete in (
        ("anti-affinity-groups", "anti-affinity group", AntiAffinitySpec,
         pools.put_anti_affinity_group, pools.delete_anti_affinity_group),
        ("cpu-groups", "CPU compatibility group", CpuGroupSpec,
         pools.put_cpu_group, pools.delete_cpu_group),
    ):  # fmt: skip
        url = f"/v1/pools/{{pool}}/{path}/{{group}}"
        group = (("group", _NAME_SCHEMA),)
        out += [
            Route("PUT", url, put, f"Create or replace a pool's {what}", ADMIN,
                  body=spec, response=PoolGroups, path_schemas=group),
            Route("DELETE", url, delete, f"Remove a pool's {what}", ADMIN, response=PoolGroups,
                  path_schemas=group),
        ]  # fmt: skip
    url = "/v1/pools/{pool}/repositories/{repository}"
    repo = (("repository", _NAME_SCHEMA),)
    out += [
        Route("PUT", url, pools.present_repository, "Present a repository to a pool", ADMIN,
              body=RepositorySpec, response=PoolGroups, path_schemas=repo),
        Route("DELETE", url, pools.withdraw_repository,
              "Stop presenting a repository to a pool (none of its VMs' disks there)", ADMIN,
              response=PoolGroups, path_schemas=repo),
    ]  # fmt: skip
    return out


def _inventory() -> list[Route]:
    return [
        Route(
            "GET",
            "/v1/vms",
            inventory.list_vms,
            "List VMs, oldest first, paged by next_cursor",
            VIEWER,
            response=Page[Vm],
            query=(
                _limit(1000, 100),
                Query("cursor", "next_cursor of the previous page", _text(100)),
            ),
        ),
        Route(
            "GET",
            "/v1/vms/{vm}",
            inventory.get_vm,
            "A VM (by id or name) and its operation queue",
            VIEWER,
            response=VmView,
        ),
        Route(
            "POST",
            "/v1/vms/{vm}/messages",
            guests.send_to_vm,
            "Send key/values to the VM's guest (a vm.message job)",
            OPERATOR,
            body=MessagesRequest,
            response=Job,
            status=202,
            headers=(_IDEMPOTENCY_KEY,),
        ),
        Route(
            "POST",
            "/v1/messages",
            guests.send_to_many,
            "Send key/values to the guests of the VMs a selector names (one vm.message job)",
            OPERATOR,
            body=MessagesToMany,
            response=Job,
            status=202,
            headers=(_IDEMPOTENCY_KEY,),
        ),
        Route(
            "GET",
            "/v1/vms/{vm}/guest",
            guests.get_guest,
            "The VM's guest program as its server's agent last saw it",
            VIEWER,
            response=GuestState,
        ),
        Route(
            "GET",
            "/v1/vms/{vm}/migration-targets",
            inventory.migration_targets,
            "Every server of the VM's pool, with why it can or cannot take the VM",
            VIEWER,
            response=MigrationTargets,
            query=(
                Query(
                    "live",
                    "judge a live migration (default: when the VM runs) or a cold one",
                    {"type": "boolean"},
                ),
            ),
        ),
        Route(
            "GET",
            "/v1/pools",
            inventory.list_pools,
            "List server pools",
            VIEWER,
            response=list[ServerPool],
        ),
        Route(
            "GET",
            "/v1/servers",
            inventory.list_servers,
            "List servers, with maintenance, reachability and what each has",
            VIEWER,
            response=list[ServerView],
        ),
        Route(
            "POST",
            "/v1/servers",
            inventory.register_server,
            "Register a server in a pool (a discovery job makes it a member)",
            ADMIN,
            body=ServerRegistration,
            response=ServerRegistered,
            status=202,
        ),
        Route(
            "DELETE",
            "/v1/servers/{server}",
            inventory.delete_server,
            "Remove a server that holds no VMs (the record removed is returned)",
            ADMIN,
            response=Server,
        ),
        Route(
            "GET",
            "/v1/servers/{server}",
            inventory.get_server,
            "A server, with maintenance, reachability and what it has",
            VIEWER,
            response=ServerView,
        ),
        Route(
            "POST",
            "/v1/servers/{server}/fence",
            inventory.fence_server,
            "Acknowledge that a down server's guests are off (HA may move its VMs)",
            ADMIN,
            body=FenceAck,
            response=FenceRecord,
            status=202,
        ),
        *_pool_group_routes(),
        Route(
            "GET",
            "/v1/repositories",
            repositories.list_repositories,
            "List repositories with their templates, ISOs and virtual disks",
            VIEWER,
            response=list[RepositoryView],
        ),
        Route(
            "GET",
            "/v1/repositories/{repository}",
            repositories.get_repository,
            "A repository: its templates, ISOs and virtual disks, with size and format",
            VIEWER,
            response=RepositoryView,
        ),
        Route(
            "PUT",
            "/v1/repositories/{repository}/content/{name}",
            repositories.upload_content,
            "Upload an ISO or a disk image into a repository (the body, streamed)",
            OPERATOR,
            raw_body="application/octet-stream",
            response=Job,
            status=202,
            query=(
                Query(
                    "content",
                    "what the file is",
                    {
                        "type": "string",
                        "enum": ["iso", "virtual_disk", "assembly"],
                        "default": "iso",
                    },
                ),
                Query(
                    "sha256",
                    "the file's SHA-256, checked",
                    {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                ),
            ),
            path_schemas=(("name", _NAME_SCHEMA),),
        ),
        Route(
            "GET",
            "/v1/templates",
            inventory.list_templates,
            "List templates",
            VIEWER,
            response=list[Template],
        ),
        Route(
            "GET",
            "/v1/queue",
            queue.queue_status,
            "Queues, running and waiting jobs, workers",
            VIEWER,
            response=QueueStatus,
        ),
        Route("GET", "/healthz", queue.health, "Liveness (Redis reachable)", None),
    ]


def _events() -> list[Route]:
    return [
        Route(
            "GET",
            "/v1/events",
            events.list_events,
            "Events oldest first, filtered, paged by next_after",
            VIEWER,
            response=EventPage,
            query=(*_EVENT_FILTERS, _limit(1000, 100)),
        ),
        Route(
            "GET",
            "/v1/events/stream",
            events.stream_events,
            "Follow events as text/event-stream (SSE id: stream_id, event: type)",
            VIEWER,
            query=_EVENT_FILTERS,
            headers=(Query("Last-Event-ID", "resume after this stream_id (wins over after)"),),
        ),
    ]


def _hooks() -> list[Route]:
    return [
        Route(
            "POST",
            "/v1/hooks",
            hooks.create_hook,
            "Create a hook",
            ADMIN,
            body=HookSpec,
            response=HookCreated,
            status=201,
        ),
        Route("GET", "/v1/hooks", hooks.list_hooks, "List hooks", VIEWER, response=list[Hook]),
        Route("GET", "/v1/hooks/{hook_id}", hooks.get_hook, "A hook", VIEWER, response=Hook),
        Route(
            "PATCH",
            "/v1/hooks/{hook_id}",
            hooks.patch_hook,
            "Change a hook (fields given); a new webhook secret, shown once, when rotate_secret "
            "is true or the URL changes",
            ADMIN,
            body=HookPatch,
            response=HookCreated,
        ),
        Route(
            "DELETE", "/v1/hooks/{hook_id}", hooks.delete_hook, "Delete a hook", ADMIN, status=204
        ),
        Route(
            "GET",
            "/v1/hooks/{hook_id}/runs",
            hooks.hook_runs,
            "A hook's firings, newest first: event, action, outcome",
            VIEWER,
            response=list[HookRun],
            query=(_limit(1000, 100),),
        ),
        Route(
            "POST",
            "/v1/hooks/{hook_id}/runs/{run_id}/retry",
            hooks.retry_run,
            "Run a hook's action again on a run's original event (flood control aside); "
            "the new run records retry_of",
            ADMIN,
            response=HookRetryAccepted,
            status=202,
        ),
        Route(
            "GET",
            "/v1/alerts",
            alerts.list_alerts,
            "Alerts not yet acknowledged (all=true: every alert)",
            VIEWER,
            response=list[Alert],
            query=(
                Query(
                    "all",
                    "every alert, acknowledged ones too",
                    {"type": "boolean", "default": False},
                ),
            ),
        ),
        Route(
            "POST",
            "/v1/alerts/{alert_id}/ack",
            alerts.ack_alert,
            "Acknowledge an alert",
            OPERATOR,
            response=Alert,
        ),
    ]


def _operations() -> list[Route]:
    """Who the caller is, tokens and the audit trail."""
    token_id = (("token_id", {"type": "string", "pattern": "^[0-9a-f]{12}$"}),)
    return [
        Route("GET", "/v1/whoami", tokens.whoami, "The caller's token: name, role, expiry",
              VIEWER, response=TokenInfo),
        Route("POST", "/v1/tokens", tokens.create_token,
              "Create a token (shown once in the answer); expires_in_s makes it expire",
              ADMIN, body=TokenRequest, response=TokenCreated, status=201),
        Route("GET", "/v1/tokens", tokens.list_tokens, "List tokens (never the secrets)",
              ADMIN, response=list[TokenInfo]),
        Route("DELETE", "/v1/tokens/{token_id}", tokens.revoke_token, "Revoke a token",
              ADMIN, status=204, path_schemas=token_id),
        Route("GET", "/v1/queues", queue.list_queues,
              "Each queue's control (accept, pause, drain, rate limit: who, when, why) and load",
              VIEWER, response=list[QueueView]),
        Route("PUT", "/v1/queues/{queue}", queue.put_queue,
              "Accept, pause or drain a queue, or limit its starts per minute, with a reason",
              ADMIN, body=QueueControlSpec, response=QueueView,
              path_schemas=(("queue", _QUEUE_SCHEMA),)),
        Route(
            "GET",
            "/v1/audit",
            audit.list_audit,
            "The audit trail, newest first: every write with its caller, request id and outcome",
            ADMIN,
            response=Page[AuditRecord],
            query=(
                Query("token_name", "only this token name's writes", _text(100)),
                Query("token_id", "only this token's writes", _text(64)),
                Query("action", "action, an fnmatch glob (jobs.*)", _text(100)),
                Query("target", "the object acted on (a job id, hook id, queue)", _text(300)),
                _limit(500, 50),
                Query(
                    "cursor",
                    "next_cursor of the previous page",
                    {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                ),
            ),
        ),
    ]  # fmt: skip


def routes() -> list[Route]:
    """Every endpoint of the API, one list."""
    return [*_jobs(), *_inventory(), *_events(), *_hooks(), *_operations()]
