"""Registering servers over the API: a real libvirtd started by the test (libvirt's test
driver) is discovered by a worker, joins its pool and takes VMs; one that does not see the
pool's repository is refused saying so; a server with VMs is not removed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.lab.libvirtd import LibvirtDaemon
from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc
from workers.hypervisor.adapter import Hypervisor, KeptOpen

pytestmark = pytest.mark.integration


@pytest.fixture
def daemons() -> Iterator[Any]:
    started: list[tuple[LibvirtDaemon, KeptOpen]] = []
    base = Path(tempfile.mkdtemp(prefix="vmorch-reg-", dir="/tmp"))
    base.chmod(0o755)

    def start(name: str, *, repo: bool) -> str:
        d = LibvirtDaemon(name, base / name)
        uri = d.start().uri
        hv = Hypervisor(uri)
        kept = hv.keep_open()  # the test driver keeps its state while a connection is open
        started.append((d, kept))
        hv.remove_all_domains()
        hv.ensure_network("net-a")
        if repo:
            (base / "repo").mkdir(exist_ok=True)
            hv.ensure_dir_pool("repo-a", str(base / "repo"))
            hv.create_volume("repo-a", "tmpl-a-root.img", 1 << 30)
        hv.close()
        return uri

    yield start
    for d, kept in started:
        kept.close()
        d.stop()


def test_a_registered_server_is_discovered_joins_its_pool_and_takes_vms(
    api: Api, worker: Proc, fleet: Inventory, daemons: Any
) -> None:
    uri = daemons("srv-new", repo=True)
    status, body = api.request(
        "POST", "/v1/servers", {"name": "srv-new", "pool": "pool-a", "uri": uri}
    )
    assert status == 202, body
    job = api.wait(body["job"])
    assert job["state"] == "succeeded" and job["kind"] == "server.discover", job
    pool = api.call("GET", "/v1/pools")
    assert "srv-new" in next(p for p in pool if p["name"] == "pool-a")["servers"]
    server = api.call("GET", "/v1/servers/srv-new")
    d = server["discovery"]
    assert d["hypervisor"].startswith("TEST") and d["libvirt_version"].count(".") == 2
    assert d["cpus"] == 8 and d["sockets"] * d["cores_per_socket"] * d["threads_per_core"] == 8
    assert "repo-a" in d["storage_pools"] and "net-a" in d["networks"]
    assert server["memory_mib"] == d["memory_mib"] > 0
    # it takes a VM asked for there
    made = api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                    "name": "onnew", "server": "srv-new"})  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    assert api.call("GET", "/v1/vms/onnew")["server"] == "srv-new"
    # a server with a VM is not removed; an empty one is, and leaves its pool
    status, body = api.request("DELETE", "/v1/servers/srv-new")
    assert status == 409 and "onnew" in body["error"]["message"]
    assert api.run({"kind": "vm.delete", "vm": "onnew", "force": True})["state"] == "succeeded"
    status, body = api.request("DELETE", "/v1/servers/srv-new")
    assert status == 200 and body["name"] == "srv-new"
    assert api.request("GET", "/v1/servers/srv-new")[0] == 404
    pool = api.call("GET", "/v1/pools")
    assert "srv-new" not in next(p for p in pool if p["name"] == "pool-a")["servers"]


def test_a_server_that_cannot_serve_its_pool_is_refused(
    api: Api, worker: Proc, fleet: Inventory, daemons: Any
) -> None:
    uri = daemons("srv-bare", repo=False)
    status, body = api.request(
        "POST", "/v1/servers", {"name": "srv-bare", "pool": "pool-a", "uri": uri}
    )
    assert status == 202, body
    job = api.wait(body["job"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "discovery_refused"
    assert "does not see the repository repo-a" in job["error"]["message"]
    pool = api.call("GET", "/v1/pools")
    assert "srv-bare" not in next(p for p in pool if p["name"] == "pool-a")["servers"]
    # bad registrations name the field
    for reg, loc in (
        ({"name": "x", "pool": "pool-a", "uri": "qemu+ssh://h/system?command=/bin/sh"}, "uri"),
        ({"name": "x", "pool": "pool-a", "uri": "qemu+ext:///system"}, "uri"),
        ({"name": "x", "pool": "nope", "uri": "qemu:///system"}, "pool"),
    ):
        status, body = api.request("POST", "/v1/servers", reg)
        assert status == 422 and body["error"]["details"][0]["loc"] == ["body", loc], body
    status, body = api.request(
        "POST", "/v1/servers", {"name": "srv-a1", "pool": "pool-a", "uri": "qemu:///system"}
    )
    assert status == 409
