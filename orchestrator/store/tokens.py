"""API bearer tokens with roles. Only a token's SHA-256 is stored; the token is shown once.

A token that expires is stored with a Redis expiry as well, so it goes by itself; its
entry in the id index is dropped the next time the tokens are listed or checked."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection
from datetime import timedelta

from redis.asyncio import Redis

from orchestrator.errors import NotFound
from orchestrator.store import keys
from schemas.api import Role, TokenInfo
from schemas.base import utcnow

TOKEN_PREFIX = "vmo_"


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def create(
        self, name: str, role: Role, *, expires_in: timedelta | None = None
    ) -> tuple[str, TokenInfo]:
        """Create a token; returns (the secret token, its stored info)."""
        if expires_in is not None and expires_in.total_seconds() < 1:
            raise ValueError("a token must live at least one second")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        info = TokenInfo(
            id=uuid.uuid4().hex[:12],
            name=name,
            role=role,
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
        )
        sha = token_sha(token)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.token(sha), info.model_dump_json(), px=_ms(expires_in))
        pipe.hset(keys.TOKENS, info.id, sha)
        await pipe.execute()
        return token, info

    async def lookup(self, token: str) -> TokenInfo | None:
        """The token's info; None for an unknown, revoked or expired token (Redis' expiry
        and the recorded `expires_at` both count: whichever comes first)."""
        doc = await self.redis.get(keys.token(token_sha(token)))
        info = None if doc is None else TokenInfo.model_validate_json(doc)
        return None if info is None or info.expired(utcnow()) else info

    async def list(self) -> list[TokenInfo]:
        index = await self.redis.hgetall(keys.TOKENS)
        ids, shas = list(index), list(index.values())
        docs = await self.redis.mget([keys.token(s) for s in shas]) if shas else []
        gone = [i for i, d in zip(ids, docs, strict=True) if d is None]
        if gone:
            await self.redis.hdel(keys.TOKENS, *gone)
        now = utcnow()
        infos = (TokenInfo.model_validate_json(d) for d in docs if d is not None)
        return [i for i in infos if not i.expired(now)]

    async def existing(self, token_ids: Collection[str]) -> set[str]:
        """Which of `token_ids` still work (not revoked, not expired), in two round trips
        however many: open event streams are re-checked with this every few seconds."""
        ids = list(token_ids)
        if not ids:
            return set()
        shas = await self.redis.hmget(keys.TOKENS, ids)
        known = [(i, sha) for i, sha in zip(ids, shas, strict=True) if sha is not None]
        if not known:
            return set()
        docs = await self.redis.mget([keys.token(sha) for _, sha in known])
        now = utcnow()
        return {
            i
            for (i, _), d in zip(known, docs, strict=True)
            if d is not None and not TokenInfo.model_validate_json(d).expired(now)
        }

    async def revoke(self, token_id: str) -> None:
        sha = await self.redis.hget(keys.TOKENS, token_id)
        if sha is None:
            raise NotFound(f"token {token_id!r} not found")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.token(sha))
        pipe.hdel(keys.TOKENS, token_id)
        await pipe.execute()


def _ms(delta: timedelta | None) -> int | None:
    return None if delta is None else int(delta.total_seconds() * 1000)
