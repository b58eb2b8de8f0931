"""Hooks in Redis: definitions, secrets, flood control and the record of each firing."""

from __future__ import annotations

import secrets
import uuid

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.errors import Conflict, NotFound
from orchestrator.metrics import HOOK_RUNS
from orchestrator.store import keys, lua
from schemas.base import utcnow
from schemas.hooks import Hook, HookPatch, HookRun, HookSpec, WebhookAction

RUNS_KEPT = 1000  # firings kept per hook
BUILTIN_CHANGEABLE = frozenset({"enabled", "window_s"})  # all a built-in hook lets change


class HookStore:
    def __init__(self, redis: Redis, *, firing_ttl_s: int = 86400):
        self.redis = redis
        self.firing_ttl_s = firing_ttl_s
        self._renew = redis.register_script(lua.RENEW_FIRING)
        self._release = redis.register_script(lua.RELEASE_FIRING)

    async def create(
        self, spec: HookSpec, *, hook_id: str | None = None, builtin: bool = False
    ) -> tuple[Hook, str | None]:
        """Store a hook; a webhook hook gets a new secret, returned once."""
        hook = Hook(
            **spec.model_dump(),
            id=hook_id or uuid.uuid4().hex[:12],
            created_at=utcnow(),
            builtin=builtin,
        )
        secret = secrets.token_urlsafe(32) if isinstance(spec.action, WebhookAction) else None
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.hook(hook.id), hook.model_dump_json())
        pipe.sadd(keys.HOOKS, hook.id)
        pipe.set(keys.HOOKS_VERSION, uuid.uuid4().hex)
        if secret:
            pipe.set(keys.hook_secret(hook.id), secret)
        await pipe.execute()
        return hook, secret

    async def get(self, hook_id: str) -> Hook:
        doc = await self.redis.get(keys.hook(hook_id))
        if doc is None:
            raise NotFound(f"hook {hook_id!r} not found")
        hook = Hook.model_validate_json(doc)
        suppressed = int(await self.redis.get(keys.hook_suppressed(hook_id)) or 0)
        return hook.model_copy(update={"suppressed": suppressed})

    async def all(self) -> list[Hook]:
        ids = sorted(await self.redis.smembers(keys.HOOKS))
        return [await self.get(i) for i in ids]

    async def update(self, hook_id: str, patch: HookPatch) -> tuple[Hook, str | None]:
        """Change the fields `patch` gives; returns the new webhook secret if one was made.

        A webhook hook gets a new secret when asked (`rotate_secret`), when its URL changes
        (the receiver at the old URL knows the old secret) and when it has none; a hook that
        is no webhook any more loses its secret. A built-in hook can only be enabled,
        disabled or given a window: the router relies on its match and action."""
        old = await self.get(hook_id)
        changes = patch.changes()
        if old.builtin and (set(changes) - BUILTIN_CHANGEABLE or patch.rotate_secret):
            raise Conflict("a built-in hook can only be enabled, disabled or given a window")
        hook = Hook.model_validate(
            {
                **old.model_dump(include=set(HookSpec.model_fields)),
                **patch.model_dump(include=set(changes)),
                "id": hook_id,
                "created_at": old.created_at,
                "builtin": old.builtin,
            }
        )
        secret = None
        if isinstance(hook.action, WebhookAction):
            moved = not isinstance(old.action, WebhookAction) or old.action.url != hook.action.url
            if patch.rotate_secret or moved or not await self.secret(hook_id):
                secret = secrets.token_urlsafe(32)
        elif patch.rotate_secret:
            raise Conflict(f"hook {hook_id!r} is no webhook: it has no secret to rotate")
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.hook(hook_id), hook.model_dump_json())
        pipe.set(keys.HOOKS_VERSION, uuid.uuid4().hex)
        if secret:
            pipe.set(keys.hook_secret(hook_id), secret)
        elif not isinstance(hook.action, WebhookAction):
            pipe.delete(keys.hook_secret(hook_id))
        await pipe.execute()
        return hook.model_copy(update={"suppressed": old.suppressed}), secret

    async def delete(self, hook_id: str) -> None:
        if (await self.get(hook_id)).builtin:
            raise Conflict("a built-in hook cannot be deleted; disable it instead")
        pipe = self.redis.pipeline(transaction=True)
        for k in (
            keys.hook(hook_id),
            keys.hook_secret(hook_id),
            keys.hook_runs(hook_id),
            keys.hook_suppressed(hook_id),
        ):
            pipe.delete(k)
        pipe.srem(keys.HOOKS, hook_id)
        pipe.set(keys.HOOKS_VERSION, uuid.uuid4().hex)
        await pipe.execute()

    async def exists(self, hook_id: str) -> bool:
        return bool(await self.redis.exists(keys.hook(hook_id)))

    async def version(self) -> str:
        """Changes whenever a hook is created, changed or deleted."""
        return str(await self.redis.get(keys.HOOKS_VERSION) or "0")

    @staticmethod
    def queue_version(pipe: Pipeline) -> None:
        """Queue the read of `version()` on `pipe` (its reply: the version, or None for "0")."""
        pipe.get(keys.HOOKS_VERSION)

    async def secret(self, hook_id: str) -> str | None:
        value: str | None = await self.redis.get(keys.hook_secret(hook_id))
        return value

    async def claim_firing(self, hook: Hook, firing: str, lease_ms: int) -> str:
        """Claim this (hook, event, subject) for `lease_ms`: "claimed" (act now), "done"
        (acted on already) or "busy" (another router is acting; if it died, the lease
        lapses and the firing is claimed again: at least once)."""
        key = keys.hook_fired(hook.id, firing)
        if await self.redis.set(key, "busy", nx=True, px=lease_ms):
            return "claimed"
        return "done" if await self.redis.get(key) == "done" else "busy"

    async def renew_firing(self, hook: Hook, firing: str, lease_ms: int) -> bool:
        """Keep a firing this router is acting on; False when it is no longer ours."""
        key = keys.hook_fired(hook.id, firing)
        return bool(await self._renew(keys=[key], args=[lease_ms]))

    async def release_firing(self, hook: Hook, firing: str) -> None:
        """Give a claimed firing back untouched (it will be claimed and acted on again)."""
        key = keys.hook_fired(hook.id, firing)
        await self._release(keys=[key])

    async def settle(self, run: HookRun, hook: Hook, firing: str) -> None:
        """Record what a firing did and mark it done, in one round trip: a firing is acted
        on once (another router finds it `done`), and its run is kept for `runs()`."""
        HOOK_RUNS.labels(run.action, run.outcome).inc()
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(keys.hook_runs(run.hook_id), run.model_dump_json())
        pipe.ltrim(keys.hook_runs(run.hook_id), 0, RUNS_KEPT - 1)
        pipe.set(keys.hook_fired(hook.id, firing), "done", ex=self.firing_ttl_s)
        await pipe.execute()

    async def within_window(self, hook: Hook, subject: str, firing: str) -> bool:
        """Flood control: True (and counted) when the hook fired for `subject` recently for
        another firing than `firing` (a firing retried after a router died is not a flood)."""
        if hook.window_s <= 0:
            return False
        key = keys.hook_flood(hook.id, subject)
        fresh = await self.redis.set(key, firing, nx=True, px=int(hook.window_s * 1000))
        if fresh or await self.redis.get(key) == firing:
            return False
        await self.redis.incr(keys.hook_suppressed(hook.id))
        return True

    async def run(self, hook_id: str, run_id: str) -> HookRun | None:
        """One of the runs kept for the hook, by id."""
        if not run_id:
            return None
        for doc in await self.redis.lrange(keys.hook_runs(hook_id), 0, -1):
            if f'"id":"{run_id}"' in doc:  # cheap test before parsing
                run = HookRun.model_validate_json(doc)
                if run.id == run_id:
                    return run
        return None

    async def runs(self, hook_id: str, limit: int = 100) -> list[HookRun]:
        await self.get(hook_id)
        docs = await self.redis.lrange(keys.hook_runs(hook_id), 0, limit - 1)
        return [HookRun.model_validate_json(d) for d in docs]
