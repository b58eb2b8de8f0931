"""assembly.import on the in-process test driver, the assemblies made by the tests (OVF
descriptors, streamOptimized vmdk disks by the real qemu-img, manifests, OVA archives by
tarfile) and served over HTTP on loopback; and every hostile or broken assembly refused,
naming what is wrong, with nothing left behind (no template, volume, listing or staged
file)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from orchestrator.settings import Settings
from schemas.jobs import Job, JobState
from tasks.testing import Engine
from tests.sources import FileServer, make_assembly, make_ova, manifest, ovf_descriptor, sha256_of
from tests.unit.conftest import importing_engine

WEB = {"id": "web", "vcpus": 2, "memory_mib": 96, "disks": [0], "networks": ["VM Network"]}


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect, tmp_path: Path) -> Iterator[Engine]:
    e = importing_engine(settings, staging_dir=tmp_path / "staging")
    yield e
    e.close()


def run(engine: Engine, url: str, **extra: Any) -> Job:
    job = engine.submit({"kind": "assembly.import", "repository": "repo-u", "url": url, **extra})
    engine.drain()
    return engine.get(job.id)


def volumes(conn: libvirt.virConnect) -> set[str]:
    return set(conn.storagePoolLookupByName("repo-u").listVolumes())


def nothing_left(engine: Engine, conn: libvirt.virConnect, tmp_path: Path) -> None:
    assert volumes(conn) == {"base.img"}
    assert [t.name for t in engine.run(engine.inventory.templates())] == ["broken", "t1"]
    assert engine.run(engine.services.content.list("repo-u")) == []
    assert list((tmp_path / "staging").iterdir()) == []


def test_an_ova_and_an_ovf_become_templates_per_virtual_system(
    fleet: Engine, conn: libvirt.virConnect, www: Path
) -> None:
    db = {"id": "db", "vcpus": 1, "memory_mib": 128, "disks": [1]}
    members = make_assembly(www, "app", [WEB, db], n_disks=2)
    make_ova(www, "app", members, www / "app.ova")
    with FileServer(www) as http:
        ova = run(fleet, http.url("app.ova"), sha256=sha256_of(www / "app.ova"))
        ovf = run(fleet, http.url("app.ovf"), name="app2")
    for job, name in ((ova, "app"), (ovf, "app2")):
        assert job.state == JobState.SUCCEEDED, job.error
        imp = next(s for s in job.steps if s.name == "import")
        assert imp.outputs["manifest_checked"] is True
        assert imp.detail["bytes_done"] == imp.detail["bytes_total"] > 0
        web = fleet.run(fleet.inventory.template(f"{name}-web"))
        assert (web.vcpus, web.memory_mib, web.networks, web.assembly) == (
            2, 96, ["VM Network"], name
        )  # fmt: skip
        assert web.state == "ready" and [d.format for d in web.disks] == ["qcow2"]
        assert web.disks[0].capacity_bytes == 8 << 20  # the vmdk's virtual size
        assert fleet.run(fleet.inventory.template(f"{name}-db")).memory_mib == 128
        listed = fleet.run(fleet.services.content.get("repo-u", name))
        assert listed.kind == "assembly" and listed.state == "ready"
        assert [(s.id, s.template) for s in listed.virtual_systems] == [
            ("web", f"{name}-web"), ("db", f"{name}-db")
        ]  # fmt: skip
    assert {"app-web-disk0", "app-db-disk0", "app2-web-disk0"} <= volumes(conn)
    # a template of an assembly makes VMs
    job = fleet.submit(
        {"kind": "vm.create_from_template", "pool": "pool-u", "template": "app-web", "name": "w1"}
    )
    fleet.drain()
    assert fleet.get(job.id).state == JobState.SUCCEEDED


def _ova(www: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(www / "bad.ova", "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


BILLION_LAUGHS = """<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;">]>"""
EXTERNAL = '<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


