"""Calls with a deadline (workers/hypervisor/connection.py), on the in-process test driver;
a hung daemon is simulated by a call (or an open) that blocks until the test releases it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from orchestrator.errors import AbortRequested, HypervisorTimeout, HypervisorUnavailable
from workers.hypervisor import adapter
from workers.hypervisor import connection as connection_mod
from workers.hypervisor.adapter import Hypervisor
from workers.hypervisor.connection import CallLimits, Connection

URI = "test:///default"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of each test, so no blocked call outlives it."""
    ev = threading.Event()
    yield ev
    ev.set()


def test_a_call_returns_its_result_and_libvirt_errors_unmapped() -> None:
    conn = Connection(URI, CallLimits(timeout_s=5))
    assert conn.call(lambda c: c.getType()) == "TEST"
    with pytest.raises(libvirt.libvirtError):
        conn.call(lambda c: c.lookupByName("no-such-domain"))
    conn.close()


def test_a_hung_call_times_out_then_later_calls_fail_fast_until_it_returns(
    release: threading.Event,
) -> None:
    conn = Connection(URI, CallLimits(timeout_s=0.3))
    # when a call gets no answer
    t0 = time.monotonic()
    with pytest.raises(HypervisorTimeout):
        conn.call(lambda c: release.wait(10))
    # then it fails at its deadline
    assert 0.3 <= time.monotonic() - t0 < 1.0
    # and for one deadline, while it is outstanding, the next calls fail at once
    t0 = time.monotonic()
    with pytest.raises(HypervisorTimeout, match="not trying again yet"):
        conn.call(lambda c: c.getType())
    assert time.monotonic() - t0 < 0.1
    # and once it has returned, calls work again (on a new connection)
    release.set()
    assert _eventually(lambda: conn.call(lambda c: c.getType())) == "TEST"


def test_after_one_deadline_a_new_call_may_try_again_even_if_the_hung_one_is_still_out(
    release: threading.Event,
) -> None:
    conn = Connection(URI, CallLimits(timeout_s=0.2))
    with pytest.raises(HypervisorTimeout):
        conn.call(lambda c: release.wait(10))
    time.sleep(0.25)
    assert conn.call(lambda c: c.getType()) == "TEST"


def test_a_check_that_raises_interrupts_a_hung_call_at_once(release: threading.Event) -> None:
    conn = Connection(URI, CallLimits(timeout_s=30))
    asked = threading.Event()
    threading.Timer(0.2, asked.set).start()

    def check() -> None:
        if asked.is_set():
            raise AbortRequested("abort requested")

    t0 = time.monotonic()
    with pytest.raises(AbortRequested):
        conn.call(lambda c: release.wait(10), check=check)
    assert time.monotonic() - t0 < 0.6
    # an interrupted call is no sign of a hung server: the next call goes through
    assert conn.call(lambda c: c.getType()) == "TEST"


def test_a_call_whose_caller_gave_up_while_connecting_never_runs(
    release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = connection_mod.open_connection

    def hung_open(uri: str, keepalive: Any) -> libvirt.virConnect:
        release.wait(10)
        return real_open(uri, keepalive)

    monkeypatch.setattr(connection_mod, "open_connection", hung_open)
    conn = Connection(URI, CallLimits(timeout_s=0.2))
    ran = threading.Event()
    with pytest.raises(HypervisorTimeout):
        conn.call(lambda c: ran.set())
    # when the daemon answers again, after the caller gave up
    release.set()
    time.sleep(0.3)
    # then the stale action was not carried out
    assert not ran.is_set()


def test_the_adapter_does_not_retry_a_timeout_inside_the_call(release: threading.Event) -> None:
    hv = Hypervisor(URI, retry_s=10, connection=Connection(URI, CallLimits(timeout_s=0.2)))
    calls = 0

    def hang(c: libvirt.virConnect) -> None:
        nonlocal calls
        calls += 1
        release.wait(10)

    t0 = time.monotonic()
    with pytest.raises(HypervisorTimeout):
        hv._call("hang", hang)
    assert calls == 1 and time.monotonic() - t0 < 1.0


def test_the_adapter_retries_a_lost_connection_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libvirt errors cannot be made with a code here: map every one to "connection lost"
    def lost(e: libvirt.libvirtError) -> Exception:
        return HypervisorUnavailable(str(e))

    monkeypatch.setattr(connection_mod, "is_transient", lambda e: True)
    monkeypatch.setattr(adapter, "classify", lost)
    hv = Hypervisor(URI, retry_s=5, connection=Connection(URI, CallLimits(timeout_s=5)))
    seen: list[libvirt.virConnect] = []

    def flaky(c: libvirt.virConnect) -> str:
        seen.append(c)
        if len(seen) == 1:
            raise libvirt.libvirtError("connection lost")
        return str(c.getType())

    assert hv._call("flaky", flaky) == "TEST"
    assert len(seen) == 2 and seen[0] is not seen[1]


def _eventually(fn: Any, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except HypervisorTimeout:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_a_probe_gets_its_own_shorter_deadline(release: threading.Event) -> None:
    # given a server whose calls usually get 30 s, probed with 0.2 s (HA's "is it up?")
    link = Connection(URI, CallLimits(timeout_s=30))
    probe = Hypervisor(URI, retry_s=0.2, connection=link, timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(HypervisorTimeout):
        probe._call("hang", lambda c: release.wait(10))
    assert time.monotonic() - t0 < 1.0
    # and failing fast afterwards lasts that deadline, not the usual one
    time.sleep(0.25)
    assert link.call(lambda c: c.getType()) == "TEST"
