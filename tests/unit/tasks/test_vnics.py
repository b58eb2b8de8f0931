"""vm.add_vnic and vm.remove_vnic on the in-process test driver: the definition follows
(the test driver changes no device live: the qemu tier does), MACs are claimed at
submission and released by a removal, an abort of a queued add and a failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.settings import Settings
from schemas.jobs import Job, JobState
from tasks.testing import Engine
from tests.unit.conftest import importing_engine


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Iterator[Engine]:
    e = importing_engine(settings)
    yield e
    e.close()


def run(engine: Engine, body: dict[str, Any]) -> Job:
    job = engine.submit(body)
    engine.drain()
    return engine.get(job.id)


def macs_of(conn: libvirt.virConnect, name: str) -> list[str]:
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return [m.get("address", "") for m in ET.fromstring(xml).findall("devices/interface/mac")]


def registry(engine: Engine) -> dict[str, str]:
    return dict(engine.run(engine.redis.hgetall("vmorch:macs")))


def test_a_vnic_is_added_and_removed_and_its_mac_released(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    made = run(
        fleet,
        {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "n1",
         "start": False, "vnics": [{"network": "default"}]},
    )  # fmt: skip
    assert made.state == JobState.SUCCEEDED
    vm_id = made.links.vm_id
    added = run(fleet, {"kind": "vm.add_vnic", "vm": "n1", "network": "default"})
    assert added.state == JobState.SUCCEEDED, added.error
    mac = added.request.mac
    assert mac and len(macs_of(conn, "n1")) == 2 and mac in macs_of(conn, "n1")
    assert [n.mac for n in fleet.run(fleet.inventory.vm("n1")).nics][-1] == mac
    assert registry(fleet)[mac.replace(":", "")] == vm_id
    # a MAC in use (by this VM or another) is refused, naming the field
    other = run(fleet, {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                        "name": "n9", "start": False})  # fmt: skip
    assert other.state == JobState.SUCCEEDED
    for vm in ("n1", "n9"):
        with pytest.raises(Conflict) as e:
            fleet.submit({"kind": "vm.add_vnic", "vm": vm, "network": "default", "mac": mac})
        assert e.value.details[0][0] == ["body", "mac"]
    removed = run(fleet, {"kind": "vm.remove_vnic", "vm": "n1", "mac": mac})
    assert removed.state == JobState.SUCCEEDED, removed.error
    assert mac not in macs_of(conn, "n1") and len(macs_of(conn, "n1")) == 1
    assert mac.replace(":", "") not in registry(fleet)
    with pytest.raises(ValidationFailed) as e2:
        fleet.submit({"kind": "vm.remove_vnic", "vm": "n1", "mac": mac})
    assert e2.value.details[0][0] == ["body", "mac"]
    with pytest.raises(ValidationFailed) as e3:
        fleet.submit({"kind": "vm.add_vnic", "vm": "n1", "network": "nope"})
    assert e3.value.details[0][0] == ["body", "network"]


def test_an_aborted_or_failed_add_gives_its_mac_back(
    settings: Settings, conn: libvirt.virConnect
) -> None:
    e = importing_engine(settings, chaos_fail_steps=["vm.add_vnic:add_vnic"])
    try:
        made = run(e, {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                       "name": "n2", "start": False})  # fmt: skip
        assert made.state == JobState.SUCCEEDED and registry(e) == {}
        failed = run(e, {"kind": "vm.add_vnic", "vm": "n2", "network": "default"})
        assert failed.state == JobState.FAILED and registry(e) == {}
        assert macs_of(conn, "n2") == []
        queued = e.submit({"kind": "vm.add_vnic", "vm": "n2", "network": "default"})
        assert len(registry(e)) == 1
        e.run(e.submitter.abort(queued.id))
        assert e.get(queued.id).state == JobState.ABORTED and registry(e) == {}
    finally:
        e.close()
