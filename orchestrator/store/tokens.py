"""API bearer tokens with roles. Only a token's SHA-256 is stored; the token is shown once."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection

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

    async def create(self, name: str, role: Role) -> tuple[str, TokenInfo]:
        """Create a token; returns (the secret token, its stored info)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(id=uuid.uuid4().hex[:12], name=name, role=role, created_at=utcnow())
        sha = token_sha(token)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.token(sha), info.model_dump_json())
        pipe.hset(keys.TOKENS, info.id, sha)
        await pipe.execute()
        return token, info

    async def lookup(self, token: str) -> TokenInfo | None:
        doc = await self.redis.get(keys.token(token_sha(token)))
        return None if doc is None else TokenInfo.model_validate_json(doc)

    async def list(self) -> list[TokenInfo]:
        shas = await self.redis.hvals(keys.TOKENS)
        docs = await self.redis.mget([keys.token(s) for s in shas]) if shas else []
        return [TokenInfo.model_validate_json(d) for d in docs if d is not None]

    async def existing(self, token_ids: Collection[str]) -> set[str]:
        """Which of `token_ids` still exist (not revoked), in one round trip however many:
        open event streams are re-checked with this every few seconds."""
        ids = list(token_ids)
        if not ids:
            return set()
        shas = await self.redis.hmget(keys.TOKENS, ids)
        return {i for i, sha in zip(ids, shas, strict=True) if sha is not None}

    async def revoke(self, token_id: str) -> None:
        sha = await self.redis.hget(keys.TOKENS, token_id)
        if sha is None:
            raise NotFound(f"token {token_id!r} not found")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.token(sha))
        pipe.hdel(keys.TOKENS, token_id)
        await pipe.execute()
