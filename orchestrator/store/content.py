"""What repositories hold beside templates: imported ISOs and virtual disks.

One hash per repository (`keys.repo_content`), file name -> JSON of RepositoryContent. An
import reserves its name first (`importing`, with its job id), so two imports never write
the same file; the record turns `ready` once the file is complete and checked, and goes
if the import fails.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.errors import Conflict
from orchestrator.store import keys
from orchestrator.store.fence import Fence, transaction
from schemas.inventory import RepositoryContent


class ContentStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def get(self, repository: str, name: str) -> RepositoryContent | None:
        doc = await self.redis.hget(keys.repo_content(repository), name)
        return None if doc is None else RepositoryContent.model_validate_json(doc)

    async def list(self, repository: str) -> list[RepositoryContent]:
        docs = await self.redis.hgetall(keys.repo_content(repository))
        return sorted(
            (RepositoryContent.model_validate_json(d) for d in docs.values()),
            key=lambda c: c.name,
        )

    async def reserve(self, content: RepositoryContent, *, fence: Fence | None = None) -> None:
        """Claim `content.name` in its repository for `content.job_id`'s import. Claiming it
        again for the same job is harmless (a step run twice); another's is a Conflict."""
        key = keys.repo_content(content.repository)
        res = await transaction(
            self.redis, fence, lambda p: p.hsetnx(key, content.name, content.model_dump_json())
        )
        if res[0]:
            return
        held = await self.get(content.repository, content.name)
        if held is not None and held.job_id == content.job_id and held.state == "importing":
            return
        by = f" (imported by job {held.job_id})" if held is not None and held.job_id else ""
        raise Conflict(
            f"repository {content.repository} already holds {content.name!r}{by}",
            details=[(["body", "name"], "a file of this name exists in the repository")],
        )

    async def save(self, content: RepositoryContent, *, fence: Fence | None = None) -> None:
        key = keys.repo_content(content.repository)
        await transaction(
            self.redis, fence, lambda p: p.hset(key, content.name, content.model_dump_json())
        )

    async def release(
        self, repository: str, name: str, job_id: str, *, fence: Fence | None = None
    ) -> None:
        """Forget a name this job reserved and did not complete (a failed import)."""
        held = await self.get(repository, name)
        if held is None or held.job_id != job_id or held.state != "importing":
            return

        def write(pipe: Pipeline) -> None:
            pipe.hdel(keys.repo_content(repository), name)

        await transaction(self.redis, fence, write)
