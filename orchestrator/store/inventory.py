"""Inventory in Redis: pools, servers, templates (declared) and VMs (provisioned by jobs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from orchestrator.errors import Conflict, NotFound
from orchestrator.store import keys, lua
from orchestrator.store.fence import Fence, transaction
from orchestrator.store.macs import MacStore
from schemas.base import utcnow
from schemas.inventory import Inventory, Server, ServerPool, Template, Vm, VmState

M = TypeVar("M", bound=BaseModel)


class InventoryStore:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._set_state = redis.register_script(lua.SET_VM_STATE)

    async def load(self, inv: Inventory) -> None:
        """Declare pools, servers and templates (replacing ones of the same name)."""
        pipe = self.redis.pipeline(transaction=True)
        for p in inv.pools:
            pipe.set(keys.pool(p.name), p.model_dump_json())
            pipe.sadd(keys.POOLS, p.name)
        for s in inv.servers:
            pipe.set(keys.server(s.name), s.model_dump_json())
            pipe.sadd(keys.SERVERS, s.name)
        for t in inv.templates:
            pipe.set(keys.template(t.name), t.model_dump_json())
            pipe.sadd(keys.TEMPLATES, t.name)
        await pipe.execute()

    async def _all(self, set_key: str, key_of: type[M], make_key: object) -> list[M]:
        names = sorted(await self.redis.smembers(set_key))
        if not names:
            return []
        docs = await self.redis.mget([make_key(n) for n in names])  # type: ignore[operator]
        return [key_of.model_validate_json(d) for d in docs if d is not None]

    async def _one(self, key: str, model: type[M], what: str, name: str) -> M:
        doc = await self.redis.get(key)
        if doc is None:
            raise NotFound(f"{what} {name!r} not found")
        return model.model_validate_json(doc)

    async def pools(self) -> list[ServerPool]:
        return await self._all(keys.POOLS, ServerPool, keys.pool)

    async def servers(self) -> list[Server]:
        return await self._all(keys.SERVERS, Server, keys.server)

    async def templates(self) -> list[Template]:
        return await self._all(keys.TEMPLATES, Template, keys.template)

    async def pool(self, name: str) -> ServerPool:
        return await self._one(keys.pool(name), ServerPool, "pool", name)

    async def server(self, name: str) -> Server:
        return await self._one(keys.server(name), Server, "server", name)

    async def template(self, name: str) -> Template:
        return await self._one(keys.template(name), Template, "template", name)

    async def update_pool(
        self, name: str, change: Callable[[ServerPool], ServerPool]
    ) -> ServerPool:
        """Replace pool `name` by `change(pool)`, atomically against concurrent changes
        (optimistic: tried again if the pool changed meanwhile). NotFound when absent;
        whatever `change` raises leaves the pool as it was."""
        key = keys.pool(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    doc = await pipe.get(key)
                    if doc is None:
                        raise NotFound(f"pool {name!r} not found")
                    new = change(ServerPool.model_validate_json(doc))
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def add_server(self, server: Server) -> bool:
        """Record a new server (not yet a member of its pool); False when the name is taken."""
        return bool(
            await self.redis.set(keys.server(server.name), server.model_dump_json(), nx=True)
        )

    async def save_server(self, server: Server, *, fence: Fence | None = None) -> None:
        doc = server.model_dump_json()

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.server(server.name), doc)
            pipe.sadd(keys.SERVERS, server.name)

        await transaction(self.redis, fence, write)

    async def remove_server(self, name: str) -> None:
        """Forget a server: its record, its membership of its pool, what was recorded of it."""
        server = await self.server(name)

        def leave(p: ServerPool) -> ServerPool:
            return p.model_copy(update={"servers": [s for s in p.servers if s != name]})

        with contextlib.suppress(NotFound):
            await self.update_pool(server.pool, leave)
        await self.redis.delete(
            keys.server(name), keys.server_facts(name), keys.server_maintenance(name),
            keys.placements(name), keys.vms_on(name),
        )  # fmt: skip
        await self.redis.srem(keys.SERVERS, name)

    async def find_template(self, name: str) -> Template | None:
        try:
            return await self.template(name)
        except NotFound:
            return None

    async def reserve_template(self, tmpl: Template, *, fence: Fence | None = None) -> None:
        """Claim a template name for the job making it (`creating`, `created_by_job`):
        claiming it again for the same job is harmless; a name taken is a Conflict."""
        doc = tmpl.model_dump_json()

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.template(tmpl.name), doc, nx=True)
            pipe.sadd(keys.TEMPLATES, tmpl.name)

        if (await transaction(self.redis, fence, write))[0]:
            return
        held = await self.template(tmpl.name)
        if held.state == "creating" and held.created_by_job == tmpl.created_by_job:
            return
        raise Conflict(
            f"a template named {tmpl.name!r} exists",
            details=[(["body", "name"], "name is taken")],
        )

    async def save_template(self, tmpl: Template, *, fence: Fence | None = None) -> None:
        doc = tmpl.model_dump_json()

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.template(tmpl.name), doc)
            pipe.sadd(keys.TEMPLATES, tmpl.name)

        await transaction(self.redis, fence, write)

    async def release_template(self, name: str, job_id: str, *, fence: Fence | None = None) -> None:
        """Forget a template this job reserved and did not complete."""
        doc = await self.redis.get(keys.template(name))
        if doc is None:
            return
        held = Template.model_validate_json(doc)
        if held.state != "creating" or held.created_by_job != job_id:
            return

        def write(pipe: Pipeline) -> None:
            pipe.delete(keys.template(name))
            pipe.srem(keys.TEMPLATES, name)

        await transaction(self.redis, fence, write)

    # --- VMs ---------------------------------------------------------------------------
    # A VM's record (what was provisioned) and its observed state (what the hypervisor said
    # last) live in separate keys, so an observer never writes back a stale copy of a record.
    async def _with_state(self, docs: list[str | None], ids: list[str]) -> list[Vm]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(keys.vm_state(i))
            pipe.get(keys.vm_desired(i))
        replies = await pipe.execute()
        return [
            self._vm(doc, obs, desired)
            for doc, obs, desired in zip(docs, replies[::2], replies[1::2], strict=True)
            if doc is not None
        ]

    @staticmethod
    def _vm(doc: str, obs: dict[str, str], desired: str | None) -> Vm:
        """A VM record with its observed state (agent) and desired state (workflows)."""
        vm = Vm.model_validate_json(doc)
        if desired:
            vm = vm.model_copy(update={"desired_state": VmState(desired)})
        if obs:
            vm = vm.model_copy(
                update={
                    "state": VmState(obs["state"]),
                    "observed_at": datetime.fromisoformat(obs["observed_at"]),
                }
            )
        return vm

    async def vm(self, ref: str) -> Vm:
        """A VM by id or by name. One round trip by id (events and hooks name VMs by id) and
        for a ref that is neither (a domain vmorch does not manage): the record and states
        are read as if `ref` were an id, and the name index beside them."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.vm(ref))
        pipe.hgetall(keys.vm_state(ref))
        pipe.get(keys.vm_desired(ref))
        pipe.get(keys.vm_name(ref))
        doc, obs, desired, vm_id = await pipe.execute()
        if doc is not None:
            return self._vm(doc, obs, desired)
        doc = await self.redis.get(keys.vm(vm_id)) if vm_id else None
        found = await self._with_state([doc], [vm_id]) if vm_id and doc else []
        if not found:
            raise NotFound(f"vm {ref!r} not found")
        return found[0]

    async def find_vm(self, ref: str) -> Vm | None:
        try:
            return await self.vm(ref)
        except NotFound:
            return None

    async def vms_by_id(self, ids: list[str]) -> list[Vm]:
        """The VMs of `ids` that vmorch has records of (in one round trip for the records)."""
        return await self._many(ids)

    async def _many(self, ids: list[str]) -> list[Vm]:
        if not ids:
            return []
        return await self._with_state(await self.redis.mget([keys.vm(i) for i in ids]), ids)

    async def vms(self, limit: int = 100, after: str | None = None) -> tuple[list[Vm], str | None]:
        """A page of VMs, oldest first, and the cursor of the next page (None at the end).
        The cursor is the last VM id of the page: ids are unique, so no VM is skipped."""
        start = 0
        if after is not None:
            rank = await self.redis.zrank(keys.VMS, after)
            if rank is None:
                raise NotFound(f"cursor {after!r} is not a VM id (deleted?)")
            start = rank + 1
        ids = list(await self.redis.zrange(keys.VMS, start, start + limit))
        page, more = ids[:limit], len(ids) > limit
        return await self._many(page), (page[-1] if more else None)

    async def select_vms(
        self, refs: list[str] | None, labels: dict[str, str] | None, pool: str | None
    ) -> tuple[list[Vm], list[str]]:
        """The VMs that match all of: named (by id or name) in `refs`, carrying `labels`,
        in `pool`; and the refs that name no VM."""
        if refs is not None:
            found = [(r, await self.find_vm(r)) for r in refs]
            missing = [r for r, v in found if v is None]
            vms = list({v.id: v for _, v in found if v is not None}.values())
        else:
            missing, vms = [], await self._many(list(await self.redis.zrange(keys.VMS, 0, -1)))
        if labels:
            vms = [v for v in vms if all(v.labels.get(k) == val for k, val in labels.items())]
        if pool is not None:
            vms = [v for v in vms if v.pool == pool]
        return vms, missing

    async def vms_on(self, server: str) -> list[Vm]:
        """Every VM placed on `server` (however many: HA covers all of them)."""
        ids = sorted(await self.redis.smembers(keys.vms_on(server)))
        return [v for v in await self._many(ids) if v.server == server]

    async def save_vm(self, vm: Vm, *, fence: Fence | None = None) -> None:
        old = await self.redis.get(keys.vm(vm.id))
        before = Vm.model_validate_json(old).server if old else None

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.vm(vm.id), vm.model_dump_json())
            pipe.set(keys.vm_name(vm.name), vm.id)
            pipe.zadd(keys.VMS, {vm.id: utcnow().timestamp()}, nx=True)
            if before and before != vm.server:
                pipe.srem(keys.vms_on(before), vm.id)
            if vm.server:
                pipe.sadd(keys.vms_on(vm.server), vm.id)

        await transaction(self.redis, fence, write)

    async def set_vm_state(self, vm_id: str, state: VmState, server: str | None = None) -> None:
        """Record what was observed on the hypervisor. VMs vmorch does not know are ignored,
        and a server's report (`server` given) only counts for a VM placed on that server."""
        fields = {"state": state.value, "observed_at": utcnow().isoformat()}
        await self._set_state(
            keys=[keys.vm(vm_id), keys.vm_state(vm_id)],
            args=[server or "", *(x for kv in fields.items() for x in kv)],
        )

    async def add_vm_states(
        self, pipe: Pipeline, states: Mapping[str, VmState], server: str | None = None
    ) -> None:
        """Add `set_vm_state` of each VM to `pipe` (the caller executes it): one round trip
        for a batch of observations."""
        at = utcnow().isoformat()
        for vm_id, state in states.items():
            await self._set_state(
                keys=[keys.vm(vm_id), keys.vm_state(vm_id)],
                args=[server or "", "state", state.value, "observed_at", at],
                client=pipe,
            )

    async def set_desired(self, vm_id: str, state: VmState, *, fence: Fence | None = None) -> None:
        """Record what a job asked the VM to be (running or stopped)."""
        await transaction(
            self.redis, fence, lambda pipe: pipe.set(keys.vm_desired(vm_id), state.value)
        )

    async def delete_vm(self, vm_id: str, *, fence: Fence | None = None) -> None:
        """Forget the VM: its record, name, indexes, states and guest channel's records,
        and release its MACs."""
        doc = await self.redis.get(keys.vm(vm_id))
        vm = Vm.model_validate_json(doc) if doc is not None else None

        def write(pipe: Pipeline) -> None:
            if vm is not None:
                pipe.delete(keys.vm_name(vm.name))
                if vm.server:
                    pipe.srem(keys.vms_on(vm.server), vm_id)
                MacStore.queue_release(pipe, vm_id, [n.mac for n in vm.nics])  # its MACs
            pipe.delete(keys.vm(vm_id), keys.vm_state(vm_id), keys.vm_desired(vm_id))
            pipe.delete(keys.guest(vm_id), keys.guest_keys(vm_id), keys.guest_outbox(vm_id))
            pipe.zrem(keys.VMS, vm_id)

        await transaction(self.redis, fence, write)
