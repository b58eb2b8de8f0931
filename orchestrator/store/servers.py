"""Server bookkeeping beside the inventory: maintenance, the migrations running now, the
facts agents read, and the VMs placed on a server and not yet running there.

Maintenance is a mark that placement and migration pre-checks read (a server in maintenance
takes no new VM); entering and leaving it are events (`server.maintenance`,
`server.activated`). Migration slots bound how many migrations run at once per pool and
how many leave one server: a migration holds a slot (its job id) from before libvirt starts
until its migrate step ends; a slot whose job has ended is freed by the next look, so a
worker that died holding one does not hold it for ever. A placement holds a new VM's
memory on its server until its job ends (not counted while the VM runs: libvirt counts
it then), so that concurrent creates never overcommit a server.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.clock import now_ms
from orchestrator.store import keys
from orchestrator.store.events import entry_fields, make_event
from orchestrator.store.fence import Fence, transaction
from schemas import event_types as et
from schemas.inventory import ServerFacts
from schemas.jobs import JobState

# KEYS: the pool's slots (hash job -> source server). ARGV: job, source, max pool, max server
_TAKE_SLOT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, ''} end
local all = redis.call('HGETALL', KEYS[1])
local total, here = 0, 0
for i = 1, #all, 2 do
  total = total + 1
  if all[i + 1] == ARGV[2] then here = here + 1 end
end
if total >= tonumber(ARGV[3]) then return {0, 'pool'} end
if here >= tonumber(ARGV[4]) then return {0, 'server'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, ''}
"""

# KEYS: the server's placements (hash vm -> "MiB job"). ARGV: vm, its entry, MiB it needs,
# MiB free (what the server's active domains leave), then the ids of its active domains.
_PLACE = """
local partners = tonumber(ARGV[5])
for i = 6, 5 + partners do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
     or redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
    return {-1, ARGV[i]}
  end
end
local active = {}
for i = 6 + partners, #ARGV do active[ARGV[i]] = true end
local held = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] and not active[all[i]] then
    held = held + tonumber(string.match(all[i + 1], '^(%d+)'))
  end
end
if held + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return {0, held} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, held}
"""

PLACEMENT_GRACE_S = 60.0  # a placement outlives its job this long (see _free_placements)
_ENDED = {s.value for s in JobState if s.terminal}


@dataclass(frozen=True)
class SlotAnswer:
    taken: bool
    limit: str = ""  # "pool" or "server": the limit that is reached
    holders: dict[str, str] | None = None  # job id -> source server, when not taken


