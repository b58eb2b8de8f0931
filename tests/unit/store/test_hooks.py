"""HookStore.update: which changes make a new webhook secret, and what a built-in hook allows."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import Conflict
from orchestrator.store import keys
from orchestrator.store.hooks import HookStore
from schemas.hooks import Hook, HookPatch, HookSpec
from tests.unit.conftest import Engine

WEBHOOK = {"kind": "webhook", "url": "https://hooks.example/a"}
SUBMIT = {"kind": "submit_job", "request": {"kind": "noop"}}


def make(engine: Engine, action: dict[str, Any], builtin: bool = False) -> tuple[Hook, str | None]:
    spec = HookSpec.model_validate({"name": "h", "match": {"types": ["t.*"]}, "action": action})
    return engine.run(HookStore(engine.redis).create(spec, builtin=builtin))  # type: ignore[no-any-return]


def update(engine: Engine, hook: Hook, **patch: Any) -> tuple[Hook, str | None]:
    store = HookStore(engine.redis)
    return engine.run(store.update(hook.id, HookPatch.model_validate(patch)))  # type: ignore[no-any-return]


def stored_secret(engine: Engine, hook: Hook) -> str | None:
    return engine.run(HookStore(engine.redis).secret(hook.id))  # type: ignore[no-any-return]


def test_rotate_secret_stores_a_new_secret_and_returns_it_once(engine: Engine) -> None:
    hook, first = make(engine, WEBHOOK)
    changed, second = update(engine, hook, rotate_secret=True, window_s=5)
    assert first and second and second != first
    assert stored_secret(engine, hook) == second
    assert changed.window_s == 5 and str(changed.action.url) == WEBHOOK["url"]  # type: ignore[union-attr]
    # a later change that does not ask keeps the secret, and returns none
    _, none = update(engine, hook, enabled=False)
    assert none is None and stored_secret(engine, hook) == second


def test_a_new_url_rotates_the_secret(engine: Engine) -> None:
    hook, first = make(engine, WEBHOOK)
    _, second = update(engine, hook, action={**WEBHOOK, "url": "https://elsewhere.example/b"})
    assert second and second != first and stored_secret(engine, hook) == second
    # the same URL again (other fields changed) keeps it
    _, none = update(
        engine, hook, action={**WEBHOOK, "url": "https://elsewhere.example/b", "retries": 1}
    )
    assert none is None and stored_secret(engine, hook) == second


def test_a_hook_that_stops_being_a_webhook_loses_its_secret(engine: Engine) -> None:
    hook, first = make(engine, WEBHOOK)
    _, none = update(engine, hook, action=SUBMIT)
    assert none is None and stored_secret(engine, hook) is None
    with pytest.raises(Conflict, match="no secret to rotate"):
        update(engine, hook, rotate_secret=True)
    # ...and becoming one again makes a new one
    _, again = update(engine, hook, action=WEBHOOK)
    assert again and again != first and stored_secret(engine, hook) == again


def test_a_webhook_without_a_stored_secret_gets_one_on_any_change(engine: Engine) -> None:
    hook, _ = make(engine, WEBHOOK)
    engine.run(engine.redis.delete(keys.hook_secret(hook.id)))
    _, made = update(engine, hook, enabled=False)
    assert made and stored_secret(engine, hook) == made


@pytest.mark.parametrize(
    "patch",
    [{"name": "renamed"}, {"action": SUBMIT}, {"match": {"types": ["x"]}}, {"rotate_secret": True}],
)
def test_a_builtin_hook_refuses_other_changes(engine: Engine, patch: dict[str, Any]) -> None:
    hook, _ = make(engine, SUBMIT, builtin=True)
    with pytest.raises(Conflict, match="built-in hook can only be enabled"):
        update(engine, hook, **patch)
    assert engine.run(HookStore(engine.redis).get(hook.id)) == hook


def test_a_builtin_hook_can_be_disabled_and_given_a_window(engine: Engine) -> None:
    hook, _ = make(engine, SUBMIT, builtin=True)
    changed, _ = update(engine, hook, enabled=False, window_s=30, rotate_secret=False)
    assert (changed.enabled, changed.window_s, changed.builtin) == (False, 30, True)
    assert engine.run(HookStore(engine.redis).get(hook.id)) == changed


def test_a_patch_refuses_nulls_and_unknown_fields() -> None:
    for body in ({"name": None}, {"action": None}, {"secret": "mine"}, {"builtin": False}):
        with pytest.raises(ValueError):
            HookPatch.model_validate(body)
