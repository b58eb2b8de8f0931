"""Repositories presented to a pool, per-disk repositories and vm.move, on the in-process
libvirt test driver (repo-u, the pool's own, and repo-x, presented to it)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from orchestrator.errors import ValidationFailed
from orchestrator.settings import Settings
from schemas.inventory import Repository, ServerPool
from schemas.jobs import Job, JobState
from tasks.testing import Engine
from tests.unit.conftest import importing_engine


def present_repo_x(e: Engine, conn: libvirt.virConnect) -> None:
    if "repo-x" not in conn.listStoragePools():
        conn.storagePoolCreateXML(
            "<pool type='dir'><name>repo-x</name><target><path>/repo-x</path></target></pool>", 0
        )
    sp = conn.storagePoolLookupByName("repo-x")
    for v in sp.listVolumes():
        sp.storageVolLookupByName(v).delete(0)

    def present(p: ServerPool) -> ServerPool:
        return p.model_copy(update={"repositories": [Repository(name="repo-x")]})

    e.run(e.inventory.update_pool("pool-u", present))


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Iterator[Engine]:
    e = importing_engine(settings)
    present_repo_x(e, conn)
    yield e
    e.close()


def run(engine: Engine, body: dict[str, Any]) -> Job:
    job = engine.submit(body)
    engine.drain()
    return engine.get(job.id)


def vols(conn: libvirt.virConnect, pool: str) -> set[str]:
    sp = conn.storagePoolLookupByName(pool)
    sp.refresh(0)
    return set(sp.listVolumes())


def disk_paths(conn: libvirt.virConnect, name: str) -> list[str]:
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [d.get("file", "") for d in root.findall("devices/disk/source")]


def create(engine: Engine, name: str, **extra: Any) -> Job:
    return run(engine, {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                        "name": name, "start": False, **extra})  # fmt: skip


def test_a_disk_goes_to_the_repository_asked_for_and_moves_between_repositories(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    job = create(fleet, "m1", disks=[{"repository": "repo-x"}])
    assert job.state == JobState.SUCCEEDED, job.error
    vm = fleet.run(fleet.inventory.vm("m1"))
    [d] = vm.disks
    assert d.repository == "repo-x" and d.volume in vols(conn, "repo-x")
    assert disk_paths(conn, "m1") == [d.path] and d.path.startswith("/repo-x/")
    # moved to the pool's own repository, and back
    moved = run(fleet, {"kind": "vm.move", "vm": "m1", "repository": "repo-u"})
    assert moved.state == JobState.SUCCEEDED, moved.error
    [d2] = fleet.run(fleet.inventory.vm("m1")).disks
    assert d2.repository is None and d2.path.startswith("/repo-u/")
    assert d.volume in vols(conn, "repo-u") and d.volume not in vols(conn, "repo-x")
    assert disk_paths(conn, "m1") == [d2.path]
    assert run(fleet, {"kind": "vm.move", "vm": "m1", "repository": "repo-x"}).state == "succeeded"
    assert fleet.run(fleet.inventory.vm("m1")).disks[0].repository == "repo-x"
    # a move to where it is changes nothing; the delete finds the disk where it is
    again = run(fleet, {"kind": "vm.move", "vm": "m1", "repository": "repo-x"})
    assert again.state == JobState.SUCCEEDED and again.steps[0].outputs["moves"] == []
    assert run(fleet, {"kind": "vm.delete", "vm": "m1"}).state == JobState.SUCCEEDED
    assert d.volume not in vols(conn, "repo-x")


def test_a_running_vm_is_not_moved(fleet: Engine, conn: libvirt.virConnect) -> None:
    assert create(fleet, "m2", start=True).state == JobState.SUCCEEDED
    job = run(fleet, {"kind": "vm.move", "vm": "m2", "repository": "repo-x"})
    assert job.state == JobState.FAILED and "running: stop it first" in job.error.message
    assert vols(conn, "repo-x") == set()


@pytest.mark.parametrize(("step", "where"), [("switch", "repo-u"), ("delete_sources", "repo-x")])
def test_a_failed_move_keeps_one_copy_where_the_record_says(
    settings: Settings, conn: libvirt.virConnect, step: str, where: str
) -> None:
    e = importing_engine(settings, chaos_fail_steps=[f"vm.move:{step}"])
    present_repo_x(e, conn)
    try:
        assert create(e, "m3").state == JobState.SUCCEEDED
        job = run(e, {"kind": "vm.move", "vm": "m3", "repository": "repo-x"})
        assert job.state == JobState.FAILED
        [d] = e.run(e.inventory.vm("m3")).disks
        # before the switch: undone, the VM where it was; after it: the VM is moved
        assert (d.repository or "repo-u") == where
        assert d.volume in vols(conn, where)
        assert disk_paths(conn, "m3") == [d.path] and d.path.startswith(f"/{where}/")
        if step == "switch":
            assert vols(conn, "repo-x") == set()
    finally:
        e.close()


def test_repositories_are_checked_at_submission(fleet: Engine) -> None:
    assert create(fleet, "m4").state == JobState.SUCCEEDED
    cases = [
        ({"kind": "vm.move", "vm": "m4", "repository": "nope"}, ["body", "repository"]),
        ({"kind": "vm.move", "vm": "m4", "repository": "repo-x", "disks": [3]},
         ["body", "disks", 0]),
        ({"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "m5",
          "disks": [{"repository": "nope"}]}, ["body", "disks", 0, "repository"]),
        ({"kind": "template.create_from_vm", "vm": "m4", "name": "tx",
          "disks": [{"repository": "repo-x"}]}, ["body", "disks", 0, "repository"]),
    ]  # fmt: skip
    for body, loc in cases:
        with pytest.raises(ValidationFailed) as e:
            fleet.submit(body)
        assert e.value.details[0][0] == loc, (body, e.value.details)