class ServerStates:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._take = redis.register_script(_TAKE_SLOT)
        self._place = redis.register_script(_PLACE)

    # -- maintenance -------------------------------------------------------------------------
    async def enter_maintenance(
        self, server: str, info: dict[str, Any], source: str, *, fence: Fence | None = None
    ) -> None:
        """Mark the server in maintenance (kept if it is already: the first mark's `since`
        stays) and publish `server.maintenance`."""
        event = make_event(et.SERVER_MAINTENANCE, source, server, {"server": server, **info})

        def write(pipe: Pipeline) -> None:
            pipe.set(
                keys.server_maintenance(server), json.dumps({**info, "since": now_ms()}), nx=True
            )
            pipe.xadd(keys.EVENTS, entry_fields(event))

        await transaction(self.redis, fence, write)

    async def leave_maintenance(
        self, server: str, info: dict[str, Any], source: str, *, fence: Fence | None = None
    ) -> bool:
        """End the server's maintenance; False if it was not in maintenance."""
        event = make_event(et.SERVER_ACTIVATED, source, server, {"server": server, **info})
        if not await self.redis.exists(keys.server_maintenance(server)):
            return False

        def write(pipe: Pipeline) -> None:
            pipe.delete(keys.server_maintenance(server))
            pipe.xadd(keys.EVENTS, entry_fields(event))

        await transaction(self.redis, fence, write)
        return True

    async def maintenance(self, server: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.server_maintenance(server))
        return None if raw is None else dict(json.loads(raw))

    async def in_maintenance(self, servers: list[str]) -> set[str]:
        """Which of `servers` are in maintenance (one round trip)."""
        if not servers:
            return set()
        flags = await self.redis.mget([keys.server_maintenance(s) for s in servers])
        return {s for s, f in zip(servers, flags, strict=True) if f is not None}

    # -- facts -------------------------------------------------------------------------------
    async def record_facts(self, server: str, facts: ServerFacts, ttl_s: float) -> None:
        """Keep what the agent read (for `ttl_s`: facts of a server no agent watches go)."""
        await self.redis.set(
            keys.server_facts(server), facts.model_dump_json(), ex=max(1, int(ttl_s))
        )

    async def facts(self, servers: list[str]) -> dict[str, ServerFacts]:
        """The recorded facts of those of `servers` that have any (one round trip)."""
        if not servers:
            return {}
        raws = await self.redis.mget([keys.server_facts(s) for s in servers])
        return {
            s: ServerFacts.model_validate_json(r)
            for s, r in zip(servers, raws, strict=True)
            if r is not None
        }

    # -- migration slots ---------------------------------------------------------------------
    async def take_migration_slot(
        self, pool: str, job_id: str, source: str, *, per_pool: int, per_server: int
    ) -> SlotAnswer:
        """Take a slot for `job_id`'s migration out of `source` (again: already held), if
        fewer than `per_pool` migrations run in the pool and fewer than `per_server` leave
        `source`. Slots of jobs that have ended are freed first."""
        key = keys.migration_slots(pool)
        await self._free_ended(key)
        taken, limit = await self._take(keys=[key], args=[job_id, source, per_pool, per_server])
        if int(taken):
            return SlotAnswer(True)
        return SlotAnswer(False, str(limit), dict(await self.redis.hgetall(key)))

    async def release_migration_slot(self, pool: str, job_id: str) -> None:
        await self.redis.hdel(keys.migration_slots(pool), job_id)

    async def migrations(self, pool: str) -> dict[str, str]:
        """The migrations holding a slot in the pool: job id -> source server."""
        key = keys.migration_slots(pool)
        await self._free_ended(key)
        return dict(await self.redis.hgetall(key))

    async def _free_ended(self, key: str) -> None:
        """Drop the entries of hash `key` (fields: job ids) whose job has ended."""
        holders = list(await self.redis.hkeys(key))
        if not holders:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in holders:
            pipe.hget(keys.job(job_id), "state")
        states = await pipe.execute()
        ended = [j for j, st in zip(holders, states, strict=True) if st is None or st in _ENDED]
        if ended:
            await self.redis.hdel(key, *ended)

    # -- placements --------------------------------------------------------------------------
    async def place(
        self,
        server: str,
        vm_id: str,
        job_id: str,
        need_mib: int,
        free_mib: int,
        active: set[str],
        partners: Collection[str] = (),
    ) -> tuple[bool, int, str | None]:
        """Reserve `need_mib` on `server` for `vm_id` (placed by `job_id`), if the server's
        free memory (`free_mib`, what its active domains leave) less what other placements
        not yet running there (not in `active`) hold still has room, and none of
        `partners` (VM ids it must not share a server with: anti-affinity) is placed or
        defined there; atomically, so that concurrent creates never overcommit it nor put
        two partners together. Returns (placed, MiB the others hold, the partner there).
        A placement lasts until its job ends; while its VM runs it is not counted (libvirt
        counts the VM). It is not removed when the VM starts: another placement may be
        judging from a list of active domains taken before that start."""
        ok, res = await self._place(
            keys=[keys.placements(server), keys.vms_on(server)],
            args=[vm_id, f"{need_mib} {job_id}", need_mib, free_mib, len(partners),
                  *sorted(partners), *sorted(active)],
        )  # fmt: skip
        if int(ok) == -1:
            return False, 0, str(res)
        return bool(int(ok)), int(res), None

    async def vms_there(self, server: str, vm_ids: set[str]) -> set[str]:
        """Those of `vm_ids` placed or defined on `server` (a quick look; `place` checks
        again atomically)."""
        pipe = self.redis.pipeline(transaction=False)
        order = sorted(vm_ids)
        for v in order:
            pipe.hexists(keys.placements(server), v)
            pipe.sismember(keys.vms_on(server), v)
        res = await pipe.execute()
        return {v for i, v in enumerate(order) if res[2 * i] or res[2 * i + 1]}

    async def placed(self, server: str, active: set[str]) -> int:
        """MiB held on `server` by placements whose VM does not run there yet."""
        entries = await self.redis.hgetall(keys.placements(server))
        return sum(int(v.split(" ", 1)[0]) for vm, v in entries.items() if vm not in active)

    async def sweep(self, servers: list[str], pools: list[str]) -> None:
        """Free the placements and migration slots of jobs that have ended (each look does
        it for its own server or pool; this is for those nobody looks at)."""
        for server in servers:
            await self._free_placements(keys.placements(server))
        for pool in pools:
            await self._free_ended(keys.migration_slots(pool))

    async def _free_placements(self, key: str) -> None:
        """Drop the placements of jobs gone, or ended more than PLACEMENT_GRACE_S ago. Not
        at once: a placement being judged may hold a list of active domains taken before
        that job's VM started, and must still count it (a stopped or failed VM's placement
        is released by its own job)."""
        entries = dict(await self.redis.hgetall(key))
        if not entries:
            return
        jobs = {vm: v.split(" ", 1)[1] for vm, v in entries.items()}
        pipe = self.redis.pipeline(transaction=False)
        for job_id in jobs.values():
            pipe.hget(keys.job(job_id), "state")
            pipe.zscore(keys.JOBS_ENDED, job_id)
        replies = await pipe.execute()
        cutoff = now_ms() - PLACEMENT_GRACE_S * 1000
        old = [
            vm
            for (vm, _j), state, ended in zip(
                jobs.items(), replies[::2], replies[1::2], strict=True
            )
            if state is None or (state in _ENDED and ended is not None and ended < cutoff)
        ]
        if old:
            await self.redis.hdel(key, *old)

    async def unplace(self, server: str, vm_id: str) -> None:
        await self.redis.hdel(keys.placements(server), vm_id)
