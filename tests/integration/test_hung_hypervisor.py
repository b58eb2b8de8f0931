"""A hung hypervisor (its libvirtd stopped with SIGSTOP): calls to it end at their deadline,
an abort interrupts them, placement goes around it, and it works again once resumed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from orchestrator.lab.lab import Lab
from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, wait_until

pytestmark = pytest.mark.integration

CREATE = {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a"}
DEADLINE_S = 3.0


@contextmanager
def stopped(lab: Lab, server: str) -> Iterator[None]:
    """The server's libvirtd stopped (it accepts connections and never answers)."""
    pid = lab.daemons[server].info.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_hung_server_fails_calls_at_their_deadline_and_an_abort_interrupts_them(
    api: Api,
    start_worker: Callable[..., Proc],
    agents: dict[str, Proc],
    lab: tuple[Lab, Inventory],
) -> None:
    # given one worker slot whose libvirt calls get DEADLINE_S, and a stopped VM on srv-a2
    worker = start_worker(
        concurrency=1, libvirt_call_timeout_s=str(DEADLINE_S), libvirt_retry_s="1"
    )
    made = api.run({**CREATE, "name": "hung1", "server": "srv-a2", "start": False})
    assert made["state"] == "succeeded", made
    # when srv-a2's libvirtd hangs
    with stopped(lab[0], "srv-a2"):
        # then a start on srv-a2 is stuck in its hypervisor call, and an abort ends it
        job = api.submit({"kind": "vm.start", "vm": "hung1"})
        wait_until(lambda: _step(api, job["id"])["state"] == "running", 10, "start running")
        t0 = time.monotonic()
        assert api.request("POST", f"/v1/jobs/{job['id']}/abort")[0] == 202
        aborted = api.wait(job["id"], timeout_s=10)
        assert aborted["state"] == "aborted", aborted
        assert time.monotonic() - t0 < DEADLINE_S  # the call was interrupted, not waited out

        # and without an abort, each attempt fails as retryable within the deadline
        job = api.submit({"kind": "vm.start", "vm": "hung1"})
        t0 = time.monotonic()
        first = wait_until(lambda: _step(api, job["id"])["error"], DEADLINE_S + 3, "attempt 1")
        assert first["retryable"] is True and first["code"] == "hypervisor_unavailable", first
        failed = api.wait(job["id"], timeout_s=30)
        assert failed["state"] == "failed" and failed["steps"][0]["attempts"] >= 2, failed
        assert failed["error"]["code"] == "hypervisor_unavailable", failed

        # and the same slot still creates in pool-a: placement goes around srv-a2
        job = api.run({**CREATE, "name": "hung2"}, timeout_s=30)
        assert job["state"] == "succeeded", job
        place = next(s for s in job["steps"] if s["name"] == "place")["outputs"]
        assert place["server"] == "srv-a1"
        assert place["placement"]["srv-a2"].startswith("unreachable"), place
        assert worker.p.poll() is None
    # then, once srv-a2 answers again, so do the calls to it
    again = api.run({"kind": "vm.start", "vm": "hung1"}, timeout_s=40)
    assert again["state"] == "succeeded", (again["error"], again["steps"])


def _step(api: Api, job_id: str) -> dict[str, Any]:
    steps = api.job(job_id)["steps"]
    return dict(steps[0]) if steps else {"state": "none", "error": None}
