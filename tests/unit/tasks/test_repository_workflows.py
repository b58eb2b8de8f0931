"""repository.import, vm.create_from_iso, vm.insert_iso and vm.eject_iso on the in-process
libvirt test driver, the sources served over real HTTP on loopback (tests/sources.py). The
test driver keeps no data in its volumes: what is fetched is still read to its end and
checked; what a real volume holds is checked on the lab's QEMU servers (integration)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.settings import Settings
from schemas.jobs import Job, JobState
from tasks.steps.fetching import image_format
from tasks.testing import Engine
from tests.sources import FileServer, make_iso
from tests.unit.conftest import importing_engine
from workers.hypervisor.xml import cdrom_source


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[FileServer, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as server:
        yield server, root


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Iterator[Engine]:
    e = importing_engine(settings)
    yield e
    e.close()


def run(engine: Engine, request: dict[str, Any]) -> Job:
    job = engine.submit(request)
    engine.drain()
    return engine.get(job.id)


def volumes(conn: libvirt.virConnect) -> set[str]:
    sp = conn.storagePoolLookupByName("repo-u")
    sp.refresh(0)
    return set(sp.listVolumes())


def import_iso(engine: Engine, url: str, **extra: Any) -> Job:
    return run(
        engine,
        {
            "kind": "repository.import",
            "repository": "repo-u",
            "content": "iso",
            "url": url,
            **extra,
        },
    )


def test_an_iso_is_imported_checked_and_listed(
    fleet: Engine, conn: libvirt.virConnect, files: tuple[FileServer, Path]
) -> None:
    server, root = files
    sha = make_iso(root / "inst.iso", files={"README": b"x" * 300_000})
    size = (root / "inst.iso").stat().st_size
    job = import_iso(fleet, server.url("inst.iso"), sha256=sha)
    assert job.state == JobState.SUCCEEDED, job.error
    assert [s.name for s in job.steps] == ["reserve", "place", "check_name", "fetch", "record"]
    fetch = job.steps[3]
    assert fetch.outputs["sha256"] == sha and fetch.outputs["size_bytes"] == size
    assert fetch.outputs["format"] == "iso" and fetch.detail["bytes_done"] == size
    # listed ready in the repository, with what was measured
    item = fleet.run(fleet.services.content.get("repo-u", "inst.iso"))
    assert item.state == "ready" and item.kind == "iso" and item.sha256 == sha
    assert item.size_bytes == size and item.job_id == job.id
    assert item.source == server.url("inst.iso")
    # and a volume of that size in the repository's libvirt pool
    vol = conn.storagePoolLookupByName("repo-u").storageVolLookupByName("inst.iso")
    assert vol.info()[1] == size


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"sha256": "0" * 64}, "SHA-256 mismatch"),
        ({"content": "iso", "url_name": "plain.img"}, "not an ISO 9660 image"),
        ({"url_name": "missing.iso"}, "HTTP 404"),
    ],
)
def test_a_failed_import_leaves_no_volume_and_no_listing(
    fleet: Engine,
    conn: libvirt.virConnect,
    files: tuple[FileServer, Path],
    body: dict[str, Any],
    error: str,
) -> None:
    server, root = files
    make_iso(root / "inst.iso")
    (root / "plain.img").write_bytes(b"\0" * 100_000)
    name = body.pop("url_name", "inst.iso")
    job = import_iso(fleet, server.url(name), name="x.iso", **body)
    assert job.state == JobState.FAILED and job.error is not None
    assert error in job.error.message
    assert job.error.code == "import_failed"
    assert "x.iso" not in volumes(conn)
    assert fleet.run(fleet.services.content.get("repo-u", "x.iso")) is None
    # and the name is free again
    assert import_iso(fleet, server.url("inst.iso"), name="x.iso").state == JobState.SUCCEEDED


def test_disk_images_that_could_reach_beyond_themselves_are_refused(tmp_path: Path) -> None:
    """qcow2 headers made by the real qemu-img: a backing file (any file of the server)
    and an external data file are refused; plain qcow2 and raw pass."""

    def head(*args: str) -> bytes:
        path = tmp_path / "img"
        path.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", *args, str(path), "1M"], check=True)
        return path.read_bytes()[:65536]

    assert image_format(head("-f", "qcow2"), "virtual_disk") == "qcow2"
    assert image_format(head("-f", "raw"), "virtual_disk") == "raw"
    backed = head("-f", "qcow2", "-b", "/etc/shadow", "-F", "raw")
    with pytest.raises(Exception, match="backing file"):
        image_format(backed, "virtual_disk")
    data_file = head("-f", "qcow2", "-o", f"data_file={tmp_path / 'data'}")
    with pytest.raises(Exception, match="external data file"):
        image_format(data_file, "virtual_disk")
    with pytest.raises(Exception, match="vmdk image"):
        image_format(head("-f", "vmdk"), "virtual_disk")
    with pytest.raises(Exception, match="not an ISO"):
        image_format(head("-f", "qcow2"), "iso")


def test_imports_are_refused_at_submission_with_the_field_named(
    fleet: Engine, files: tuple[FileServer, Path]
) -> None:
    server, root = files
    make_iso(root / "inst.iso")
    assert import_iso(fleet, server.url("inst.iso")).state == JobState.SUCCEEDED

    def refused(**body: Any) -> Exception:
        req = {"kind": "repository.import", "repository": "repo-u", "content": "iso"}
        with pytest.raises((ValidationFailed, Conflict)) as e:
            fleet.submit({**req, **body})
        return e.value

    e = refused(url="http://10.1.2.3/a.iso")
    assert e.details[0][0] == ["body", "url"] and "private" in e.message
    e = refused(url="http://127.0.0.1:1/")
    assert e.details[0][0] == ["body", "name"]  # the URL names no file
    e = refused(url=server.url("inst.iso"))
    assert isinstance(e, Conflict) and e.details[0][0] == ["body", "name"]
    e = refused(url=server.url("inst.iso"), repository="nope")
    assert e.details[0][0] == ["body", "repository"]


def test_a_vm_from_an_iso_boots_it_and_the_iso_outlives_the_vm(
    fleet: Engine, conn: libvirt.virConnect, files: tuple[FileServer, Path]
) -> None:
    server, root = files
    make_iso(root / "inst.iso")
    make_iso(root / "other.iso", label="OTHER")
    for name in ("inst.iso", "other.iso"):
        assert import_iso(fleet, server.url(name)).state == JobState.SUCCEEDED
    job = run(
        fleet,
        {"kind": "vm.create_from_iso", "pool": "pool-u", "iso": "inst.iso", "name": "inst1",
         "memory_mib": 256, "disks": [{"size_mib": 2048}, {"size_mib": 10}],
         "vnics": [{"network": "default"}]},
    )  # fmt: skip
    assert job.state == JobState.SUCCEEDED, job.error
    assert [s.name for s in job.steps] == ["reserve", "place", "create_disks", "define", "start"]
    dom = conn.lookupByUUIDString(job.links.vm_id)
    assert dom.isActive()
    sp = conn.storagePoolLookupByName("repo-u")
    iso_path = sp.storageVolLookupByName("inst.iso").path()
    assert cdrom_source(dom.XMLDesc(0)) == iso_path
    assert "<boot dev='cdrom'/>\n    <boot dev='hd'/>" in dom.XMLDesc(0)
    vm_id = job.links.vm_id
    disks = [sp.storageVolLookupByName(f"inst1-{vm_id[:8]}-disk{i}") for i in (0, 1)]
    assert [d.info()[1] for d in disks] == [2048 << 20, 10 << 20]
    vm = fleet.run(fleet.inventory.vm("inst1"))
    assert vm.cdrom is not None and vm.cdrom.volume == "inst.iso" and vm.boot == ["cdrom", "hd"]

    # eject, insert another: the definition follows (the test driver changes no device live)
    assert run(fleet, {"kind": "vm.stop", "vm": "inst1", "timeout_s": 0}).state == "succeeded"
    ej = run(fleet, {"kind": "vm.eject_iso", "vm": "inst1"})
    assert ej.state == JobState.SUCCEEDED, ej.error
    assert cdrom_source(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) is None
    assert fleet.run(fleet.inventory.vm("inst1")).cdrom is None
    ins = run(fleet, {"kind": "vm.insert_iso", "vm": "inst1", "iso": "other.iso"})
    assert ins.state == JobState.SUCCEEDED, ins.error
    other = sp.storageVolLookupByName("other.iso").path()
    assert cdrom_source(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == other

    # deleted with its disks: the ISOs stay in the repository
    assert run(fleet, {"kind": "vm.delete", "vm": "inst1"}).state == JobState.SUCCEEDED
    assert volumes(conn) == {"base.img", "inst.iso", "other.iso"}


def test_iso_jobs_are_refused_at_submission_with_the_field_named(
    fleet: Engine, files: tuple[FileServer, Path]
) -> None:
    server, root = files
    (root / "disk.img").write_bytes(b"\0" * 70_000)
    disk = {"kind": "repository.import", "repository": "repo-u", "content": "virtual_disk"}
    assert run(fleet, {**disk, "url": server.url("disk.img")}).state == JobState.SUCCEEDED
    base = {"kind": "vm.create_from_iso", "pool": "pool-u", "name": "i2"}
    for iso, why in (("nope.iso", "has no iso 'nope.iso'"), ("disk.img", "is a virtual_disk")):
        with pytest.raises(ValidationFailed) as e:
            fleet.submit({**base, "iso": iso})
        assert e.value.details == [(["body", "iso"], e.value.details[0][1])]
        assert why in e.value.details[0][1]
    # a VM made from a template has no CD-ROM drive to change
    assert (
        run(
            fleet,
            {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "t"},
        ).state
        == JobState.SUCCEEDED
    )
    with pytest.raises(ValidationFailed, match="no CD-ROM drive"):
        fleet.submit({"kind": "vm.eject_iso", "vm": "t"})


@pytest.mark.parametrize(
    "kind_step",
    ["repository.import:record", "repository.import:fetch", "vm.create_from_iso:define",
     "vm.create_from_iso:start", "assembly.import:record"],
)  # fmt: skip
def test_a_failure_in_the_middle_or_at_the_end_leaves_nothing_behind(
    settings: Settings,
    conn: libvirt.virConnect,
    files: tuple[FileServer, Path],
    tmp_path: Path,
    kind_step: str,
) -> None:
    from tests.sources import make_assembly, make_ova

    server, root = files
    make_iso(root / "inst.iso")
    make_ova(
        root, "app", make_assembly(root, "app", [{"id": "vs", "disks": [0]}]), root / "app.ova"
    )
    e = importing_engine(settings, chaos_fail_steps=[kind_step], staging_dir=tmp_path / "st")
    try:
        if not kind_step.startswith("repository.import"):
            assert import_iso(e, server.url("inst.iso")).state == JobState.SUCCEEDED
        before_vols, before_doms = volumes(conn), {d.name() for d in conn.listAllDomains()}
        before_content = e.run(e.services.content.list("repo-u"))
        kind = kind_step.split(":")[0]
        body: dict[str, Any] = {
            "repository.import": {"kind": kind, "repository": "repo-u", "content": "iso",
                                  "url": server.url("inst.iso"), "name": "y.iso"},
            "vm.create_from_iso": {"kind": kind, "pool": "pool-u", "iso": "inst.iso",
                                   "name": "y", "vnics": [{"network": "default"}]},
            "assembly.import": {"kind": kind, "repository": "repo-u",
                                "url": server.url("app.ova")},
        }[kind]  # fmt: skip
        done = run(e, body)
        assert done.state == JobState.FAILED and "injected failure" in done.error.message
        assert volumes(conn) == before_vols
        assert {d.name() for d in conn.listAllDomains()} == before_doms
        assert e.run(e.services.content.list("repo-u")) == before_content
        assert e.run(e.inventory.find_vm("y")) is None
        assert [t.name for t in e.run(e.inventory.templates())] == ["broken", "t1"]
        assert e.run(e.redis.hgetall("vmorch:macs")) == {}
    finally:
        e.close()


def test_a_file_of_a_server_is_imported_only_by_repository_import_and_when_allowed(
    settings: Settings, conn: libvirt.virConnect
) -> None:
    e = importing_engine(settings, import_allowed_paths=["/srv/isos"])
    try:
        ok = e.submit({"kind": "repository.import", "repository": "repo-u", "content": "iso",
                       "url": "file:///srv/isos/ol9.iso"})  # fmt: skip
        assert ok.request.url == "file:///srv/isos/ol9.iso"
        for body in (
            {"kind": "repository.import", "repository": "repo-u", "content": "iso",
             "url": "file:///etc/shadow", "name": "s.iso"},
            {"kind": "template.import", "repository": "repo-u", "name": "t9",
             "url": "file:///srv/isos/disk.img"},
            {"kind": "assembly.import", "repository": "repo-u", "url": "file:///srv/isos/a.ova"},
        ):  # fmt: skip
            with pytest.raises(ValidationFailed) as refused:
                e.submit(body)
            assert refused.value.details[0][0] == ["body", "url"], refused.value.details
    finally:
        e.close()


def test_an_import_never_replaces_a_volume_it_did_not_make(
    fleet: Engine, conn: libvirt.virConnect, files: tuple[FileServer, Path]
) -> None:
    """A name that is already a volume of the repository (a template's base volume, a VM's
    disk) is refused, and the volume is left as it was (its undo does not delete it)."""
    server, root = files
    make_iso(root / "inst.iso")
    sp = conn.storagePoolLookupByName("repo-u")
    before = sp.storageVolLookupByName("base.img").XMLDesc(0)
    job = import_iso(fleet, server.url("inst.iso"), name="base.img")
    assert job.state == JobState.FAILED and job.error.code == "volume_exists", job.error
    assert sp.storageVolLookupByName("base.img").XMLDesc(0) == before
    # a template whose disk name is a volume already (e.g. a VM's disk)
    sp.createXML("<volume><name>clash-disk0</name><capacity>4096</capacity></volume>", 0)
    tmpl = run(fleet, {"kind": "template.clone", "template": "t1", "name": "clash"})
    assert tmpl.state == JobState.FAILED and tmpl.error.code == "volume_exists", tmpl.error
    assert sp.storageVolLookupByName("clash-disk0").info()[1] == 4096
    assert fleet.run(fleet.inventory.find_template("clash")) is None
