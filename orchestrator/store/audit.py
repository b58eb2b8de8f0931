"""The audit trail on a Redis stream: appended by the api's audit middleware (and the CLI's
token commands), read newest first by `GET /v1/audit`.

Kept like jobs: each append trims what is older than the job retention, and the routers'
housekeeping caps the stream at the job cap exactly (`cap`, every minute: not on the
api's hot path). Trimming is approximate (`~`, whole stream nodes), so a record may outlive the
retention by a node's worth of records, never the other way round.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from redis.asyncio import Redis

from orchestrator.clock import now_ms
from orchestrator.errors import ValidationFailed
from orchestrator.store import keys
from schemas.audit import AuditRecord

MAX_SCAN = 2000  # records one page reads at most (a sparse filter returns a short page)
CURSOR_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}", re.ASCII)
_U64 = 2**64 - 1  # a stream id's parts


@dataclass(frozen=True)
class AuditFilter:
    token_name: str | None = None
    token_id: str | None = None
    action: str | None = None  # an fnmatch glob: jobs.*
    target: str | None = None

    def matches(self, r: AuditRecord) -> bool:
        return (
            (self.token_name is None or r.token_name == self.token_name)
            and (self.token_id is None or r.token_id == self.token_id)
            and (self.action is None or fnmatch.fnmatchcase(r.action, self.action))
            and (self.target is None or r.target == self.target)
        )


class AuditStore:
    def __init__(self, redis: Redis, *, retention_s: float, max_kept: int):
        self.redis = redis
        self.retention_ms = int(retention_s * 1000)
        self.max_kept = max_kept

    async def record(self, rec: AuditRecord) -> str:
        """Append `rec`; its stream id."""
        cutoff = max(0, now_ms() - self.retention_ms)
        entry_id = await self.redis.xadd(
            keys.AUDIT,
            {"doc": rec.model_dump_json(exclude={"id"})},
            minid=str(cutoff),
            approximate=True,
        )
        return str(entry_id)

    async def cap(self) -> int:
        """Keep at most `max_kept` records (the oldest go); how many went."""
        return int(await self.redis.xtrim(keys.AUDIT, maxlen=self.max_kept, approximate=False))

    async def page(
        self, flt: AuditFilter, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[AuditRecord], str | None]:
        """Newest first, after `cursor` (a record id, exclusive); (records, next cursor).
        At most MAX_SCAN records are read per call: the cursor then says where to go on."""
        out: list[AuditRecord] = []
        if cursor is not None:
            ms, _, seq = cursor.partition("-")
            if not CURSOR_RE.fullmatch(cursor) or max(int(ms), int(seq)) > _U64:
                raise ValidationFailed(
                    "bad cursor", details=[(["query", "cursor"], "not a next_cursor")]
                )
            if int(ms) == int(seq) == 0:
                return [], None  # nothing comes before the first possible id
        upper = "+" if cursor is None else f"({cursor}"
        scanned = 0
        while len(out) < limit and scanned < MAX_SCAN:
            batch = await self.redis.xrevrange(keys.AUDIT, upper, "-", count=max(limit, 100))
            if not batch:
                return out, None
            for entry_id, fields in batch:
                scanned += 1
                upper = f"({entry_id}"
                rec = AuditRecord.model_validate_json(fields["doc"])
                if flt.matches(rec):
                    out.append(rec.model_copy(update={"id": str(entry_id)}))
                    if len(out) == limit:
                        return out, str(entry_id)
        return out, (upper[1:] if upper != "+" else None)
