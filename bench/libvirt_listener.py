"""Reference for the agent's ingest rate: a bare libvirt-python event client.

    python bench/libvirt_listener.py --uri URI --expect K [--idle-s 3] [--max-s 60]

It registers libvirt's default event loop (on a thread, as the agent does) and a lifecycle
callback on one connection to the daemon, and only counts suspended/resumed events with the
time of the first and the last. It prints "ready" once registered, and one JSON line
{"count", "first", "last", "cpu_s"} (cpu_s: this process's CPU since "ready") when it got
`--expect` events, when none came for `--idle-s` after the first, or after `--max-s`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import libvirt

_WANTED = {libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED}


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.lock = threading.Lock()

    def on_lifecycle(self, _c: Any, _dom: Any, event: int, _detail: int, _o: Any) -> None:
        now = time.time()
        if event not in _WANTED:
            return
        with self.lock:
            if self.count == 0:
                self.first = now
            self.count += 1
            self.last = now


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--idle-s", type=float, default=3.0)
    ap.add_argument("--max-s", type=float, default=60.0)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
    counter = Counter()
    conn = libvirt.open(args.uri)
    conn.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, counter.on_lifecycle, None
    )
    print("ready", flush=True)
    cpu0 = time.process_time()
    deadline = time.monotonic() + args.max_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with counter.lock:
            if counter.count >= args.expect:
                break
            if counter.count and time.time() - counter.last > args.idle_s:
                break
    with counter.lock:
        print(
            json.dumps(
                {
                    "count": counter.count,
                    "first": counter.first,
                    "last": counter.last,
                    "cpu_s": time.process_time() - cpu0,
                }
            ),
            flush=True,
        )
    conn.close()


if __name__ == "__main__":
    main()
