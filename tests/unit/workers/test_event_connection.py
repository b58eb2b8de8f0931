"""EventConnection on the in-process test driver: a closed connection delivers no more
events (its callbacks are deregistered), so a reconnect never doubles them."""

from __future__ import annotations

import time

import libvirt

from workers.hypervisor.events import DomainEvent, EventConnection, ensure_event_loop

XML = (
    "<domain type='test'><name>evc1</name><uuid>6f1c0e0e-0000-4000-8000-00000000e001</uuid>"
    "<memory>65536</memory><os><type>hvm</type></os></domain>"
)


def test_a_closed_connection_delivers_no_events_beside_the_next_one() -> None:
    ensure_event_loop()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    first: list[DomainEvent] = []
    second: list[DomainEvent] = []
    old = EventConnection("test:///default", first.append, lambda _r: None)
    old.open()
    old.close()
    new = EventConnection("test:///default", second.append, lambda _r: None)
    new.open()
    admin = libvirt.open("test:///default")
    try:
        dom = admin.defineXML(XML)
        dom.undefine()
        deadline = time.monotonic() + 5
        while len(second) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e.type for e in second] == ["vm.lifecycle.defined", "vm.lifecycle.undefined"]
        assert first == []
    finally:
        new.close()
        admin.close()
