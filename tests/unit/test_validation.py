"""Request validation and XML building."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from schemas.requests import job_request_adapter
from workers.hypervisor.xml import DiskSpec, DomainSpec, NicSpec, domain_xml

BASE = {"kind": "vm.create_from_template", "pool": "p", "template": "t", "name": "ok"}


@pytest.mark.parametrize(
    "name", ["", "../etc", "a/b", "x\ny", "-lead", "a" * 64, "sp ace", "a..b", "nul\x00"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as e:
        job_request_adapter.validate_python({**BASE, "name": name})
    assert e.value.errors()[0]["loc"][-1] == "name"


@pytest.mark.parametrize(
    "patch",
    [
        {"vcpus": 0},
        {"memory_mib": 1},
        {"vcpus": "two"},
        {"unknown": 1},
        {"vnics": [{"network": "n", "mac": "zz"}]},
    ],
)
def test_bad_fields_are_refused(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        job_request_adapter.validate_python({**BASE, **patch})


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        job_request_adapter.validate_python({"kind": "vm.explode", "vm": "x"})


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


def test_names_follow_the_pattern_their_schema_shows() -> None:
    import re

    from pydantic import TypeAdapter

    from schemas.base import Name

    adapter = TypeAdapter(Name)
    schema = adapter.json_schema()
    shown = re.compile(schema["pattern"])
    for name in ["web1", "a", "a.b", "a.", "a_b-c.d", "A" * 63]:
        adapter.validate_python(name)
        assert shown.search(name) and len(name) <= schema["maxLength"]
    for name in ["", ".a", "a..b", "-a", "a/b", "a b", "web1\n", "A" * 64]:
        with pytest.raises(ValidationError):
            adapter.validate_python(name)
        assert not (shown.fullmatch(name) and len(name) <= schema["maxLength"]), name


def test_the_documented_job_kinds_are_the_accepted_ones() -> None:
    from typing import get_args

    from schemas.requests import INTERNAL_KINDS, ClientJobRequest, JobRequest

    def kinds(union: object) -> set[str]:
        members = get_args(get_args(union)[0])
        return {get_args(m.model_fields["kind"].annotation)[0] for m in members}

    assert kinds(ClientJobRequest) == kinds(JobRequest) - INTERNAL_KINDS
    assert kinds(JobRequest) >= INTERNAL_KINDS
