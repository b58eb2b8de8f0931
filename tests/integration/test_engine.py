"""The engine on real parts: abort, per-VM order, compensation, a SIGKILLed worker."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import libvirt
import pytest

from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, find_domains, wait_until

pytestmark = pytest.mark.integration

CREATE = {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a-2disk"}


def test_abort_of_a_queued_job(api: Api, start_worker: Callable[..., Proc]) -> None:
    # given no worker yet, a queued job
    job = api.submit({"kind": "noop", "steps": 3})
    assert api.job(job["id"])["state"] == "queued"
    # when it is aborted
    status, aborted = api.request("POST", f"/v1/jobs/{job['id']}/abort", {"reason": "not now"})
    # then it is dropped at once and never runs, even once a worker comes
    assert status == 202 and aborted["state"] == "aborted"
    start_worker()
    later = api.submit({"kind": "noop", "steps": 1})
    api.wait(later["id"])
    final = api.job(job["id"])
    assert final["state"] == "aborted" and final["steps"] == [] and final["started_at"] is None


def test_abort_of_a_running_job_undoes_its_done_steps(api: Api, worker: Proc) -> None:
    job = api.submit({"kind": "noop", "steps": 4, "step_delay_ms": 700})
    api.wait(job["id"], {"running"})
    wait_until(lambda: api.job(job["id"])["steps"][0]["state"] == "done", 10, "step 1 done")
    assert api.request("POST", f"/v1/jobs/{job['id']}/abort")[0] == 202
    final = api.wait(job["id"])
    assert final["state"] == "aborted"
    states = [s["state"] for s in final["steps"]]
    assert states[0] == "undone" and states[-1] == "skipped"
    assert "done" not in states and "running" not in states


def test_two_jobs_on_one_vm_run_in_submission_order(
    api: Api, start_worker: Callable[..., Proc]
) -> None:
    start_worker(concurrency=2, chaos_step_delay_ms="400")
    assert api.run({**CREATE, "name": "ord1", "start": False})["state"] == "succeeded"
    first = api.submit({"kind": "vm.start", "vm": "ord1"})
    second = api.submit({"kind": "vm.suspend", "vm": "ord1"})
    # while the first holds the VM, the second says it waits, and for which job
    waiting = api.job(second["id"])
    assert waiting["state"] == "queued"
    assert waiting["waiting_for_job"] == first["id"] and waiting["vm_queue_position"] == 1
    _status, vm = api.request("GET", "/v1/vms/ord1")
    assert vm["operations"] == [first["id"], second["id"]]
    a, b = api.wait(first["id"]), api.wait(second["id"])
    assert a["state"] == b["state"] == "succeeded"
    assert a["ended_at"] <= b["started_at"]


def test_a_step_that_fails_for_good_leaves_no_orphan_volume_or_domain(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given a worker on which the create workflow's last step fails for good
    start_worker(chaos_fail_steps='["vm.create_from_template:start"]')
    # when a VM is created
    job = api.run({**CREATE, "name": "orphan1"})
    # then the job failed, its done steps were undone in reverse
    assert job["state"] == "failed"
    assert [s["state"] for s in job["steps"]] == ["undone", "undone", "undone", "undone", "failed"]
    assert job["undone_steps"] == ["reserve", "place", "clone_disks", "define"]
    # and libvirt holds no domain or volume of it on any server
    assert find_domains(fleet, "orphan1") == []
    for s in fleet.servers:
        if s.pool == "pool-a":
            vols = libvirt.open(s.uri).storagePoolLookupByName("repo-a").listVolumes()
            assert not [v for v in vols if v.startswith("orphan1")]
    assert api.request("GET", "/v1/vms/orphan1")[0] == 404


def test_a_sigkilled_worker_loses_nothing_and_does_nothing_twice(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given a slow worker running a create job
    slow = start_worker(chaos_step_delay_ms="1500")
    job = api.submit({**CREATE, "name": "chaos1"})

    def in_define() -> bool:
        steps = api.job(job["id"])["steps"]
        return bool(steps) and steps[3]["state"] == "running"

    wait_until(in_define, 30, "the define step to start")
    # when the worker is SIGKILLed mid-step and another worker is started
    killed_at = datetime.now(UTC)
    slow.kill(signal.SIGKILL)
    slow.p.wait(10)
    start_worker()
    ready_at = datetime.now(UTC)
    # then the job still succeeds: the step ran again, within the documented bound of
    # lease_ms + sweep_interval_s after the kill (or as soon as a worker was there)
    final = api.wait(job["id"], timeout_s=60)
    assert final["state"] == "succeeded", final
    define = final["steps"][3]
    assert define["name"] == "define" and define["attempts"] == 2
    bound = max(killed_at + timedelta(seconds=3.0 + 0.3), ready_at)  # ENGINE_ENV's values
    rerun = datetime.fromisoformat(define["started_at"])
    assert rerun <= bound + timedelta(seconds=1.0), (rerun - killed_at, ready_at - killed_at)
    assert [s["attempts"] for s in final["steps"][:3]] == [1, 1, 1]
    # and each effect happened once: one domain on one server, one clone of each disk
    found = find_domains(fleet, "chaos1")
    assert len(found) == 1 and found[0][1].state()[0] == libvirt.VIR_DOMAIN_RUNNING
    vols: list[str] = []
    for s in fleet.servers:
        if s.pool == "pool-a":
            vols += libvirt.open(s.uri).storagePoolLookupByName("repo-a").listVolumes()
    prefix = f"chaos1-{final['links']['vm_id'][:8]}"
    assert sorted(v for v in vols if v.startswith("chaos1")) == [
        f"{prefix}-disk0",
        f"{prefix}-disk1",
    ]


def test_idempotency_key_over_http(api: Api, worker: Proc) -> None:
    body = {"kind": "noop", "steps": 1}
    key = {"Idempotency-Key": "deploy-42"}
    s1, j1 = api.request("POST", "/v1/jobs", body, headers=key)
    s2, j2 = api.request("POST", "/v1/jobs", body, headers=key)
    s3, err = api.request("POST", "/v1/jobs", {"kind": "noop", "steps": 2}, headers=key)
    assert (s1, s2, s3) == (202, 202, 409)
    assert j1["id"] == j2["id"]
    assert err["error"]["code"] == "conflict"
    assert api.request("GET", "/v1/jobs?kind=noop")[1]["items"].__len__() == 1


def test_queue_status_shows_depth_and_workers(api: Api, start_worker: Callable[..., Proc]) -> None:
    jobs = [api.submit({"kind": "noop", "steps": 1}) for _ in range(3)]
    status, q = api.request("GET", "/v1/queue")
    assert status == 200
    default = next(x for x in q["queues"] if x["queue"] == "vmorch.noop")
    assert default["depth"] == 3 and default["oldest_job_age_s"] >= 0
    start_worker()
    for j in jobs:
        api.wait(j["id"])
    _status, q = api.request("GET", "/v1/queue")
    assert next(x for x in q["queues"] if x["queue"] == "vmorch.noop")["depth"] == 0
    assert any("vmorch.pool.pool-a" in w["queues"] for w in q["workers"])
