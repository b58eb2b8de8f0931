"""Domain XML: built from a spec with ElementTree, so names cannot inject markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from workers.hypervisor.xml import (
    CdromSpec,
    DiskSpec,
    DomainSpec,
    NicSpec,
    cdrom_source,
    domain_xml,
    repin_domain_xml,
    replace_cdrom_xml,
    vcpu_pins,
)


def test_domain_xml_escapes_and_carries_the_shape() -> None:
    spec = DomainSpec(
        uuid="6f1c0e0e-0000-4000-8000-000000000001",
        name="web<1>",
        vcpus=2,
        memory_mib=768,
        disks=[DiskSpec("/r/a'b.img", "vda")],
        nics=[NicSpec("net-a", "52:54:00:00:00:01")],
        metadata={"job": "j&1"},
    )
    root = ET.fromstring(domain_xml(spec))
    assert root.findtext("name") == "web<1>"
    assert root.findtext("vcpu") == "2"
    assert root.find("memory").attrib["unit"] == "MiB" and root.findtext("memory") == "768"
    assert root.find("devices/disk/source").attrib["file"] == "/r/a'b.img"
    assert root.find("devices/interface/mac").attrib["address"] == "52:54:00:00:00:01"
    assert (
        root.find(
            "metadata/{https://vmorch.dev/xmlns/vm/1}vm/{https://vmorch.dev/xmlns/vm/1}job"
        ).text
        == "j&1"
    )


def test_every_domain_shape_is_valid_for_libvirts_schema(tmp_path: object) -> None:
    """libvirt's own `virt-xml-validate` (its RelaxNG schemas) on each shape we render."""
    import subprocess
    from pathlib import Path

    base = {
        "uuid": "6f1c0e0e-0000-4000-8000-000000000002",
        "name": "v1",
        "vcpus": 1,
        "memory_mib": 96,
        "disks": [DiskSpec("/r/v1-root.img", "vda"), DiskSpec("/r/v1-data.img", "vdb")],
        "metadata": {"job": "j1", "pool": "pool-a"},
    }
    shapes = {
        "test": DomainSpec(**base, nics=[NicSpec("net-a", "52:54:00:00:00:01")]),
        "qemu": DomainSpec(
            **base, domain_type="qemu", nics=[NicSpec("net-a", "52:54:00:00:00:02")]
        ),
        "qemu-user-nic": DomainSpec(
            **base, domain_type="qemu", nics=[NicSpec("net-a", "52:54:00:00:00:03", user_mode=True)]
        ),
        "bare": DomainSpec(uuid=base["uuid"], name="v2", vcpus=2, memory_mib=64),
        "pinned": DomainSpec(
            **{**base, "vcpus": 2}, domain_type="qemu", pinning={0: [1], 1: [0, 2]}
        ),
        "from-iso": DomainSpec(
            **base, domain_type="qemu", cdrom=CdromSpec("/r/inst.iso"), boot=["cdrom", "hd"]
        ),
        "from-iso-test": DomainSpec(**base, cdrom=CdromSpec("/r/inst.iso"), boot=["cdrom", "hd"]),
        "empty-drive": DomainSpec(**base, domain_type="qemu", cdrom=CdromSpec(None)),
        "installing": DomainSpec(
            **base,
            domain_type="qemu",
            direct_boot=("/r/v1-kernel", "/r/v1-initrd", "inst.repo=http://h/os/ quiet"),
        ),
        "installing-test": DomainSpec(**base, direct_boot=("/r/k", "/r/i", "")),
        "test-channel": DomainSpec(**base, channel_dir="/run/lab/srv-a1/channels"),
        "guest-kernel": DomainSpec(
            **base,
            domain_type="qemu",
            direct_boot=("/l/vmlinux", "/l/guest.img", "quiet"),
            installer=False,
        ),
        "thin-disk": DomainSpec(
            **{**base, "disks": [DiskSpec("/r/v1-disk0", "vda", "qcow2")]}, domain_type="qemu"
        ),
    }
    for name, spec in shapes.items():
        path = Path(str(tmp_path)) / f"{name}.xml"
        path.write_text(domain_xml(spec))
        res = subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout, res.stderr, path.read_text())
    # a migration's destination definition, repinned from the pinned shape, is valid too,
    # and so are a definition whose ISO was ejected or changed
    derived = {
        "repinned": repin_domain_xml(domain_xml(shapes["pinned"]), {1: [3]}),
        "unpinned": repin_domain_xml(domain_xml(shapes["pinned"]), {}),
        "ejected": replace_cdrom_xml(domain_xml(shapes["from-iso"]), None),
        "inserted": replace_cdrom_xml(domain_xml(shapes["empty-drive"]), "/r/other.iso"),
    }
    for name, xml in derived.items():
        path = Path(str(tmp_path)) / f"{name}.xml"
        path.write_text(xml)
        res = subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout, res.stderr, path.read_text())