def hostile(case: str, www: Path) -> tuple[str, str]:
    """Make the hostile or broken assembly `case` in `www`: (file to import, error)."""
    members = make_assembly(www, "app", [WEB])
    ovf, vmdk, mf = members
    size = (www / vmdk).stat().st_size
    data = {m: (www / m).read_bytes() for m in members}
    if case == "traversal-member":
        _ova(www, [_file(ovf, data[ovf]), _file("../evil.vmdk", data[vmdk])])
        return "bad.ova", "not a plain file name"
    if case == "absolute-member":
        _ova(www, [_file(ovf, data[ovf]), _file("/tmp/evil", b"x")])
        return "bad.ova", "not a plain file name"
    if case == "symlink":
        _ova(www, [_file(ovf, data[ovf]), _link(vmdk, "/etc/shadow", tarfile.SYMTYPE)])
        return "bad.ova", "is a link"
    if case == "hardlink":
        _ova(www, [_file(ovf, data[ovf]), _link(vmdk, ovf, tarfile.LNKTYPE)])
        return "bad.ova", "is a link"
    if case == "traversal-href":
        desc = ovf_descriptor({"../../etc/passwd": 10}, [WEB])
        (www / "bad.ovf").write_text(desc)
        return "bad.ovf", "not a plain file name"
    if case == "absurd-size":
        desc = ovf_descriptor({vmdk: 10**15}, [WEB])
        _ova(www, [_file("app.ovf", desc.encode()), _file(vmdk, data[vmdk])])
        return "bad.ova", "out of range"
    if case == "lying-size":
        desc = ovf_descriptor({vmdk: size + 1}, [WEB])
        _ova(www, [_file("app.ovf", desc.encode()), _file(vmdk, data[vmdk])])
        return "bad.ova", "the descriptor says"
    if case == "entity-expansion":
        desc = ovf_descriptor({vmdk: size}, [WEB], doctype=BILLION_LAUGHS)
        _ova(www, [_file("app.ovf", desc.encode()), _file(vmdk, data[vmdk])])
        return "bad.ova", "DTDs and entities are not allowed"
    if case == "external-entity":
        desc = ovf_descriptor({vmdk: size}, [WEB], doctype=EXTERNAL)
        _ova(www, [_file("app.ovf", desc.encode()), _file(vmdk, data[vmdk])])
        return "bad.ova", "DTDs and entities are not allowed"
    if case == "manifest-mismatch":
        tampered = data[vmdk][:-1] + bytes([data[vmdk][-1] ^ 1])
        _ova(www, [_file(ovf, data[ovf]), _file(vmdk, tampered), _file(mf, data[mf])])
        return "bad.ova", "does not match"
    if case == "not-in-manifest":
        partial = manifest(www, [ovf]).encode()
        _ova(www, [_file(ovf, data[ovf]), _file(vmdk, data[vmdk]), _file(mf, partial)])
        return "bad.ova", "is not listed"
    if case == "missing-file":
        _ova(www, [_file(ovf, data[ovf])])
        return "bad.ova", "is missing"
    if case == "text-vmdk":  # a vmdk descriptor whose extent is a file of the host
        text = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        text += b'createType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n'
        desc = ovf_descriptor({vmdk: len(text)}, [WEB])
        _ova(www, [_file("app.ovf", desc.encode()), _file(vmdk, text)])
        return "bad.ova", "not a vmdk image"
    if case == "pax-bomb":  # an extended header tarfile would read whole into memory
        with tarfile.open(www / "bad.ova", "w", format=tarfile.PAX_FORMAT) as tar:
            info, body = _file(ovf, data[ovf])
            info.pax_headers = {"comment": "x" * 200_000}
            tar.addfile(info, io.BytesIO(body))
        return "bad.ova", "extended tar header"
    if case == "not-a-tar":
        (www / "bad.ova").write_bytes(b"\x00garbage" * 200)
        return "bad.ova", "OVA"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "traversal-member", "absolute-member", "symlink", "hardlink", "traversal-href",
        "absurd-size", "lying-size", "entity-expansion", "external-entity",
        "manifest-mismatch", "not-in-manifest", "missing-file", "text-vmdk", "not-a-tar",
        "pax-bomb",
    ],
)  # fmt: skip
def test_a_hostile_or_broken_assembly_is_refused_and_leaves_nothing(
    fleet: Engine, conn: libvirt.virConnect, www: Path, tmp_path: Path, case: str
) -> None:
    name, why = hostile(case, www)
    with FileServer(www) as http:
        job = run(fleet, http.url(name))
    assert job.state == JobState.FAILED, (case, job.steps)
    assert job.error is not None and job.error.code == "import_failed", job.error
    assert why in job.error.message, job.error.message
    nothing_left(fleet, conn, tmp_path)
    assert not (www.parent / "evil.vmdk").exists() and not Path("/tmp/evil").exists()


def test_a_template_name_taken_fails_the_import_and_leaves_the_other_template(
    fleet: Engine, conn: libvirt.virConnect, www: Path, tmp_path: Path
) -> None:
    members = make_assembly(www, "app", [WEB, {"id": "t1-x", "disks": [0]}])
    make_ova(www, "app", members, www / "app.ova")
    with FileServer(www) as http:
        job = run(fleet, http.url("app.ova"), name="t1")  # its 2nd system would be t1-t1-x...
    assert job.state == JobState.SUCCEEDED, job.error  # (no clash: names are prefixed)
    fleet.run(fleet.inventory.save_template(fleet.run(fleet.inventory.template("t1-web"))
                                            .model_copy(update={"name": "clash-web"})))  # fmt: skip
    with FileServer(www) as http:
        job = run(fleet, http.url("app.ova"), name="clash")
    assert job.state == JobState.FAILED and "clash-web" in job.error.message
    assert fleet.run(fleet.inventory.find_template("clash-t1-x")) is None
    assert fleet.run(fleet.services.content.get("repo-u", "clash")) is None
    assert not any(v.startswith("clash-") for v in volumes(conn))
