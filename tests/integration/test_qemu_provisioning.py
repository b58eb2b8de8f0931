"""The qemu tier, provisioning: an ISO built by the test with xorriso, served by the test
over HTTP and FTP on loopback, imported through the API into the qemu lab's repository (a
real volume, checked with qemu-img), and booted by a real QEMU guest from its CD-ROM
drive: the ISO's boot code leaves a mark in guest memory that only running it puts there.
Clone types read back with qemu-img; an OVA whose vmdk disk boots the same code."""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.conftest import wait_until
from tests.integration.test_qemu_lab import server_uri
from tests.integration.upkit import Up
from tests.sources import (
    BOOT_MARK,
    BOOT_MARK_AT,
    FileServer,
    ftp_server,
    make_assembly,
    make_iso,
    make_ova,
    sha256_of,
)
from workers.hypervisor.xml import cdrom_source

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(300)]


def boot_mark(uri: str, vm_id: str) -> bytes:
    """The guest's memory where the ISO's boot code writes its mark."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByUUIDString(vm_id)
        return bytes(dom.memoryPeek(BOOT_MARK_AT, len(BOOT_MARK), libvirt.VIR_MEMORY_PHYSICAL))
    finally:
        conn.close()


def test_an_iso_imported_over_http_and_ftp_boots_a_real_guest(
    start_up: Any, tmp_path: Path
) -> None:
    # given: the qemu lab, and an ISO served over HTTP and FTP on loopback
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    www = tmp_path / "www"
    www.mkdir()
    sha = make_iso(www / "inst.iso", files={"README": b"vmorch " * 100_000})
    size = (www / "inst.iso").stat().st_size
    with FileServer(www) as http, ftp_server(www) as ftp:
        # when: it is imported from each (the FTP copy under another name)
        jobs = [
            up.api.run(
                {
                    "kind": "repository.import",
                    "repository": "repo-a",
                    "content": "iso",
                    "url": url,
                    "name": name,
                    "sha256": sha,
                },
                timeout_s=120,
            )
            for url, name in ((http.url("inst.iso"), "inst.iso"), (f"{ftp}/inst.iso", "ftp.iso"))
        ]
    # then: both succeeded with the bytes counted, and the repository lists them
    for job in jobs:
        assert job["state"] == "succeeded", job["error"]
        [fetch] = [s for s in job["steps"] if s["name"] == "fetch"]
        assert fetch["outputs"]["stored"] is True and fetch["detail"]["bytes_done"] == size
    repo = up.api.call("GET", "/v1/repositories/repo-a")
    isos = {i["name"]: i for i in repo["isos"]}
    assert set(isos) == {"inst.iso", "ftp.iso"} and repo["pools"] == ["pool-a"]
    assert all(i["sha256"] == sha and i["size_bytes"] == size for i in isos.values())
    # and the volume holds the very file (qemu-img reads it as raw, of the ISO's size)
    path = Path(next(s for s in jobs[0]["steps"] if s["name"] == "fetch")["outputs"]["path"])
    assert sha256_of(path) == sha
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "raw", str(path)],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    assert info["virtual-size"] == size

    # when: a VM is created from the ISO (an empty disk, boot order cdrom then disk)
    t0 = time.monotonic()
    job = up.api.run(
        {"kind": "vm.create_from_iso", "pool": "pool-a", "iso": "inst.iso", "name": "inst1",
         "memory_mib": 96, "disks": [{"size_mib": 16}]},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job["error"]
    vm = up.api.call("GET", "/v1/vms/inst1")
    uri = server_uri(up, vm["server"])
    # then: the guest runs the ISO's boot code (its mark appears in guest memory)
    wait_until(lambda: boot_mark(uri, vm["id"]) == BOOT_MARK, 30, "the ISO's boot code to run")
    print(f"create_from_iso to boot mark: {time.monotonic() - t0:.2f} s")

    # when: the ISO is ejected from the running guest, then the other one inserted
    ej = up.api.run({"kind": "vm.eject_iso", "vm": "inst1"}, timeout_s=60)
    assert ej["state"] == "succeeded" and ej["steps"][0]["outputs"]["live"] is True, ej
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByUUIDString(vm["id"])
        # then: the running domain and its definition both have an empty drive
        assert cdrom_source(dom.XMLDesc(0)) is None
        assert cdrom_source(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) is None
        ins = up.api.run({"kind": "vm.insert_iso", "vm": "inst1", "iso": "ftp.iso"}, timeout_s=60)
        assert ins["state"] == "succeeded", ins
        repo_a = conn.storagePoolLookupByName("repo-a")
        ftp_path = repo_a.storageVolLookupByName("ftp.iso").path()
        assert cdrom_source(dom.XMLDesc(0)) == ftp_path
        assert cdrom_source(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == ftp_path
    finally:
        conn.close()
    assert up.api.call("GET", "/v1/vms/inst1")["cdrom"]["volume"] == "ftp.iso"

    # deleted: the ISOs stay in the repository
    done = up.api.run({"kind": "vm.delete", "vm": "inst1", "force": True}, timeout_s=60)
    assert done["state"] == "succeeded", done
    after = up.api.call("GET", "/v1/repositories/repo-a")
    assert {i["name"] for i in after["isos"]} == {"inst.iso", "ftp.iso"}
    assert path.exists()


def qemu_img_info(path: str) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", path],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def test_clone_types_templates_and_clones_on_real_volumes(start_up: Any, tmp_path: Path) -> None:
    """qemu-img reads what each clone type made: a thin clone is a qcow2 overlay backed by
    the template's volume, a full copy has every byte allocated; a template imported as
    qcow2 is qcow2 and makes a qcow2 disk; a clone of a VM runs."""
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    job = up.api.run(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a-2disk",
         "name": "typed", "start": False,
         "disks": [{"clone_type": "thin"}, {"clone_type": "full"}]},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job["error"]
    vm = up.api.call("GET", "/v1/vms/typed")
    thin, full = (qemu_img_info(d["path"]) for d in vm["disks"])
    tmpl = {t["name"]: t for t in up.api.call("GET", "/v1/templates")}["tmpl-a-2disk"]
    assert thin["format"] == "qcow2" and thin["backing-filename"].endswith(
        "/" + tmpl["disks"][0]["volume"]
    )
    assert thin["virtual-size"] == tmpl["disks"][0]["capacity_bytes"]
    assert full["format"] == "raw" and "backing-filename" not in full
    assert full["actual-size"] >= full["virtual-size"]  # allocated, not sparse
    # the VM with a thin clone boots (QEMU opens the overlay and its backing file)
    assert up.api.run({"kind": "vm.start", "vm": "typed"}, timeout_s=60)["state"] == "succeeded"
    assert up.api.run({"kind": "vm.kill", "vm": "typed"}, timeout_s=60)["state"] == "succeeded"

    # a clone of the stopped VM: its own copies, a sparse copy of the overlay keeps qcow2
    clone = up.api.run({"kind": "vm.clone", "vm": "typed", "name": "typed2", "start": True},
                       timeout_s=120)  # fmt: skip
    assert clone["state"] == "succeeded", clone["error"]
    copy = up.api.call("GET", "/v1/vms/typed2")
    assert copy["state"] == "running" and copy["nics"] == []
    assert {d["volume"] for d in copy["disks"]}.isdisjoint(d["volume"] for d in vm["disks"])

    # a template imported as qcow2 over HTTP, and a VM from it: its disk is qcow2 too
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(www / "g.qcow2"), "16M"],
                   check=True)  # fmt: skip
    with FileServer(www) as http:
        imp = up.api.run(
            {"kind": "template.import", "repository": "repo-a", "name": "gold",
             "url": http.url("g.qcow2"), "sha256": sha256_of(www / "g.qcow2"), "memory_mib": 96},
            timeout_s=120,
        )  # fmt: skip
    assert imp["state"] == "succeeded", imp["error"]
    made = up.api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "gold",
                       "name": "fromgold", "start": False}, timeout_s=120)  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    disk = up.api.call("GET", "/v1/vms/fromgold")["disks"][0]
    assert disk["format"] == "qcow2" and qemu_img_info(disk["path"])["format"] == "qcow2"
    assert qemu_img_info(disk["path"])["virtual-size"] == 16 * 2**20
    # and a template of that VM
    t = up.api.run({"kind": "template.create_from_vm", "vm": "fromgold", "name": "gold2"},
                   timeout_s=120)  # fmt: skip
    assert t["state"] == "succeeded", t["error"]
    [g2] = [x for x in up.api.call("GET", "/v1/templates") if x["name"] == "gold2"]
    assert g2["state"] == "ready" and g2["disks"][0]["format"] == "qcow2"


def test_an_ova_becomes_a_template_whose_vms_boot_its_converted_disk(
    start_up: Any, tmp_path: Path
) -> None:
    # given: an OVA made by the test: one virtual system, a streamOptimized vmdk whose
    # first sector boots the mark-writing code, a manifest
    up: Up = start_up("--servers-per-pool", "1", "--kind", "qemu")
    www = tmp_path / "www"
    www.mkdir()
    vs = {"id": "web", "vcpus": 1, "memory_mib": 96, "disks": [0], "networks": ["net-a"]}
    members = make_assembly(www, "app", [vs])
    make_ova(www, "app", members, www / "app.ova")
    # when: it is imported over HTTP through the API
    with FileServer(www) as http:
        job = up.api.run(
            {"kind": "assembly.import", "repository": "repo-a", "url": http.url("app.ova"),
             "sha256": sha256_of(www / "app.ova")},
            timeout_s=180,
        )  # fmt: skip
    assert job["state"] == "succeeded", job["error"]
    # then: the repository lists the assembly and its template, a real qcow2 volume
    repo = up.api.call("GET", "/v1/repositories/repo-a")
    [asm] = repo["assemblies"]
    assert asm["name"] == "app" and asm["virtual_systems"][0]["template"] == "app-web"
    [tmpl] = [t for t in repo["templates"] if t["name"] == "app-web"]
    assert tmpl["networks"] == ["net-a"] and tmpl["disks"][0]["format"] == "qcow2"
    conn = libvirt.open(server_uri(up, "srv-a1"))
    try:
        vol = conn.storagePoolLookupByName("repo-a").storageVolLookupByName("app-web-disk0")
        info = qemu_img_info(vol.path())
    finally:
        conn.close()
    assert info["format"] == "qcow2" and info["virtual-size"] == 8 << 20
    # and a VM made from it boots the converted disk
    made = up.api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "app-web",
                       "name": "fromova"}, timeout_s=120)  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    vm_id = made["links"]["vm_id"]
    uri = server_uri(up, "srv-a1")
    wait_until(lambda: boot_mark(uri, vm_id) == BOOT_MARK, 30, "the converted disk to boot")


def test_an_install_tree_boots_its_installer_then_the_installed_disk(
    start_up: Any, tmp_path: Path
) -> None:
    """Debian's kernel and an initramfs "installer" (tests/guestkit.py) served as an install
    tree: the VM boots the fetched kernel with the installer's arguments; the installer
    writes a boot sector and its command line onto the disk and powers off; the VM then
    boots from that disk (its boot code leaves the mark)."""
    from tests.guestkit import installer_tree

    up: Up = start_up("--servers-per-pool", "1", "--kind", "qemu")
    www = tmp_path / "www"
    installer_tree(www / "ol9")
    t0 = time.monotonic()
    with FileServer(www) as http:
        job = up.api.run(
            {"kind": "vm.create_from_install_tree", "pool": "pool-a", "name": "installed",
             "url": http.url("ol9/"), "kickstart_url": "http://ks.example/ol9.cfg",
             "kernel_args": "quiet", "memory_mib": 128, "disks": [{"size_mib": 16}],
             "install_timeout_s": 240},
            timeout_s=280,
        )  # fmt: skip
    assert job["state"] == "succeeded", (job["error"], [s["state"] for s in job["steps"]])
    print(f"install from tree, submit to running from disk: {time.monotonic() - t0:.1f} s")
    vm = up.api.call("GET", "/v1/vms/installed")
    assert vm["direct_boot"] is None and vm["boot"] == ["hd"]
    # the installer got its arguments, and wrote the disk
    sector1 = Path(vm["disks"][0]["path"]).read_bytes()[512:1024].split(b"\n")[0].decode()
    assert sector1 == f"quiet inst.repo={http.url('ol9/')} inst.ks=http://ks.example/ol9.cfg"
    uri = server_uri(up, "srv-a1")
    wait_until(lambda: boot_mark(uri, vm["id"]) == BOOT_MARK, 30, "the installed disk to boot")
    # the fetched kernel and initrd are gone from the repository
    conn = libvirt.open(uri)
    try:
        vols = conn.storagePoolLookupByName("repo-a").listVolumes()
    finally:
        conn.close()
    assert not any(v.endswith(("-kernel", "-initrd")) for v in vols), vols


def test_a_vm_moved_to_another_repository_boots_from_the_copies(
    start_up: Any, tmp_path: Path
) -> None:
    """A second repository presented to the pool over the API; a stopped VM whose disk
    boots the mark-writing code is moved there (a real copy between storage pools of its
    server), and boots from the copy; the old volume is gone."""
    import os
    import tempfile

    from tests.sources import boot_disk

    up: Up = start_up("--servers-per-pool", "1", "--kind", "qemu")
    uri = server_uri(up, "srv-a1")
    base = Path(tempfile.mkdtemp(prefix="vmorch-repo-x-", dir="/tmp"))  # reachable by nobody
    base.chmod(0o755)
    repo_dir = base / "repo-x"
    repo_dir.mkdir()
    os.chown(repo_dir, 65534, 65534)  # the lab's daemons run as nobody
    conn = libvirt.open(uri)
    try:
        xml = f"<pool type='dir'><name>repo-x</name><target><path>{repo_dir}</path></target></pool>"
        conn.storagePoolDefineXML(xml).create()
    finally:
        conn.close()
    status, body = up.api.request(
        "PUT", "/v1/pools/pool-a/repositories/repo-x", {"path": str(repo_dir)}
    )
    assert status == 200 and [r["name"] for r in body["pool"]["repositories"]] == ["repo-x"]
    made = up.api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                       "name": "mover", "start": False}, timeout_s=120)  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    old = up.api.call("GET", "/v1/vms/mover")["disks"][0]
    boot_disk(Path(old["path"]), size_mib=16)  # its disk now boots the mark-writing code
    moved = up.api.run({"kind": "vm.move", "vm": "mover", "repository": "repo-x"}, timeout_s=120)
    assert moved["state"] == "succeeded", moved["error"]
    new = up.api.call("GET", "/v1/vms/mover")["disks"][0]
    assert new["repository"] == "repo-x" and new["path"] == str(repo_dir / old["volume"])
    assert not Path(old["path"]).exists()
    assert qemu_img_info(new["path"])["virtual-size"] == 16 << 20
    started = up.api.run({"kind": "vm.start", "vm": "mover"}, timeout_s=60)
    assert started["state"] == "succeeded", started["error"]
    vm_id = made["links"]["vm_id"]
    wait_until(lambda: boot_mark(uri, vm_id) == BOOT_MARK, 30, "the moved disk to boot")
    # the repository cannot be withdrawn while the VM's disk is there
    status, body = up.api.request("DELETE", "/v1/pools/pool-a/repositories/repo-x")
    assert status == 409 and "mover" in body["error"]["message"]
    up.api.run({"kind": "vm.delete", "vm": "mover", "force": True}, timeout_s=60)
    import shutil

    shutil.rmtree(base, ignore_errors=True)


def test_an_iso_on_a_directory_the_server_sees_is_imported_from_there(start_up: Any) -> None:
    """`file:///path` under VMORCH_IMPORT_ALLOWED_PATHS (an NFS export the servers mount,
    here a directory of this host): libvirt reads it on the server, the worker checks it on
    the way, libvirt writes the volume; a path outside is refused at submission."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="vmorch-nfs-", dir="/tmp"))
    try:
        base.chmod(0o755)  # the lab's daemons (nobody) read it
        (base / "isos").mkdir(mode=0o755)
        sha = make_iso(base / "isos" / "local.iso")
        (base / "isos" / "local.iso").chmod(0o644)
        up: Up = start_up(
            "--servers-per-pool", "1", "--kind", "qemu",
            env={"VMORCH_IMPORT_ALLOWED_PATHS": json.dumps([str(base / "isos")])},
        )  # fmt: skip
        job = up.api.run(
            {"kind": "repository.import", "repository": "repo-a", "content": "iso",
             "url": f"file://{base}/isos/local.iso", "sha256": sha},
            timeout_s=120,
        )  # fmt: skip
        assert job["state"] == "succeeded", job["error"]
        [iso] = up.api.call("GET", "/v1/repositories/repo-a")["isos"]
        assert iso["sha256"] == sha and iso["source"] == f"file://{base}/isos/local.iso"
        vol = Path(next(s for s in job["steps"] if s["name"] == "fetch")["outputs"]["path"])
        assert sha256_of(vol) == sha and vol.parent != base / "isos"
        status, body = up.api.request(
            "POST", "/v1/jobs",
            {"kind": "repository.import", "repository": "repo-a", "content": "iso",
             "url": f"file://{base}/other.iso"},
        )  # fmt: skip
        assert status == 422 and body["error"]["details"][0]["loc"] == ["body", "url"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_install_tree_on_a_mount_the_servers_see(start_up: Any) -> None:
    """The same installer as a tree on a directory the server reads (an NFS mount on a
    real fleet): libvirt reads its .treeinfo, kernel and initrd there."""
    import shutil
    import tempfile

    from tests.guestkit import installer_tree

    base = Path(tempfile.mkdtemp(prefix="vmorch-nfs-", dir="/tmp"))
    try:
        installer_tree(base / "ol9")
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)  # the lab's daemons (nobody) read it
        up: Up = start_up(
            "--servers-per-pool", "1", "--kind", "qemu",
            env={"VMORCH_IMPORT_ALLOWED_PATHS": json.dumps([str(base)])},
        )  # fmt: skip
        job = up.api.run(
            {"kind": "vm.create_from_install_tree", "pool": "pool-a", "name": "nfsinst",
             "url": f"file://{base}/ol9/", "kernel_args": "inst.repo=nfs:filer:/ol9 quiet",
             "memory_mib": 128, "disks": [{"size_mib": 16}], "install_timeout_s": 240},
            timeout_s=280,
        )  # fmt: skip
        assert job["state"] == "succeeded", (job["error"], [s["state"] for s in job["steps"]])
        vm = up.api.call("GET", "/v1/vms/nfsinst")
        sector1 = Path(vm["disks"][0]["path"]).read_bytes()[512:1024].split(b"\n")[0].decode()
        assert sector1 == "inst.repo=nfs:filer:/ol9 quiet"
        uri = server_uri(up, "srv-a1")
        wait_until(lambda: boot_mark(uri, vm["id"]) == BOOT_MARK, 30, "the installed disk to boot")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_vnic_is_added_to_and_removed_from_a_running_guest(start_up: Any) -> None:
    up: Up = start_up("--servers-per-pool", "1", "--kind", "qemu")
    made = up.api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                       "name": "nics"}, timeout_s=120)  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    uri, vm_id = server_uri(up, "srv-a1"), made["links"]["vm_id"]

    def live_macs() -> list[str]:
        conn = libvirt.open(uri)
        try:
            xml = conn.lookupByUUIDString(vm_id).XMLDesc(0)
        finally:
            conn.close()
        return [m.get("address", "") for m in ET.fromstring(xml).findall("devices/interface/mac")]

    added = up.api.run({"kind": "vm.add_vnic", "vm": "nics", "network": "net-a"}, timeout_s=60)
    assert added["state"] == "succeeded", added["error"]
    mac = added["request"]["mac"]
    assert added["steps"][0]["outputs"]["live"] is True and live_macs() == [mac]
    # the definition lets it go at once; the running guest is asked to (ACPI hot-unplug:
    # an OS completes it, and this guest has none): the MAC stays claimed, and the job says
    removed = up.api.run({"kind": "vm.remove_vnic", "vm": "nics", "mac": mac}, timeout_s=60)
    assert removed["state"] == "failed" and "has not let vNIC" in removed["error"]["message"]
    conn = libvirt.open(uri)
    try:
        xml = conn.lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    assert ET.fromstring(xml).findall("devices/interface") == []
    assert live_macs() == [mac] and up.api.call("GET", "/v1/vms/nics")["nics"][0]["mac"] == mac
    # once the guest is off, the removal completes and the MAC goes back
    assert up.api.run({"kind": "vm.kill", "vm": "nics"}, timeout_s=60)["state"] == "succeeded"
    again = up.api.run({"kind": "vm.remove_vnic", "vm": "nics", "mac": mac}, timeout_s=60)
    assert again["state"] == "succeeded", again["error"]
    assert up.api.call("GET", "/v1/vms/nics")["nics"] == []
