"""Webhook secrets over HTTP: rotation, a new URL's new secret, and what PATCH accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from orchestrator.router.actions.webhook import verify
from orchestrator.store import keys
from orchestrator.store.events import make_event
from tests.integration.conftest import Api, Proc, WebhookReceiver, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def receivers() -> Iterator[Callable[[], WebhookReceiver]]:
    yield WebhookReceiver


def webhook(name: str, rx: WebhookReceiver, types: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"types": types, "unexpected_only": False},
        "window_s": 0,
        "action": {"kind": "webhook", "url": f"http://127.0.0.1:{rx.port}/hook", "retries": 1},
    }


def signed_with(secret: str, delivery: tuple[dict[str, str], bytes]) -> bool:
    headers, body = delivery
    return verify(
        secret.encode(), int(headers["X-Vmorch-Timestamp"]), body, headers["X-Vmorch-Signature"]
    )


def test_a_rotated_secret_signs_the_next_delivery(
    api: Api, worker: Proc, router: Proc, receivers: Callable[[], WebhookReceiver]
) -> None:
    # given a webhook hook on job.succeeded, and its secret rotated
    rx = receivers()
    status, created = api.request("POST", "/v1/hooks", webhook("done", rx, ["job.succeeded"]))
    assert status == 201, created
    hook_id, old = created["hook"]["id"], created["secret"]
    status, rotated = api.request("PATCH", f"/v1/hooks/{hook_id}", {"rotate_secret": True})
    assert status == 200, rotated
    new = rotated["secret"]
    assert new and new != old
    assert rotated["hook"]["action"] == created["hook"]["action"]
    # the secret is shown once: reading the hook again does not show it
    assert "secret" not in api.request("GET", f"/v1/hooks/{hook_id}")[1]
    # when a job succeeds
    job = api.run({"kind": "noop", "steps": 1})
    assert job["state"] == "succeeded", job
    # then its event is delivered signed with the new secret, not with the old one
    [delivery] = wait_until(
        lambda: [d for d in rx.got if job["id"].encode() in d[1]], 20, "the delivery"
    )
    assert signed_with(new, delivery)
    assert not signed_with(old, delivery)
    delivered = wait_until(lambda: api.hook_runs(hook_id), 10)
    assert delivered[0]["outcome"] == "delivered", delivered


def test_a_new_url_gets_a_new_secret(
    api: Api, router: Proc, redis_url: str, receivers: Callable[[], WebhookReceiver]
) -> None:
    # given a webhook hook whose receiver knows its secret
    before, after = receivers(), receivers()
    status, created = api.request("POST", "/v1/hooks", webhook("moving", before, ["test.*"]))
    assert status == 201, created
    hook_id, old = created["hook"]["id"], created["secret"]
    # when the hook moves to another receiver (and nothing asks for a rotation)
    moved_action = {**webhook("moving", after, ["test.*"])["action"]}
    status, moved = api.request("PATCH", f"/v1/hooks/{hook_id}", {"action": moved_action})
    assert status == 200, moved
    new = moved["secret"]
    assert new and new != old
    # then deliveries go to the new receiver, signed with the new secret only
    event = make_event("test.moved", "vmorch://test", "s1", {})
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.xadd(keys.EVENTS, {"e": event.model_dump_json()})
    r.close()
    [delivery] = wait_until(lambda: after.got, 10, "the delivery to the new receiver")
    assert event.id.encode() in delivery[1]
    assert signed_with(new, delivery) and not signed_with(old, delivery)
    assert before.got == []
    # and a change that keeps the URL keeps the secret, and shows none
    status, renamed = api.request("PATCH", f"/v1/hooks/{hook_id}", {"name": "moved"})
    assert (status, renamed["secret"], renamed["hook"]["name"]) == (200, None, "moved")


def test_patch_body_rules(api: Api, receivers: Callable[[], WebhookReceiver]) -> None:
    rx = receivers()
    status, created = api.request("POST", "/v1/hooks", webhook("rules", rx, ["test.*"]))
    assert status == 201, created
    hook_id = created["hook"]["id"]
    for body, field in (({"name": None}, "name"), ({"secret": "mine"}, "secret")):
        status, err = api.request("PATCH", f"/v1/hooks/{hook_id}", body)
        assert (status, err["error"]["code"]) == (422, "validation_error"), err
        assert ["body", field] in [d["loc"] for d in err["error"]["details"]], err
    # a built-in hook: enabled and window only, over HTTP as in the store
    for body in ({"name": "mine"}, {"rotate_secret": True}):
        status, err = api.request("PATCH", "/v1/hooks/builtin-ha", body)
        assert (status, err["error"]["code"]) == (409, "conflict"), err
    status, ha = api.request("PATCH", "/v1/hooks/builtin-ha", {"window_s": 10})
    assert (status, ha["hook"]["window_s"], ha["secret"]) == (200, 10, None)
    # a hook that is no webhook has no secret to rotate
    status, job_hook = api.request(
        "POST",
        "/v1/hooks",
        {"name": "j", "match": {"types": ["x"]}, "action": {"kind": "submit_job", "request": {}}},
    )
    assert status == 201, job_hook
    path = f"/v1/hooks/{job_hook['hook']['id']}"
    status, err = api.request("PATCH", path, {"rotate_secret": True})
    assert (status, err["error"]["code"]) == (409, "conflict"), err


def test_openapi_shows_the_patch_body(api: Api) -> None:
    status, spec = api.request("GET", "/openapi.json", token="")
    assert status == 200
    body = spec["paths"]["/v1/hooks/{hook_id}"]["patch"]["requestBody"]
    model = body["content"]["application/json"]["schema"]
    if "$ref" in model:
        model = spec["components"]["schemas"][model["$ref"].rsplit("/", 1)[1]]
    assert {"name", "match", "action", "window_s", "enabled", "rotate_secret"} == set(
        model["properties"]
    )
    assert model.get("additionalProperties") is False and "required" not in model
