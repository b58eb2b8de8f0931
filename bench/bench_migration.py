"""Migration benchmark: a `vm.migrate` job end to end next to a bare libvirt migration of
the same VM between the same servers, in the same run.

It starts the qemu lab (`vmorch up --kind qemu`, one pool of two servers, in a temporary
lab directory, on a free port), creates one tiny VM, then alternates, for N rounds:

- baseline: `virDomain.migrate3` straight from this process (the same flags and
  parameters vmorch uses: live, persist on the destination, undefine the source, the
  lab's shared storage), there and back, each leg timed;
- vmorch: `POST /v1/jobs {"kind": "vm.migrate", ...}` there and back, each leg timed from
  the POST until the job reads `succeeded` (polled every 10 ms).

The bare legs go there and back, so the VM is where vmorch's record says before the
vmorch legs run. Aim: the job's median at most 1.3x the bare migration's.

    .venv/bin/python bench/bench_migration.py            # 10 rounds (20 legs each side)
    .venv/bin/python bench/bench_migration.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import libvirt
from _procs import note
from _up import lab_up

AIM = 1.3


def bare_migrate(src_uri: str, dst_uri: str, vm_id: str, host: str) -> float:
    """One live migration as vmorch asks libvirt for it, timed around migrate3 alone."""
    src, dst = libvirt.open(src_uri), libvirt.open(dst_uri)
    try:
        dom = src.lookupByUUIDString(vm_id)
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_UNSAFE
        )
        t0 = time.perf_counter()
        dom.migrate3(dst, {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{host}"}, flags)
        return time.perf_counter() - t0
    finally:
        dst.close()
        src.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    with lab_up("--kind", "qemu", "--pools", "1", "--servers-per-pool", "2") as (api, state):
        uris = {s["name"]: s["uri"] for s in state["servers"]}
        made, _ = api.run(
            {"kind": "vm.create_from_template", "name": "bench-mig", "pool": "pool-a",
             "template": "tmpl-a", "server": "srv-a1"}
        )  # fmt: skip
        if made["state"] != "succeeded":
            raise RuntimeError(f"create failed: {made['error']}")
        vm_id = made["links"]["vm_id"]
        host = "127.0.0.1"
        bare: list[float] = []
        job: list[float] = []
        # one warm-up leg each way on both sides (first connections, first QEMU start-up)
        for r in range(args.rounds + 1):
            legs = [("srv-a1", "srv-a2"), ("srv-a2", "srv-a1")]
            b = [bare_migrate(uris[s], uris[d], vm_id, host) for s, d in legs]
            time.sleep(0.5)  # the agents report the bare moves; the VM is back on srv-a1
            j = []
            for _s, d in legs:
                done, took = api.run({"kind": "vm.migrate", "vm": "bench-mig", "target_server": d})
                if done["state"] != "succeeded":
                    raise RuntimeError(f"vm.migrate failed: {done['error']}")
                j.append(took)
            if r:  # round 0 is the warm-up
                bare += b
                job += j
            note(f"round {r}: bare {b[0]:.3f}/{b[1]:.3f} s, job {j[0]:.3f}/{j[1]:.3f} s")
        bm, jm = statistics.median(bare), statistics.median(job)
        ratio = jm / bm
        print(f"# vmorch migration benchmark ({platform.node()}, {os.cpu_count()} CPUs, "
              f"{time.strftime('%Y-%m-%d %H:%M')})")  # fmt: skip
        print("96 MiB idle guest, qemu lab (TCG), one pool of two unprivileged libvirtd servers,"
              f" {len(bare)} legs each side")  # fmt: skip
        print()
        print("| measure | bare migrate3 | vm.migrate job | ratio | aim |")
        print("|---|---|---|---|---|")
        print(f"| median leg | {bm:.3f} s | {jm:.3f} s | {ratio:.2f}x | <= {AIM}x |")
        print(
            f"| mean leg | {statistics.mean(bare):.3f} s | {statistics.mean(job):.3f} s | "
            f"{statistics.mean(job) / statistics.mean(bare):.2f}x | |"
        )
        print(f"| slowest leg | {max(bare):.3f} s | {max(job):.3f} s | | |")
        return 0 if ratio <= AIM else 1


if __name__ == "__main__":
    sys.exit(main())
