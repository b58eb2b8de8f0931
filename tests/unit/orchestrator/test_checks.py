"""The migration pre-checks as one pure function: every refusal, each with its reason."""

from __future__ import annotations

from typing import Any

from orchestrator.jobs.checks import assess
from schemas.inventory import (
    AntiAffinityGroup,
    CpuGroup,
    Network,
    Repository,
    ServerFacts,
    ServerPool,
    Vm,
    VmNic,
)

POOL = ServerPool(
    name="p",
    repository=Repository(name="repo"),
    networks=[Network(name="net")],
    servers=["s1", "s2", "s3"],
    cpu_groups=[CpuGroup(name="intel", servers=["s1", "s2"]), CpuGroup(name="amd", servers=["s3"])],
    anti_affinity_groups=[AntiAffinityGroup(name="db", vms=["db1", "db2"])],
)
VM = Vm(
    id="0f0e2c3a-1b2c-4d5e-8f90-123456789abc",
    name="db1",
    pool="p",
    server="s1",
    memory_mib=512,
    vcpus=2,
    nics=[VmNic(network="net", mac="52:54:00:00:00:01")],
)
FACTS = ServerFacts(cpus=4, memory_mib=4096, memory_free_mib=2048, networks=["net"],
                    storage_pools=["repo"])  # fmt: skip


def why(server: str = "s2", vm: Vm = VM, facts: ServerFacts | None = FACTS, **kw: Any) -> str:
    v = assess(vm, POOL, server, facts, **{"live": True, **kw})
    return v.reason if not v.ok else f"ok: {v.reason}"


def test_every_refusal_names_its_check() -> None:
    assert why() == "ok: 2048 MiB free"
    assert why("s9") == "not a server of pool p"
    assert why("s1") == "the VM is on this server already"
    assert why(maintenance=True) == "in maintenance"
    assert "CPU compatibility group amd, the VM's server is in intel" in why("s3")
    assert why("s3", live=False) == "ok: can define it"  # cold: any group
    assert why(vms_there={"db2", "web"}) == "anti-affinity group db: db2 runs there"
    assert why(vms_there={"db1"}) == "ok: 2048 MiB free"  # itself does not count
    pinned = VM.model_copy(update={"pinning": {"0": [1]}})
    assert "pinned to physical CPUs" in why(vm=pinned)
    assert why(vm=pinned, pinning="drop") == "ok: 2048 MiB free"
    assert "physical CPU 7 does not exist there" in why(vm=pinned, pinning={"0": [7]})
    assert why(vm=pinned, live=False) == "ok: can define it"  # cold: its own pinning fits
    assert why(facts=None, unreachable="no answer within 5 s") == (
        "unreachable (no answer within 5 s)"
    )
    assert (
        why(facts=FACTS.model_copy(update={"networks": []})) == "network(s) net not defined there"
    )
    assert "repository repo" in why(facts=FACTS.model_copy(update={"storage_pools": []}))
    low = FACTS.model_copy(update={"memory_free_mib": 100})
    assert why(facts=low) == "100 MiB free, the VM needs 512 MiB"
    assert why(facts=low, live=False) == "ok: can define it"
