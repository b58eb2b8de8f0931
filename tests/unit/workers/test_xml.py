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
