"""vm.create_from_install_tree on the in-process test driver, the tree served over HTTP on
loopback. The test driver runs no installer: the test powers the VM off as an installer
would at its end (the qemu tier boots a real installer)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from orchestrator.errors import ImportFailed, ValidationFailed
from orchestrator.settings import Settings
from schemas.jobs import JobState
from tasks.testing import Engine
from tasks.workflows.vm_install_tree import installer_paths
from tests.sources import FileServer
from tests.unit.conftest import importing_engine

TREEINFO = """[general]
family = Test Linux
arch = x86_64

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www" / "os"
    (root / "images" / "pxeboot").mkdir(parents=True)
    (root / ".treeinfo").write_text(TREEINFO)
    (root / "images" / "pxeboot" / "vmlinuz").write_bytes(b"K" * 100_000)
    (root / "images" / "pxeboot" / "initrd.img").write_bytes(b"I" * 50_000)
    with FileServer(tmp_path / "www") as http:
        yield http.url("os")


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Iterator[Engine]:
    e = importing_engine(settings, wait_recheck_s=0.2)
    yield e
    e.close()


def volumes(conn: libvirt.virConnect) -> set[str]:
    return set(conn.storagePoolLookupByName("repo-u").listVolumes())


def submit(engine: Engine, url: str, **extra: Any) -> str:
    body = {
        "kind": "vm.create_from_install_tree", "pool": "pool-u", "name": "inst",
        "url": url, "kickstart_url": "http://ks.example/ol9.cfg",
        "kernel_args": "console=ttyS0 quiet", "memory_mib": 256,
        "disks": [{"size_mib": 64}], **extra,
    }  # fmt: skip
    return str(engine.submit(body).id)


def test_the_installer_boots_then_the_vm_boots_from_its_disk(
    fleet: Engine, conn: libvirt.virConnect, tree: str
) -> None:
    job_id = submit(fleet, tree)
    fleet.drain(horizon_s=0)
    job = fleet.get(job_id)
    # the installer runs: the fetched kernel and initrd, booted directly with its arguments
    assert job.state == JobState.WAITING and job.steps[5].name == "install", job.steps
    dom = conn.lookupByUUIDString(job.links.vm_id)
    os_el = ET.fromstring(dom.XMLDesc(0)).find("os")
    kernel, initrd = os_el.findtext("kernel"), os_el.findtext("initrd")
    assert kernel.endswith("-kernel") and initrd.endswith("-initrd")
    assert os_el.findtext("cmdline") == (
        f"console=ttyS0 quiet inst.repo={tree} inst.ks=http://ks.example/ol9.cfg"
    )
    assert ET.fromstring(dom.XMLDesc(0)).findtext("on_reboot") == "destroy"
    fetched = next(s for s in job.steps if s.name == "fetch_installer")
    assert fetched.outputs["installer"] == {
        "kernel": "images/pxeboot/vmlinuz", "initrd": "images/pxeboot/initrd.img"
    }  # fmt: skip
    # when: the installer powers the VM off
    dom.destroy()
    fleet.drain(horizon_s=2)
    job = fleet.get(job_id)
    # then: it boots from its disk, runs, and the installer's files are gone
    assert job.state == JobState.SUCCEEDED, (job.error, [s.state for s in job.steps])
    root = ET.fromstring(dom.XMLDesc(0))
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert dom.isActive()
    assert not any(v.endswith(("-kernel", "-initrd")) for v in volumes(conn))
    vm = fleet.run(fleet.inventory.vm("inst"))
    assert vm.direct_boot is None and vm.boot == ["hd"] and len(vm.disks) == 1


def test_an_installer_that_never_ends_fails_the_job_and_leaves_nothing(
    fleet: Engine, conn: libvirt.virConnect, tree: str
) -> None:
    job_id = submit(fleet, tree, install_timeout_s=0.5)
    fleet.drain(horizon_s=2)
    job = fleet.get(job_id)
    assert job.state == JobState.FAILED
    assert "did not power vm inst off within 0.5 s" in job.error.message
    assert volumes(conn) == {"base.img"}
    assert [d.name() for d in conn.listAllDomains()] == []
    assert fleet.run(fleet.inventory.find_vm("inst")) is None


def test_treeinfo_paths_stay_inside_the_tree() -> None:
    assert installer_paths(TREEINFO, "x86_64") == (
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
    )
    xen = "[images-xen]\nkernel = images/xen/vmlinuz\ninitrd = images/xen/initrd.img\n"
    assert installer_paths(xen, "x86_64") == ("images/xen/vmlinuz", "images/xen/initrd.img")
    for bad in ("../../etc/passwd", "/etc/passwd", "http://evil/x", "images/../../x", ""):
        with pytest.raises(ImportFailed, match="not a relative path"):
            installer_paths(f"[images-x86_64]\nkernel = {bad}\ninitrd = i\n", "x86_64")
    with pytest.raises(ImportFailed, match="no \\[images-x86_64\\]"):
        installer_paths("[general]\narch = aarch64\n", "x86_64")
    with pytest.raises(ImportFailed, match="not readable"):
        installer_paths("kernel = x\n", "x86_64")


def test_a_tree_outside_the_allow_list_is_refused_at_submission(fleet: Engine) -> None:
    with pytest.raises(ValidationFailed) as e:
        submit(fleet, "http://10.0.0.1/os/")
    assert e.value.details[0][0] == ["body", "url"]
