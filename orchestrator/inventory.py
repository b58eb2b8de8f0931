"""Inventory in Redis: pools, servers, templates (declared) and VMs (provisioned by jobs)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

from orchestrator import keys
from orchestrator.errors import NotFound
from schemas.base import utcnow
from schemas.inventory import Inventory, Server, ServerPool, Template, Vm, VmState

M = TypeVar("M", bound=BaseModel)


class InventoryStore:
    def __init__(self, redis: Redis):
        self.redis = redis

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

    # --- VMs ---------------------------------------------------------------------------
    async def vm(self, ref: str) -> Vm:
        """A VM by id or by name."""
        doc = await self.redis.get(keys.vm(ref))
        if doc is None:
            vm_id = await self.redis.get(keys.vm_name(ref))
            doc = await self.redis.get(keys.vm(vm_id)) if vm_id else None
        if doc is None:
            raise NotFound(f"vm {ref!r} not found")
        return Vm.model_validate_json(doc)

    async def find_vm(self, ref: str) -> Vm | None:
        try:
            return await self.vm(ref)
        except NotFound:
            return None

    async def vms(self, limit: int = 1000) -> list[Vm]:
        ids = await self.redis.zrange(keys.VMS, 0, limit - 1)
        if not ids:
            return []
        docs = await self.redis.mget([keys.vm(i) for i in ids])
        return [Vm.model_validate_json(d) for d in docs if d is not None]

    async def save_vm(self, vm: Vm) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.vm(vm.id), vm.model_dump_json())
        pipe.set(keys.vm_name(vm.name), vm.id)
        pipe.zadd(keys.VMS, {vm.id: utcnow().timestamp()}, nx=True)
        await pipe.execute()

    async def set_vm_state(self, vm_id: str, state: VmState, server: str | None = None) -> None:
        """Record what was observed on the hypervisor. Unknown VMs are ignored."""
        doc = await self.redis.get(keys.vm(vm_id))
        if doc is None:
            return
        vm = Vm.model_validate_json(doc)
        update: dict[str, object] = {"state": state, "observed_at": utcnow()}
        if server is not None:
            update["server"] = server
        await self.redis.set(keys.vm(vm_id), vm.model_copy(update=update).model_dump_json())

    async def delete_vm(self, vm_id: str) -> None:
        doc = await self.redis.get(keys.vm(vm_id))
        pipe = self.redis.pipeline(transaction=True)
        if doc is not None:
            vm = Vm.model_validate_json(doc)
            pipe.delete(keys.vm_name(vm.name))
        pipe.delete(keys.vm(vm_id))
        pipe.zrem(keys.VMS, vm_id)
        await pipe.execute()
