"""Tokens that expire, and the audit trail's paging and filters (on fakeredis and on a real
redis-server: expiry and stream trimming are Redis' own)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.api.audit import action_of
from orchestrator.api.routes import routes
from orchestrator.store import keys
from orchestrator.store.audit import AuditFilter, AuditStore
from orchestrator.store.tokens import TokenStore, token_sha
from schemas.api import Role, TokenInfo
from schemas.audit import AuditRecord
from tests.unit.conftest import MakeRedis, run


def test_a_token_stops_working_when_it_expires(backend: MakeRedis) -> None:
    async def main() -> None:
        r = backend()
        store = TokenStore(r)
        forever, _ = await store.create("ops", Role.OPERATOR)
        brief, info = await store.create("ci", Role.VIEWER, expires_in=timedelta(seconds=1))
        assert info.expires_at is not None
        assert await store.lookup(brief) == info
        assert await store.existing([info.id]) == {info.id}
        await asyncio.sleep(1.2)
        assert await store.lookup(brief) is None
        assert await store.existing([info.id]) == set()
        assert [i.name for i in await store.list()] == ["ops"]
        assert await r.hlen(keys.TOKENS) == 1  # its index entry went with the listing
        assert (await store.lookup(forever)) is not None
        await r.aclose()

    run(main())


def test_a_recorded_expiry_counts_even_if_the_key_outlives_it(backend: MakeRedis) -> None:
    # a key restored from an old AOF, or set by an older version without a Redis expiry
    async def main() -> None:
        r = backend()
        past = datetime.now(UTC) - timedelta(minutes=1)
        info = TokenInfo(id="abc", name="old", role=Role.ADMIN, created_at=past, expires_at=past)
        await r.set(keys.token(token_sha("vmo_x")), info.model_dump_json())
        await r.hset(keys.TOKENS, "abc", token_sha("vmo_x"))
        assert await TokenStore(r).lookup("vmo_x") is None
        assert await TokenStore(r).existing(["abc"]) == set()
        await r.aclose()

    run(main())


def test_tokens_must_live_at_least_a_second(backend: MakeRedis) -> None:
    with pytest.raises(ValueError):
        run(TokenStore(backend()).create("x", Role.VIEWER, expires_in=timedelta(0)))


def _rec(i: int, name: str, action: str) -> AuditRecord:
    return AuditRecord(
        at=datetime.now(UTC),
        token_id=f"t{name}",
        token_name=name,
        role="admin",
        request_id=f"r{i}",
        action=action,
        status=202,
        target=f"job-{i}",
    )


def test_the_audit_trail_pages_newest_first_with_filters(backend: MakeRedis) -> None:
    async def main() -> None:
        r = backend()
        audit = AuditStore(r, retention_s=3600, max_kept=1000)
        for i in range(7):
            await audit.record(
                _rec(i, "alice" if i % 2 else "bob", "jobs.abort" if i < 4 else "hooks.delete")
            )
        page, cursor = await audit.page(AuditFilter(), limit=3)
        assert [p.request_id for p in page] == ["r6", "r5", "r4"] and cursor == page[-1].id
        rest, end = await audit.page(AuditFilter(), limit=10, cursor=cursor)
        assert [p.request_id for p in rest] == ["r3", "r2", "r1", "r0"] and end is None
        alice_jobs, _ = await audit.page(AuditFilter(token_name="alice", action="jobs.*"))
        assert [p.request_id for p in alice_jobs] == ["r3", "r1"]
        by_target, _ = await audit.page(AuditFilter(target="job-5"))
        assert [p.token_name for p in by_target] == ["alice"]
        await r.aclose()

    run(main())


def test_every_write_route_has_a_readable_action() -> None:
    names = {action_of(r.method, r.path) for r in routes() if r.method != "GET"}
    assert {
        "jobs.create",
        "jobs.abort",
        "jobs.retry",
        "jobs.recover",
        "hooks.create",
        "hooks.update",
        "hooks.delete",
        "hooks.runs.retry",
        "tokens.create",
        "tokens.delete",
        "queues.put",
        "alerts.ack",
        "servers.fence",
    } <= names
    writes = [r for r in routes() if r.method != "GET"]
    assert len(names) == len(writes)  # no two write routes share an action


def test_the_audit_trail_is_capped_at_the_job_cap(backend: MakeRedis) -> None:
    async def main() -> None:
        r = backend()
        audit = AuditStore(r, retention_s=3600, max_kept=5)
        for i in range(8):
            await audit.record(_rec(i, "alice", "jobs.create"))
        assert await audit.cap() == 3
        page, _ = await audit.page(AuditFilter(), limit=10)
        assert [p.request_id for p in page] == ["r7", "r6", "r5", "r4", "r3"]
        await r.aclose()

    run(main())
