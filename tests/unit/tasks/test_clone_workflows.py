"""Clone types, vm.clone and the template jobs on the in-process libvirt test driver (its
volumes keep the XML libvirt would write: format, allocation, backing store). What the
files hold is checked with qemu-img on the qemu lab (integration)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from pydantic import ValidationError as PydanticError

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.settings import Settings
from schemas.jobs import Job, JobState
from tasks.testing import Engine
from tests.sources import FileServer
from tests.unit.conftest import importing_engine


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Iterator[Engine]:
    e = importing_engine(settings)
    yield e
    e.close()


def run(engine: Engine, request: dict[str, Any]) -> Job:
    job = engine.submit(request)
    engine.drain()
    return engine.get(job.id)


def vol(conn: libvirt.virConnect, name: str) -> ET.Element:
    return ET.fromstring(
        conn.storagePoolLookupByName("repo-u").storageVolLookupByName(name).XMLDesc(0)
    )


def volumes(conn: libvirt.virConnect) -> set[str]:
    return set(conn.storagePoolLookupByName("repo-u").listVolumes())


def create(engine: Engine, name: str, **extra: Any) -> Job:
    return run(
        engine,
        {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": name,
         "vnics": [{"network": "default"}], **extra},
    )  # fmt: skip


def test_each_clone_type_makes_the_volume_it_names(fleet: Engine, conn: libvirt.virConnect) -> None:
    # a template of two disks on the same base volume: one thin clone, one full copy
    fleet.run(
        fleet.inventory.save_template(
            fleet.run(fleet.inventory.template("t1")).model_copy(
                update={
                    "name": "t2",
                    "disks": [*fleet.run(fleet.inventory.template("t1")).disks] * 2,
                }
            )
        )
    )
    job = create(fleet, "c1", template="t2", disks=[{"clone_type": "thin"}, {"clone_type": "full"}])
    assert job.state == JobState.SUCCEEDED, job.error
    vm = fleet.run(fleet.inventory.vm("c1"))
    thin, full = vm.disks
    assert (thin.format, thin.backing, full.format) == ("qcow2", "base.img", "raw")
    base = conn.storagePoolLookupByName("repo-u").storageVolLookupByName("base.img").path()
    t = vol(conn, thin.volume)
    assert t.find("target/format").get("type") == "qcow2"
    assert t.findtext("backingStore/path") == base
    f = vol(conn, full.volume)
    assert f.findtext("allocation") == f.findtext("capacity")  # every byte allocated
    # the domain reads the thin clone as qcow2
    dom = ET.fromstring(conn.lookupByName("c1").XMLDesc(0))
    drivers = {d.find("target").get("dev"): d.find("driver") for d in dom.findall("devices/disk")}
    assert drivers["vda"].get("type") == "qcow2" and drivers["vdb"] is None
    # progress in bytes
    step = next(s for s in job.steps if s.name == "clone_disks")
    assert step.detail["bytes_done"] == step.detail["bytes_total"] == 2 * 1048576


def test_a_clone_of_a_stopped_vm_is_a_new_vm_and_the_source_is_unchanged(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    src = create(fleet, "src1", start=False)
    assert src.state == JobState.SUCCEEDED, src.error
    before = conn.lookupByName("src1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    job = run(fleet, {"kind": "vm.clone", "vm": "src1", "name": "copy1", "memory_mib": 1024})
    assert job.state == JobState.SUCCEEDED, job.error
    a, b = fleet.run(fleet.inventory.vm("src1")), fleet.run(fleet.inventory.vm("copy1"))
    assert a.id != b.id and b.memory_mib == 1024 and b.vcpus == a.vcpus
    assert [n.network for n in b.nics] == ["default"]
    assert a.nics[0].mac != b.nics[0].mac
    assert {d.volume for d in a.disks}.isdisjoint(d.volume for d in b.disks)
    assert b.disks[0].volume in volumes(conn)
    assert conn.lookupByName("src1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert not conn.lookupByName("copy1").isActive()  # start: false by default
    dom = ET.fromstring(conn.lookupByName("copy1").XMLDesc(0))
    assert dom.find("devices/interface/mac").get("address") == b.nics[0].mac


def test_a_running_vm_is_not_cloned_and_nothing_is_left(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    assert create(fleet, "run1").state == JobState.SUCCEEDED
    with pytest.raises(ValidationFailed) as refused:
        fleet.submit({"kind": "vm.clone", "vm": "run1", "name": "copy2"})
    assert refused.value.details == [(["body", "vm"], "vm run1 is running: stop it first")]
    # the inventory thought it stopped (no agent here), libvirt says it runs: the step refuses
    vm = fleet.run(fleet.inventory.vm("run1"))
    fleet.run(fleet.inventory.set_vm_state(vm.id, vm.state.STOPPED))
    job = run(fleet, {"kind": "vm.clone", "vm": "run1", "name": "copy2"})
    assert job.state == JobState.FAILED and "running before the copy" in job.error.message
    assert fleet.run(fleet.inventory.find_vm("copy2")) is None
    assert not any(v.startswith("copy2-") for v in volumes(conn))
    assert "copy2" not in [d.name() for d in conn.listAllDomains()]


def test_templates_from_a_vm_by_clone_and_by_import_make_vms(
    fleet: Engine, conn: libvirt.virConnect, tmp_path: Path
) -> None:
    assert create(fleet, "gold", start=False).state == JobState.SUCCEEDED
    job = run(fleet, {"kind": "template.create_from_vm", "vm": "gold", "name": "gold-t"})
    assert job.state == JobState.SUCCEEDED, job.error
    t = fleet.run(fleet.inventory.template("gold-t"))
    assert t.state == "ready" and [d.volume for d in t.disks] == ["gold-t-disk0"]
    assert t.disks[0].capacity_bytes == 1048576 and t.created_by_job == job.id
    job = run(fleet, {"kind": "template.clone", "template": "gold-t", "name": "gold-t2"})
    assert job.state == JobState.SUCCEEDED, job.error
    assert {"gold-t-disk0", "gold-t2-disk0"} <= volumes(conn)
    # a qcow2 image fetched over HTTP, made by the real qemu-img
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(www / "img.qcow2"), "8M"], check=True
    )
    with FileServer(www) as http:
        job = run(
            fleet,
            {"kind": "template.import", "repository": "repo-u", "name": "imported",
             "url": http.url("img.qcow2"), "vcpus": 2, "memory_mib": 256},
        )  # fmt: skip
    assert job.state == JobState.SUCCEEDED, job.error
    imp = fleet.run(fleet.inventory.template("imported"))
    assert (imp.vcpus, imp.memory_mib, imp.disks[0].format) == (2, 256, "qcow2")
    # each makes VMs
    for name in ("gold-t", "gold-t2", "imported"):
        made = create(fleet, f"from-{name}", template=name)
        assert made.state == JobState.SUCCEEDED, (name, made.error)
    # (a clone keeps the format libvirt reports for its source; the test driver keeps no
    # data, so it reports raw for the upload: the qemu tier checks qcow2 through qemu-img)


def test_template_jobs_are_refused_at_submission_with_the_field_named(fleet: Engine) -> None:
    assert create(fleet, "g2", start=False).state == JobState.SUCCEEDED
    with pytest.raises(Conflict) as e:
        fleet.submit({"kind": "template.create_from_vm", "vm": "g2", "name": "t1"})
    assert e.value.details[0][0] == ["body", "name"]
    with pytest.raises(NotFound) as e2:
        fleet.submit({"kind": "template.create_from_vm", "vm": "nope", "name": "x"})
    assert e2.value.details[0][0] == ["body", "vm"]
    with pytest.raises(ValidationFailed) as e3:
        fleet.submit({"kind": "template.clone", "template": "nope", "name": "x"})
    assert e3.value.details[0][0] == ["body", "template"]
    with pytest.raises(ValidationFailed) as e4:
        fleet.submit({"kind": "template.import", "repository": "repo-u", "name": "x",
                      "url": "http://192.168.1.1/a.img"})  # fmt: skip
    assert e4.value.details[0][0] == ["body", "url"]
    with pytest.raises(PydanticError, match="clone_type"):
        fleet.submit(
            {"kind": "vm.clone", "vm": "g2", "name": "x", "disks": [{"clone_type": "thin"}]}
        )


@pytest.mark.parametrize(
    ("kind_step", "request_body"),
    [
        ("vm.clone:define", {"kind": "vm.clone", "vm": "base-vm", "name": "cl"}),
        ("template.create_from_vm:record",
         {"kind": "template.create_from_vm", "vm": "base-vm", "name": "cl"}),
        ("template.clone:record", {"kind": "template.clone", "template": "t1", "name": "cl"}),
        ("vm.create_from_template:start",
         {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "cl",
          "disks": [{"clone_type": "thin"}]}),
    ],
)  # fmt: skip
def test_a_failure_at_the_last_step_leaves_nothing_behind(
    settings: Settings,
    conn: libvirt.virConnect,
    kind_step: str,
    request_body: dict[str, Any],
) -> None:
    e = importing_engine(settings, chaos_fail_steps=[kind_step])
    try:
        # (a create without a start: no step of it is the one failed on purpose)
        assert create(e, "base-vm", start=False).state == JobState.SUCCEEDED
        before_vols, before_doms = volumes(conn), {d.name() for d in conn.listAllDomains()}
        done = run(e, request_body)
        assert done.state == JobState.FAILED, done
        assert "injected failure" in done.error.message
        assert volumes(conn) == before_vols
        assert {d.name() for d in conn.listAllDomains()} == before_doms
        assert e.run(e.inventory.find_vm("cl")) is None
        assert e.run(e.inventory.find_template("cl")) is None
        # and the MACs it claimed are free again
        assert len(e.run(e.redis.hgetall("vmorch:macs"))) == 1  # base-vm's
    finally:
        e.close()


def test_a_job_on_the_source_waits_for_its_clone_to_end(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    """A clone holds its source's operation queue as well as its own VM's: a start of the
    source submitted meanwhile waits its turn (it does not start a disk being copied), and
    the clone, submitted behind a job of the source, waits for that job."""
    assert create(fleet, "src3", start=False).state == JobState.SUCCEEDED
    stop = fleet.submit({"kind": "vm.stop", "vm": "src3"})  # ahead of the clone
    clone = fleet.submit({"kind": "vm.clone", "vm": "src3", "name": "copy3"})
    start = fleet.submit({"kind": "vm.start", "vm": "src3"})
    src_id = fleet.run(fleet.inventory.vm("src3")).id
    assert fleet.run(fleet.jobs.vm_queue(src_id)) == [stop.id, clone.id, start.id]
    assert fleet.run(fleet.jobs.ahead_of(fleet.get(clone.id))) == (1, stop.id)
    assert fleet.run(fleet.jobs.ahead_of(fleet.get(start.id))) == (2, clone.id)
    fleet.drain()
    ended = [fleet.get(j.id) for j in (stop, clone, start)]
    assert [j.state for j in ended] == [JobState.SUCCEEDED] * 3, [j.error for j in ended]
    # each started once the one ahead of it was done with the source: the copy ran on a
    # stopped source, and the start waited for the copy only (not the clone's own start)
    assert ended[0].ended_at <= ended[1].started_at  # type: ignore[operator]
    assert ended[1].links.source_vm_id == src_id
    release = next(s for s in ended[1].steps if s.name == "release_source")
    assert release.ended_at <= ended[2].started_at  # type: ignore[operator]
    assert conn.lookupByName("src3").isActive() and not conn.lookupByName("copy3").isActive()
    assert fleet.run(fleet.jobs.vm_queue(src_id)) == []


def test_a_cloud_init_seed_is_made_attached_and_deleted_with_the_vm(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    from schemas.requests import CloudInit
    from tasks.steps.seed import nocloud_iso, seed_files

    job = create(
        fleet, "ci1", start=False,
        cloud_init={"user_data": "#cloud-config\nhostname: ci1\n", "meta_data": {"zone": "a"}},
    )  # fmt: skip
    assert job.state == JobState.SUCCEEDED, job.error
    vm = fleet.run(fleet.inventory.vm("ci1"))
    seed = vm.disks[-1]
    assert seed.volume == f"ci1-{vm.id[:8]}-seed" and seed.target == "vdb"
    assert seed.volume in volumes(conn)
    dom = ET.fromstring(conn.lookupByName("ci1").XMLDesc(0))
    assert [t.get("dev") for t in dom.findall("devices/disk/target")] == ["vda", "vdb"]
    # what goes on it (the test driver keeps no data: the qemu tier reads the file back)
    files = seed_files(CloudInit(user_data="x", meta_data={"zone": "a"}), vm.id, "ci1")
    assert json.loads(files["meta-data"]) == {
        "instance-id": vm.id, "local-hostname": "ci1", "zone": "a"
    }  # fmt: skip
    assert nocloud_iso(files)[0x8000 + 40 : 0x8000 + 46] == b"cidata"  # the volume label
    # deleted with the VM
    assert run(fleet, {"kind": "vm.delete", "vm": "ci1"}).state == JobState.SUCCEEDED
    assert seed.volume not in volumes(conn)


def test_config_can_go_as_a_cloud_init_seed_instead(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    from pydantic import ValidationError

    from schemas.requests import GuestKeyValue, job_request_adapter
    from tasks.steps.seed import config_user_data

    config = [{"key": "hostname", "value": "ci2"}, {"key": "ntp", "value": "pool.ntp.org"}]
    job = create(fleet, "ci2", config=config, config_via="cloud-init")
    assert job.state == JobState.SUCCEEDED, job.error
    # no wait for a guest program's answers (cloud-init gives none); the seed is made
    assert "await_answers" not in [s.name for s in job.steps]
    assert "cloud_init_seed" in [s.name for s in job.steps]
    text = config_user_data([GuestKeyValue(**c) for c in config])
    assert text.startswith("#cloud-config\n")
    doc = json.loads(text.split("\n", 1)[1])
    assert doc["hostname"] == "ci2"
    assert doc["write_files"][1] == {
        "path": "/etc/vmorch/config/ntp", "content": "pool.ntp.org", "permissions": "0600"
    }  # fmt: skip
    base = {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "x"}
    for bad, why in (
        ({"config_via": "cloud-init"}, "renders `config`"),
        ({"config_via": "cloud-init", "config": [{"key": "pw", "value": "s", "secret": True}]},
         "a plain file"),
        ({"config_via": "cloud-init", "config": config, "cloud_init": {"user_data": "x"}},
         "not both"),
    ):  # fmt: skip
        with pytest.raises(ValidationError, match=why):
            job_request_adapter.validate_python({**base, **bad})
