"""Provision from a template and drive every lifecycle job, checked through libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import libvirt
import pytest

from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, find_domains, wait_until

pytestmark = pytest.mark.integration


def create(api: Api, name: str, **extra: object) -> dict[str, object]:
    body = {
        "kind": "vm.create_from_template",
        "pool": "pool-a",
        "template": "tmpl-a-2disk",
        "name": name,
        **extra,
    }
    return api.run(body)


def test_create_from_template_runs_the_vm_with_the_shape_asked_for(
    api: Api, worker: Proc, fleet: Inventory
) -> None:
    # given the lab's pool-a and its two-disk template
    # when a VM is created with 3 vCPUs, 1536 MiB and two NICs on the pool's network
    job = create(
        api,
        "web1",
        vcpus=3,
        memory_mib=1536,
        vnics=[{"network": "net-a"}, {"network": "net-a", "mac": "52:54:00:aa:bb:cc"}],
    )
    # then the job succeeded through every step
    assert job["state"] == "succeeded", job
    assert [s["state"] for s in job["steps"]] == ["done"] * 5
    assert job["submitted_by"] == "admin" and job["progress"] == 1.0
    # and exactly one server of pool-a runs it, with that shape
    found = find_domains(fleet, "web1")
    assert len(found) == 1
    server, dom = found[0]
    assert server in {"srv-a1", "srv-a2"}
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert dom.UUIDString() == job["links"]["vm_id"]
    root = ET.fromstring(dom.XMLDesc())
    assert root.findtext("vcpu") == "3"
    assert int(root.findtext("memory")) == 1536 * 1024  # KiB
    disks = [d.attrib["file"] for d in root.findall("devices/disk/source")]
    prefix = f"web1-{job['links']['vm_id'][:8]}"
    assert [p.rsplit("/", 1)[1] for p in disks] == [f"{prefix}-disk0", f"{prefix}-disk1"]
    macs = [m.attrib["address"] for m in root.findall("devices/interface/mac")]
    nets = [n.attrib["network"] for n in root.findall("devices/interface/source")]
    assert nets == ["net-a", "net-a"] and macs[1] == "52:54:00:aa:bb:cc"
    repo = dom.connect().storagePoolLookupByName("repo-a")
    assert {f"{prefix}-disk0", f"{prefix}-disk1"} <= set(repo.listVolumes())
    # and the API reports it, state read from the hypervisor
    status, vm = api.request("GET", "/v1/vms/web1")
    assert status == 200 and vm["state"] == "running" and vm["server"] == server


def state_of(fleet: Inventory, name: str) -> int:
    [(_, dom)] = find_domains(fleet, name)
    return int(dom.state()[0])


def test_every_lifecycle_job(api: Api, worker: Proc, fleet: Inventory) -> None:
    assert create(api, "life1")["state"] == "succeeded"
    expect = [
        ({"kind": "vm.suspend"}, libvirt.VIR_DOMAIN_PAUSED),
        ({"kind": "vm.resume"}, libvirt.VIR_DOMAIN_RUNNING),
        ({"kind": "vm.stop", "timeout_s": 5}, libvirt.VIR_DOMAIN_SHUTOFF),
        ({"kind": "vm.start"}, libvirt.VIR_DOMAIN_RUNNING),
        ({"kind": "vm.restart"}, libvirt.VIR_DOMAIN_RUNNING),
        ({"kind": "vm.kill"}, libvirt.VIR_DOMAIN_SHUTOFF),
    ]
    for body, state in expect:
        job = api.run({**body, "vm": "life1"})
        assert job["state"] == "succeeded", job
        assert state_of(fleet, "life1") == state, body
    # restart really stopped and started the domain
    restart = api.request("GET", "/v1/jobs?kind=vm.restart")[1]["items"][0]
    assert [s["name"] for s in restart["steps"]] == ["stop", "start"]


def test_delete_with_and_without_disks(api: Api, worker: Proc, fleet: Inventory) -> None:
    ids = {}
    for name in ("del1", "del2"):
        job = create(api, name, start=False)
        assert job["state"] == "succeeded"
        ids[name] = job["links"]["vm_id"][:8]
    assert api.run({"kind": "vm.delete", "vm": "del1"})["state"] == "succeeded"
    assert (
        api.run({"kind": "vm.delete", "vm": "del2", "delete_disks": False})["state"] == "succeeded"
    )
    assert find_domains(fleet, "del1") == [] and find_domains(fleet, "del2") == []
    vols: set[str] = set()
    for s in fleet.servers:
        if s.pool == "pool-a":
            vols |= set(libvirt.open(s.uri).storagePoolLookupByName("repo-a").listVolumes())
    assert not [v for v in vols if v.startswith("del1-")]
    assert {f"del2-{ids['del2']}-disk0", f"del2-{ids['del2']}-disk1"} <= vols
    assert api.request("GET", "/v1/vms/del1")[0] == 404
    # a new VM of a deleted one's name gets disks of its own; the kept ones stay untouched
    again = create(api, "del2", start=False)
    assert again["state"] == "succeeded"
    [(_, dom)] = find_domains(fleet, "del2")
    files = [d.attrib["file"] for d in ET.fromstring(dom.XMLDesc()).findall("devices/disk/source")]
    assert all(again["links"]["vm_id"][:8] in f for f in files)
    kept = libvirt.open(next(s.uri for s in fleet.servers if s.pool == "pool-a"))
    assert f"del2-{ids['del2']}-disk0" in kept.storagePoolLookupByName("repo-a").listVolumes()


def test_vm_state_follows_changes_made_outside_vmorch(
    api: Api, worker: Proc, fleet: Inventory, env: dict[str, str], workdir: object
) -> None:
    import pathlib

    from tests.integration.conftest import Proc as P

    assert create(api, "ext1", vcpus=1)["state"] == "succeeded"
    [(server, dom)] = find_domains(fleet, "ext1")
    agent = P(["agent", "--server", server], env, pathlib.Path(str(workdir)) / "agent.log")
    try:
        dom.suspend()  # behind vmorch's back
        wait_until(
            lambda: api.request("GET", "/v1/vms/ext1")[1]["state"] == "suspended",
            10,
            "the agent to observe the pause",
        )
    finally:
        agent.stop()


def test_cold_migration_between_test_driver_servers(
    api: Api, worker: Proc, fleet: Inventory
) -> None:
    # given: a stopped VM on one of pool-a's test-driver servers
    job = create(api, "mig1", start=False)
    assert job["state"] == "succeeded", job
    [(source, _)] = find_domains(fleet, "mig1")
    # when: it is migrated (stopped: cold by default), then live (refused: not running)
    cold = api.run({"kind": "vm.migrate", "vm": "mig1"})
    live = api.run({"kind": "vm.migrate", "vm": "mig1", "live": True})
    # then: it is defined on the pool's other server only, and its record says so
    assert cold["state"] == "succeeded", cold["error"]
    target = cold["steps"][0]["outputs"]["target"]
    assert target != source and cold["steps"][0]["outputs"]["mode"] == "cold"
    assert [s for s, _ in find_domains(fleet, "mig1")] == [target]
    assert api.request("GET", "/v1/vms/mig1")[1]["server"] == target
    assert live["state"] == "failed" and live["error"]["code"] == "migration_refused"
    assert "needs it running" in live["error"]["message"]
    # and it starts there
    assert api.run({"kind": "vm.start", "vm": "mig1"})["state"] == "succeeded"
    [(_, dom)] = find_domains(fleet, "mig1")
    assert dom.isActive()


def test_fifty_concurrent_creates_never_share_a_mac(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # given: two workers, and 50 creates with a vNIC each sent at once
    start_worker(concurrency=2)
    start_worker(concurrency=2)

    def submit(i: int) -> str:
        return api.submit({"kind": "vm.create_from_template", "pool": "pool-a",
                           "template": "tmpl-a", "name": f"mc{i}", "start": False,
                           "vnics": [{"network": "net-a"}]})["id"]  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(50)))
    done = [api.wait(j, timeout_s=120) for j in ids]
    assert {d["state"] for d in done} == {"succeeded"}, [d["error"] for d in done]
    # then: 50 MACs, all different, in the records and in libvirt's domains
    recorded = [api.request("GET", f"/v1/vms/mc{i}")[1]["nics"][0]["mac"] for i in range(50)]
    assert len(set(recorded)) == 50
    in_libvirt = set()
    for i in range(50):
        [(_, dom)] = find_domains(fleet, f"mc{i}")
        [mac] = [m.attrib["address"] for m in ET.fromstring(dom.XMLDesc()).findall(".//mac")]
        in_libvirt.add(mac)
    assert in_libvirt == set(recorded)


def test_twenty_concurrent_creates_never_overcommit_a_server(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.conftest import hv

    # given: pool-a's two servers, and 20 creates of 1 GiB VMs sent at once to four worker
    # slots, more than the servers hold
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    total = {}
    for s in ("srv-a1", "srv-a2"):
        conn = hv(fleet, s)
        total[s] = conn.getInfo()[1]
        conn.close()
    fit = sum(t // 1024 for t in total.values())
    assert 2 <= fit < 20, total

    def submit(i: int) -> str:
        body = {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                "name": f"oc{i}", "memory_mib": 1024}  # fmt: skip
        return str(api.submit(body)["id"])

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(submit, range(20)))
    done = [api.wait(j, timeout_s=120) for j in ids]
    # then: as many as fit succeeded, the others failed saying there was no room, and no
    # server runs more memory than it has
    ok = [d for d in done if d["state"] == "succeeded"]
    refused = [d for d in done if d["state"] == "failed"]
    assert len(ok) == fit and len(refused) == 20 - fit, [d["error"] for d in done]
    assert {d["error"]["code"] for d in refused} == {"no_capacity"}
    for s, t in total.items():
        conn = hv(fleet, s)
        try:
            used = sum(d.maxMemory() for d in conn.listAllDomains(1)) // 1024
        finally:
            conn.close()
        assert used <= t, (s, used, t)
