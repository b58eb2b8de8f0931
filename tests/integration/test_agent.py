"""The agent on real parts: what it reports of changes it could not see as they happened."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, events, find_domains, wait_until

pytestmark = pytest.mark.integration


def test_a_guest_that_shut_down_while_the_agent_was_away_is_not_restarted_by_ha(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    env: dict[str, str],
    workdir: Path,
    redis_url: str,
    fleet: Inventory,
) -> None:
    # given an HA VM running on srv-b2
    job = api.run(
        {
            "kind": "vm.create_from_template",
            "pool": "pool-b",
            "template": "tmpl-b",
            "name": "away1",
            "ha": True,
            "server": "srv-b2",
        }
    )
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    # when srv-b2's agent is killed, the guest shuts itself down, and the agent comes back
    agents["srv-b2"].kill(signal.SIGKILL)
    agents["srv-b2"].p.wait()
    agents["srv-b2"].stop()  # closes its log
    [(_, dom)] = find_domains(fleet, "away1")
    dom.shutdown()
    agents["srv-b2"] = Proc(
        ["agent", "--server", "srv-b2"], env, workdir / "agent-srv-b2-restarted.log"
    )
    # then it reports the stop with the reason libvirt gives for it
    stopped = wait_until(
        lambda: events(redis_url, "vm.lifecycle.stopped", vm_id), 20, "the missed stop"
    )
    assert stopped[-1]["data"]["detail"] == "shutdown", stopped[-1]
    assert "observed_at" in stopped[-1]["data"]

    # and HA's record of that event says it left the VM off: the guest did not fail
    def ha_runs() -> list[dict[str, Any]]:
        status, body = api.request("GET", "/v1/hooks/builtin-ha/runs")
        assert status == 200, body
        return [x for x in body if x["subject"] == vm_id]

    mine = wait_until(ha_runs, 10, "the HA hook's record")
    assert [x["outcome"] for x in mine] == ["skipped"], mine
    assert "shutdown" in mine[0]["detail"]
    assert api.request("GET", "/v1/jobs?kind=vm.ha_restart")[1]["items"] == []