def test_pinning_is_written_as_cputune_and_read_back() -> None:
    spec = DomainSpec(
        uuid="6f1c0e0e-0000-4000-8000-000000000009",
        name="p1",
        vcpus=2,
        memory_mib=96,
        pinning={1: [3, 2], 0: [5]},
    )
    xml = domain_xml(spec)
    pins = ET.fromstring(xml).findall("cputune/vcpupin")
    assert [(p.get("vcpu"), p.get("cpuset")) for p in pins] == [("0", "5"), ("1", "2,3")]
    assert vcpu_pins(xml) == {0: [5], 1: [2, 3]}
    assert vcpu_pins(repin_domain_xml(xml, {0: [1]})) == {0: [1]}
    assert ET.fromstring(repin_domain_xml(xml, {})).find("cputune") is None
    # libvirt's own syntax, ranges and exclusions
    assert vcpu_pins(xml.replace('cpuset="5"', 'cpuset="0-3,^1"')) == {0: [0, 2, 3], 1: [2, 3]}


def test_a_user_mode_nic_has_no_network_source() -> None:
    spec = DomainSpec(
        uuid="6f1c0e0e-0000-4000-8000-000000000003",
        name="v3",
        vcpus=1,
        memory_mib=96,
        domain_type="qemu",
        nics=[NicSpec("net-a", "52:54:00:00:00:04", user_mode=True)],
    )
    nic = ET.fromstring(domain_xml(spec)).find("devices/interface")
    assert nic is not None and nic.attrib["type"] == "user"
    assert nic.find("source") is None
    assert nic.find("mac").attrib["address"] == "52:54:00:00:00:04"


def test_a_vm_from_an_iso_boots_its_cdrom_first_and_the_iso_can_change() -> None:
    spec = DomainSpec(
        uuid="6f1c0e0e-0000-4000-8000-00000000000a",
        name="i1",
        vcpus=1,
        memory_mib=96,
        disks=[DiskSpec("/r/i1-disk0", "vda")],
        cdrom=CdromSpec("/r/debian.iso"),
        boot=["cdrom", "hd"],
    )
    xml = domain_xml(spec)
    root = ET.fromstring(xml)
    assert [b.get("dev") for b in root.findall("os/boot")] == ["cdrom", "hd"]
    [cd] = [d for d in root.findall("devices/disk") if d.get("device") == "cdrom"]
    assert cd.find("readonly") is not None and cd.find("target").get("bus") == "sata"
    assert cdrom_source(xml) == "/r/debian.iso"
    ejected = replace_cdrom_xml(xml, None)
    assert cdrom_source(ejected) is None
    assert cdrom_source(replace_cdrom_xml(ejected, "/r/b.iso")) == "/r/b.iso"
    # the disks are left as they were
    assert ET.fromstring(ejected).find("devices/disk/source").get("file") == "/r/i1-disk0"
    assert (
        cdrom_source(domain_xml(DomainSpec(uuid=spec.uuid, name="n", vcpus=1, memory_mib=64)))
        is None
    )
