"""libvirt states and reasons as vmorch's (workers/hypervisor/states.py)."""

from __future__ import annotations

import libvirt as L
import pytest

from schemas.inventory import VmState
from workers.hypervisor.states import observed_change, observed_state

STOP = VmState.STOPPED


@pytest.mark.parametrize(
    ("state", "reason", "want"),
    [
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_SHUTDOWN, (STOP, "shutdown")),
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_DESTROYED, (STOP, "destroyed")),
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_SAVED, (STOP, "saved")),
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_MIGRATED, (STOP, "migrated")),
        # as the STOPPED(crashed) event does: a domain shut off by a crash has crashed
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_CRASHED, (VmState.CRASHED, "crashed")),
        (L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_UNKNOWN, (STOP, "")),
        (L.VIR_DOMAIN_PAUSED, L.VIR_DOMAIN_PAUSED_USER, (VmState.SUSPENDED, "paused")),
        (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_BOOTED, (VmState.RUNNING, "booted")),
    ],
)  # fmt: skip
def test_a_domain_state_and_its_reason(state: int, reason: int, want: tuple[VmState, str]) -> None:
    assert observed_state(state, reason) == want


def test_a_change_found_by_comparing_carries_the_reason_or_says_observed() -> None:
    run, stop = VmState.RUNNING, VmState.STOPPED
    assert observed_change(run, stop, "shutdown") == ("vm.lifecycle.stopped", "shutdown")
    assert observed_change(run, stop, "migrated") == ("vm.lifecycle.migrated", "migrated")
    assert observed_change(run, VmState.CRASHED, "crashed") == ("vm.lifecycle.crashed", "crashed")
    assert observed_change(run, VmState.DELETED, "") == ("vm.lifecycle.undefined", "observed")
    assert observed_change(None, stop, "") == ("vm.lifecycle.defined", "observed")
