"""Domain XML: built from a spec with ElementTree, so names cannot inject markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from workers.hypervisor.xml import DiskSpec, DomainSpec, NicSpec, domain_xml


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
    }
    for name, spec in shapes.items():
        path = Path(str(tmp_path)) / f"{name}.xml"
        path.write_text(domain_xml(spec))
        res = subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout, res.stderr, path.read_text())


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
