"""The qemu tier: a server that comes back drops its copy of a VM that vmorch placed on
another server while it did not answer (review C1: it must never run twice)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import redis.asyncio as aredis

from orchestrator.lab.lab import Lab, LabSpec
from orchestrator.lab.redis_server import RedisServer
from orchestrator.store.inventory import InventoryStore
from schemas.inventory import Inventory, Vm, VmState
from tests.integration.conftest import ENGINE_ENV, Proc, events, wait_until
from tests.integration.test_qemu_lab import qemu_pids
from workers.hypervisor.adapter import Hypervisor
from workers.hypervisor.xml import DomainSpec

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(180)]


@pytest.fixture
def qemu_lab(tmp_path: Path) -> Iterator[tuple[Lab, Inventory, str]]:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    rs = RedisServer(tmp_path / "redis", appendonly=False, require_password=True)
    url = rs.start()
    lab = Lab(LabSpec(pools=1, servers_per_pool=2, kind="qemu"))
    try:
        inv = lab.start()
        yield lab, inv, url
    finally:
        lab.remove()
        rs.stop()


def save(url: str, *, inv: Inventory | None = None, vm: Vm | None = None) -> None:
    async def go() -> None:
        r = aredis.Redis.from_url(url, decode_responses=True)
        store = InventoryStore(r)
        if inv is not None:
            await store.load(inv)
        if vm is not None:
            await store.save_vm(vm)
        await r.aclose()

    asyncio.run(go())


def test_a_returning_server_removes_its_copy_of_a_vm_placed_elsewhere(
    qemu_lab: tuple[Lab, Inventory, str], tmp_path: Path
) -> None:
    lab, inv, url = qemu_lab
    a1 = next(s for s in inv.servers if s.name == "srv-a1")
    save(url, inv=inv)
    # given: a VM running on srv-a1, and srv-a1's agent
    vm_id = str(uuid.uuid4())
    hv = Hypervisor(a1.uri)
    hv.define(DomainSpec(uuid=vm_id, name="stale1", vcpus=1, memory_mib=96))
    hv.start(vm_id)
    hv.close()
    vm = Vm(id=vm_id, name="stale1", pool="pool-a", server="srv-a1", state=VmState.RUNNING)
    save(url, vm=vm)
    env = {**os.environ, "VMORCH_REDIS_URL": url, **ENGINE_ENV}
    agent = Proc(["agent", "--server", "srv-a1"], env, tmp_path / "agent.log")
    try:
        wait_until(lambda: events(url, "server.up", "srv-a1"), 30, "the agent to connect")
        [guest] = qemu_pids(vm_id)
        # when: srv-a1's libvirtd dies (its guest runs on), the VM is placed on srv-a2
        # meanwhile (as HA does once the guest is fenced), and srv-a1 comes back
        lab.kill_server("srv-a1")
        wait_until(lambda: events(url, "server.down", "srv-a1"), 30, "server.down")
        assert guest in qemu_pids(vm_id)
        save(url, vm=vm.model_copy(update={"server": "srv-a2"}))
        lab.restart_server("srv-a1")
        # then: before its reports count again, srv-a1 drops the stale copy, and says so
        [removed] = wait_until(
            lambda: events(url, "vm.stale_copy_removed", vm_id), 30, "the stale copy removed"
        )
        assert removed["data"]["server"] == "srv-a1" and removed["data"]["placed_on"] == "srv-a2"
        assert removed["data"]["state_before"] == "running"
        wait_until(lambda: guest not in qemu_pids(vm_id), 10, "the stale guest to end")
        conn = libvirt.open(a1.uri)
        try:
            assert vm_id not in [d.UUIDString() for d in conn.listAllDomains()]
        finally:
            conn.close()
        # and only then was the server up again: its second server.up comes after the
        # removal on the stream (waited for: the agent compares states in between)
        wait_until(lambda: len(events(url, "server.up", "srv-a1")) == 2, 30, "server.up again")
        order = [
            e["type"] for e in events(url)
            if e["type"] in ("server.up", "vm.stale_copy_removed")
            and e.get("subject") in ("srv-a1", vm_id)
        ]  # fmt: skip
        assert order == ["server.up", "vm.stale_copy_removed", "server.up"], order
    finally:
        agent.stop()
