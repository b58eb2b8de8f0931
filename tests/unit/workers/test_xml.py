"""Domain XML: built from a spec with ElementTree, so names cannot inject markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from workers.hypervisor.xml import (
    DiskSpec,
    DomainSpec,
    NicSpec,
    domain_xml,
    repin_domain_xml,
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
    }
    for name, spec in shapes.items():
        path = Path(str(tmp_path)) / f"{name}.xml"
        path.write_text(domain_xml(spec))
        res = subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout, res.stderr, path.read_text())
    # a migration's destination definition, repinned from the pinned shape, is valid too
    for name, pinning in {"repinned": {1: [3]}, "unpinned": {}}.items():
        path = Path(str(tmp_path)) / f"{name}.xml"
        path.write_text(repin_domain_xml(domain_xml(shapes["pinned"]), pinning))
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
