"""The per-server agent: keeps each VM's observed state in the inventory.

This first version polls the server's domains; the event-driven agent (libvirt domain
events, reconnect and replay) replaces the poll loop in the next release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import libvirt
import redis.asyncio as aredis

from orchestrator.errors import VmorchError
from orchestrator.inventory import InventoryStore
from orchestrator.settings import Settings
from schemas.inventory import VmState
from workers.hypervisor import Hypervisor

log = logging.getLogger("vmorch.agent")


async def run_agent(settings: Settings, server: str, stop: asyncio.Event) -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    r = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
    inv = InventoryStore(r)
    srv = await inv.server(server)
    hv = Hypervisor(srv.uri, retry_s=settings.libvirt_retry_s)
    last: dict[str, VmState] = {}
    try:
        while not stop.is_set():
            try:
                states = await asyncio.to_thread(hv.domain_states)
                for uuid, (_name, state) in states.items():
                    if last.get(uuid) != state:
                        await inv.set_vm_state(uuid, state, server=server)
                        last[uuid] = state
                for uuid in set(last) - set(states):
                    del last[uuid]
            except VmorchError as e:
                log.warning("server=%s poll failed: %s", server, e.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.agent_poll_interval_s)
    finally:
        hv.close()
        await r.aclose()
