"""The qemu tier with a real guest: `vmorch up --kind qemu` offers `tmpl-guest` (Debian's
kernel booting vmorch's guest program from an initramfs built from Debian packages), and
first-boot configuration, secrets and live migration are checked end to end. Its default
handler records each key and reports a SHA-256 of the value back (`applied.<key>`)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import events, redis_holding, wait_until
from tests.integration.upkit import Up

pytestmark = pytest.mark.integration
SECRET = "root-Pw-7Hq2-only-in-the-guest"


def sha(v: str) -> str:
    return hashlib.sha256(v.encode()).hexdigest()


def test_first_boot_on_a_real_guest_and_a_message_across_a_live_migration(
    start_up: Any,
) -> None:
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    assert "tmpl-guest" in up.state()["templates"]
    # when: a VM from tmpl-guest with first-boot configuration, one value secret
    t0 = time.monotonic()
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "g1", "pool": "pool-a",
         "template": "tmpl-guest", "server": "srv-a1", "config_timeout_s": 120,
         "config": [{"key": "hostname", "value": "web1"},
                    {"key": "expect.root_password", "value": sha(SECRET)},
                    {"key": "root_password", "value": SECRET, "secret": True}]},
        timeout_s=180,
    )  # fmt: skip
    configured_s = time.monotonic() - t0
    assert job["state"] == "succeeded", (job["error"], job["steps"])
    vm_id = job["links"]["vm_id"]
    # then: the guest's handler ran with the right values (its digests reported back)
    answers = job["steps"][-2]["outputs"]["vms"]["g1"]["messages"]
    assert [(m["key"], m["status"]) for m in answers] == [
        ("hostname", "acknowledged"), ("expect.root_password", "acknowledged"),
        ("root_password", "acknowledged"),
    ]  # fmt: skip
    assert answers[0]["result"] == {"output": "applied hostname"}

    def reported() -> dict[str, str] | None:
        keys = up.api.call("GET", f"/v1/vms/{vm_id}/guest")["keys"]
        return keys if "applied.root_password" in keys and "applied.hostname" in keys else None

    keys = wait_until(reported, 30, "the guest's reports")
    assert keys["applied.hostname"] == sha("web1")
    # (for a secret, only whether it matched the digest given before leaves the guest)
    assert keys["applied.root_password"] == "match"
    guest = up.api.call("GET", f"/v1/vms/{vm_id}/guest")
    assert guest["connected"] and guest["version"] == "1.0.0" and guest["server"] == "srv-a1"
    [ready] = events(up.state()["redis_url"], "guest.ready", vm_id)[:1]
    # the secret is nowhere but in the guest
    assert SECRET not in json.dumps(up.api.call("GET", f"/v1/jobs/{job['id']}"))
    assert not redis_holding(up.state()["redis_url"], SECRET)
    for log in Path(up.state()["lab_dir"]).glob("logs/*.log"):
        assert SECRET not in log.read_text(errors="replace"), log.name

    # and its QEMU guest agent (qemu-ga in the image) answers through libvirt
    agent = wait_until(
        lambda: up.api.call("GET", f"/v1/vms/{vm_id}/guest")["qemu_agent"], 30, "qemu-ga"
    )
    assert agent["version"].startswith("7.") and agent["ping_ms"] > 0
    lo = next(i for i in agent["interfaces"] if i["name"] == "lo")
    assert "127.0.0.1/8" in lo["addresses"]

    # when: a message whose handler takes 3 s is sent, and the VM migrates live meanwhile
    msg = up.api.submit(
        {"kind": "vm.message", "vms": ["g1"], "timeout_s": 120,
         "messages": [{"key": "slow", "value": "in-flight"}]}
    )  # fmt: skip
    r = redis.Redis.from_url(up.state()["redis_url"], decode_responses=True)
    try:  # its record says delivered (its handler runs 3 s): now the VM moves
        wait_until(
            lambda: r.hget(f"vmorch:gmsg:{msg['id']}.0.0", "status") == "delivered",
            60,
            "the message to reach the guest",
        )
    finally:
        r.close()
    moved = up.api.run({"kind": "vm.migrate", "vm": "g1", "target_server": "srv-a2"}, timeout_s=120)
    assert moved["state"] == "succeeded", moved["error"]
    done = up.api.wait(msg["id"], timeout_s=120)
    # then: acknowledged, on the target, and handled once
    assert done["state"] == "succeeded", (done["error"], done["steps"])
    [ack] = events(up.state()["redis_url"], "guest.message.acknowledged", msg["id"])
    assert ack["data"]["server"] == "srv-a2" and ack["data"]["key"] == "slow"
    wait_until(
        lambda: up.api.call("GET", f"/v1/vms/{vm_id}/guest")["keys"].get("applied.slow"),
        30,
        "the slow handler's report",
    )
    reports = [
        e
        for e in events(up.state()["redis_url"], "guest.message", vm_id)
        if "applied.slow" in e["data"]["keys"]
    ]
    assert len(reports) == 1, reports  # the handler ran once
    # a graceful stop: this guest's init handles no ACPI button; libvirt asks its agent
    stopped = up.api.run({"kind": "vm.stop", "vm": "g1", "timeout_s": 60}, timeout_s=120)
    assert stopped["state"] == "succeeded", stopped["error"]
    stop = next(s for s in stopped["steps"] if s["name"] == "stop")
    assert not stop["outputs"].get("escalated"), stop  # not forced off
    print(
        f"first boot on QEMU: submit to configured {configured_s:.2f} s; "
        f"guest ready at {ready['time']}"
    )


def test_a_cloud_init_seed_is_a_cidata_iso_on_the_server(start_up: Any) -> None:
    import io

    import pycdlib

    up: Up = start_up("--servers-per-pool", "1", "--kind", "qemu", "--no-guest-image")
    user_data = "#cloud-config\nhostname: ci1\nusers:\n  - name: ops\n"
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "ci1", "pool": "pool-a",
         "template": "tmpl-a", "start": False,
         "cloud_init": {"user_data": user_data, "network_config": "version: 2\n"}},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job["error"]
    vm = up.api.call("GET", "/v1/vms/ci1")
    seed = vm["disks"][-1]
    assert seed["volume"].endswith("-seed") and seed["target"] == "vdb"
    iso = pycdlib.PyCdlib()
    iso.open(seed["path"])
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"

        def read(name: str) -> str:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            return out.getvalue().decode()

        assert read("user-data") == user_data
        assert json.loads(read("meta-data")) == {"instance-id": vm["id"], "local-hostname": "ci1"}
        assert read("network-config") == "version: 2\n"
    finally:
        iso.close()
    assert up.api.run({"kind": "vm.delete", "vm": "ci1"}, timeout_s=60)["state"] == "succeeded"
    assert not Path(seed["path"]).exists()
