"""Operators on the real stack (redis-server, api, router, Celery workers): the audit trail,
tokens that expire, recovery verbs (retry, recover, hook run retry) and queue controls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from schemas.api import Role
from tests.integration.conftest import Api, Proc, make_token, wait_until

NOOP_QUEUE = "vmorch.noop"


def _as(api: Api, redis_url: str, role: Role, name: str) -> Api:
    return Api(api.url, make_token(redis_url, role, name))


def test_every_write_is_audited_with_its_caller_request_id_and_reason(
    api: Api, redis_url: str, worker: Proc
) -> None:
    ops = _as(api, redis_url, Role.OPERATOR, "carol")
    viewer = _as(api, redis_url, Role.VIEWER, "victor")
    # an admin submits a job with its own request id; carol aborts one with a reason
    job = api.submit({"kind": "noop", "steps": 1}, headers={"X-Request-Id": "req-1"})
    slow = api.submit({"kind": "noop", "steps": 3, "step_delay_ms": 3000})
    status, _ = ops.request("POST", f"/v1/jobs/{slow['id']}/abort", {"reason": "wrong VM"})
    assert status == 202
    # a viewer's attempt is refused, and recorded too
    status, _ = viewer.request("POST", f"/v1/jobs/{job['id']}/abort", {"reason": "try"})
    assert status == 403
    # reads are not audited, and the audit is for admins only
    assert viewer.request("GET", "/v1/audit")[0] == 403
    records = api.audit()
    assert [r["action"] for r in records[:3]] == ["jobs.abort", "jobs.abort", "jobs.create"]
    refused, aborted = records[0], records[1]
    assert (refused["token_name"], refused["status"], refused["role"]) == ("victor", 403, "viewer")
    assert (aborted["token_name"], aborted["reason"], aborted["target"]) == (
        "carol",
        "wrong VM",
        slow["id"],
    )
    submitted = next(r for r in records if r["request_id"] == "req-1")
    assert submitted["target"] == job["id"] and submitted["status"] == 202
    assert all(r["method"] != "GET" for r in records)
    # filters and the response header
    assert [r["token_name"] for r in api.audit(token_name="carol")] == ["carol"]
    resp_status, _ = api.request("GET", "/v1/whoami")
    assert resp_status == 200


def test_a_token_made_over_the_api_expires(api: Api) -> None:
    status, made = api.request(
        "POST", "/v1/tokens", {"name": "ci-run", "role": "viewer", "expires_in_s": 2}
    )
    assert status == 201 and made["token"].startswith("vmo_") and made["expires_at"]
    brief = Api(api.url, made["token"])
    status, me = brief.request("GET", "/v1/whoami")
    assert status == 200 and (me["name"], me["role"]) == ("ci-run", "viewer")
    assert "token" not in me
    time.sleep(2.3)
    status, body = brief.request("GET", "/v1/whoami")
    assert status == 401 and "expired" in body["error"]["message"]
    listed = api.request("GET", "/v1/tokens")[1]
    assert "ci-run" not in [t["name"] for t in listed]
    audited = api.audit(action="tokens.*")
    assert audited[0]["action"] == "tokens.create" and audited[0]["target"] == made["id"]
    status, bad = api.request("POST", "/v1/tokens", {"name": "x", "role": "root"})
    assert status == 422 and bad["error"]["details"][0]["loc"] == ["body", "role"]


def test_a_failed_job_is_retried_from_its_failed_step_once_the_fault_is_gone(
    api: Api, redis_url: str, start_worker: Callable[..., Proc]
) -> None:
    faulty = start_worker(chaos_fail_steps='["noop:noop-2"]')
    failed = api.run({"kind": "noop", "steps": 3})
    assert failed["state"] == "failed" and "noop-2" in failed["error"]["message"]
    faulty.stop()
    start_worker()
    status, retry = api.request("POST", f"/v1/jobs/{failed['id']}/retry", {"reason": "fixed"})
    assert status == 202 and retry["links"]["retry_of"] == failed["id"]
    done = api.wait(retry["id"])
    assert done["state"] == "succeeded"
    old = api.job(failed["id"])
    assert old["state"] == "failed" and old["retried_as"] == retry["id"]
    assert [s["state"] for s in old["steps"]] == ["undone", "failed", "skipped"]
    # asked again: the same job; a succeeded job is not retried
    again = api.request("POST", f"/v1/jobs/{failed['id']}/retry")
    assert again[0] == 202 and again[1]["id"] == retry["id"]
    status, body = api.request("POST", f"/v1/jobs/{retry['id']}/retry")
    assert status == 409 and "succeeded" in body["error"]["message"]


def test_a_stuck_job_is_marked_by_an_admin_only_with_a_reason(
    api: Api, redis_url: str, worker: Proc
) -> None:
    job = api.submit({"kind": "noop", "steps": 1, "wait_for": "test.never", "wait_timeout_s": 600})
    api.wait(job["id"], {"waiting"})
    ops = _as(api, redis_url, Role.OPERATOR, "olga")
    body = {"state": "succeeded", "reason": "the guest was configured by hand"}
    assert ops.request("POST", f"/v1/jobs/{job['id']}/recover", body)[0] == 403
    status, bad = api.request("POST", f"/v1/jobs/{job['id']}/recover", {"state": "succeeded"})
    assert status == 422 and bad["error"]["details"][0]["loc"] == ["body", "reason"]
    status, ended = api.request("POST", f"/v1/jobs/{job['id']}/recover", body)
    assert status == 200 and ended["state"] == "succeeded"
    assert ended["recovery"]["reason"] == body["reason"] and ended["recovery"]["by"] == "admin"
    assert ended["recovery"]["from_state"] == "waiting"
    assert api.audit(action="jobs.recover")[0]["reason"] == body["reason"]


def test_pause_holds_queued_jobs_and_drain_refuses_new_ones(api: Api, worker: Proc) -> None:
    url = f"/v1/queues/{NOOP_QUEUE}"
    status, view = api.request("PUT", url, {"mode": "pause", "reason": "storage maintenance"})
    assert status == 200 and view["mode"] == "pause" and view["changed_by"] == "admin"
    held = api.submit({"kind": "noop", "steps": 1})
    time.sleep(2)  # a worker saw it and held it back
    assert api.job(held["id"])["state"] == "queued"
    queues = {q["queue"]: q for q in api.request("GET", "/v1/queues")[1]}
    assert queues[NOOP_QUEUE]["held"] == 1 and queues[NOOP_QUEUE]["reason"] == "storage maintenance"
    # drain: the held job is let go and finishes; a new one is refused with a clear body
    status, view = api.request("PUT", url, {"mode": "drain", "reason": "upgrade"})
    assert status == 200
    assert api.wait(held["id"])["state"] == "succeeded"
    status, refused = api.request("POST", "/v1/jobs", {"kind": "noop", "steps": 1})
    assert status == 503 and refused["error"]["code"] == "queue_draining"
    assert (
        NOOP_QUEUE in refused["error"]["message"]
        and "0 job(s) still pending" in (refused["error"]["message"])
    )
    status, _ = api.request("PUT", url, {"mode": "accept", "reason": "done"})
    assert api.run({"kind": "noop", "steps": 1})["state"] == "succeeded"
    changes = api.audit(action="queues.put")
    assert [c["reason"] for c in changes] == ["done", "upgrade", "storage maintenance"]
    # bad input names the field; an unknown queue is a 404
    status, bad = api.request("PUT", url, {"mode": "stop", "reason": "x"})
    assert status == 422 and bad["error"]["details"][0]["loc"] == ["body", "mode"]
    assert api.request("PUT", "/v1/queues/vmorch.nope", {"reason": "x"})[0] == 404


def test_a_suppressed_hook_run_is_retried_with_its_original_event(
    api: Api, redis_url: str, worker: Proc
) -> None:
    import redis

    from orchestrator.store import keys
    from orchestrator.store.events import make_event

    status, created = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "noisy",
            "match": {"types": ["test.flood"]},
            "window_s": 60,
            "action": {"kind": "submit_job", "request": {"kind": "noop", "steps": 1}},
        },
    )
    assert status == 201
    hook_id = created["hook"]["id"]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    events = [make_event("test.flood", "t://", "s1", {"n": n}) for n in range(2)]
    for e in events:
        r.xadd(keys.EVENTS, {"e": e.model_dump_json()})
    r.close()

    def runs() -> list[dict[str, Any]]:
        return api.hook_runs(hook_id)

    got = wait_until(lambda: len(runs()) == 2 and runs(), 10)
    suppressed = next(x for x in got if x["outcome"] == "suppressed")
    status, accepted = api.request(
        "POST", f"/v1/hooks/{hook_id}/runs/{suppressed['id']}/retry", {"reason": "flood was me"}
    )
    assert status == 202 and accepted["run_id"] == suppressed["id"]
    retried = wait_until(lambda: next((x for x in runs() if x.get("retry_of")), None), 10)
    assert retried["outcome"] == "submitted" and retried["event_id"] == suppressed["event_id"]
    assert retried["retried_by"] == "admin"
    assert api.wait(retried["job_id"])["state"] == "succeeded"
    # a run that submitted a job, retried, submits another (not the first one again)
    submitted = next(x for x in got if x["outcome"] == "submitted")
    status, _ = api.request("POST", f"/v1/hooks/{hook_id}/runs/{submitted['id']}/retry")
    assert status == 202
    again = wait_until(
        lambda: next((x for x in runs() if x.get("retry_of") == submitted["id"]), None), 10
    )
    assert again["outcome"] == "submitted" and again["job_id"] != submitted["job_id"]
    assert api.request("POST", f"/v1/hooks/{hook_id}/runs/nope/retry")[0] == 404
