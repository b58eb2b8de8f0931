"""Create benchmark: a `vm.create_from_template` job end to end (submit to running) next to
the bare libvirt calls the job makes, in the same run, on each lab kind.

It starts the lab (`vmorch up`, one pool of one server, in a temporary lab directory on a
free port), then alternates, for N rounds:

- baseline: from this process, over one libvirt connection opened once, the calls the
  job's steps make: clone the template's volume (`createXMLFrom`, sparse), define the
  same domain XML (`defineXML`, rendered by vmorch's own `domain_xml`), start it
  (`create`, which returns once the domain runs), timed around those calls alone;
- vmorch: `POST /v1/jobs {"kind": "vm.create_from_template", ...}`, timed from the POST
  until the job reads `succeeded` (polled every 10 ms): the VM runs then.

Each VM is deleted after its round (not timed). Aim: the job's median at most 1.5x the
bare calls'. On the test driver the bare calls take a few milliseconds, so the ratio there
shows the engine's own fixed cost (queue, steps, events) rather than a comparable share.

    .venv/bin/python bench/bench_create.py                 # both kinds, 10 rounds each
    .venv/bin/python bench/bench_create.py --kind test --rounds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid

import libvirt
from _procs import note
from _up import Api, lab_up

from workers.hypervisor.xml import DiskSpec, DomainSpec, domain_xml, volume_xml

AIM = 1.5


def bare_create(conn: libvirt.virConnect, kind: str, repo: str, tmpl: dict[str, object]) -> float:
    """The job's libvirt calls for one VM, timed; the VM is removed afterwards."""
    disks = tmpl["disks"]
    assert isinstance(disks, list)
    vm_id = str(uuid.uuid4())
    name = f"bare-{vm_id[:8]}"
    sp = conn.storagePoolLookupByName(repo)
    t0 = time.perf_counter()
    vols = []
    for i, d in enumerate(disks):
        src = sp.storageVolLookupByName(d["volume"])
        vols.append(sp.createXMLFrom(volume_xml(f"{name}-disk{i}", src.info()[1], "raw"), src, 0))
    spec = DomainSpec(
        uuid=vm_id, name=name, vcpus=int(str(tmpl["vcpus"])),
        memory_mib=int(str(tmpl["memory_mib"])), domain_type=kind,
        disks=[DiskSpec(v.path(), f"vd{chr(97 + i)}") for i, v in enumerate(vols)],
        metadata={"pool": "pool-a"},
    )  # fmt: skip
    dom = conn.defineXML(domain_xml(spec))
    dom.create()
    took = time.perf_counter() - t0
    dom.destroy()
    dom.undefine()
    for v in vols:
        v.delete(0)
    return took


def run_kind(kind: str, rounds: int) -> tuple[list[float], list[float]]:
    flags = ["--pools", "1", "--servers-per-pool", "1"] + (
        ["--kind", "qemu"] if kind == "qemu" else []
    )
    with lab_up(*flags) as (api, state):
        [server] = state["servers"]
        tmpl = next(t for t in api.call("GET", "/v1/templates") if t["name"] == "tmpl-a")
        conn = libvirt.open(server["uri"])
        bare, job = [], []
        try:
            for r in range(rounds + 1):  # round 0 warms up (first connections, first QEMU)
                b = bare_create(conn, "qemu" if kind == "qemu" else "test", "repo-a", tmpl)
                j = create_job(api, f"bench-{r}")
                if r:
                    bare.append(b)
                    job.append(j)
                note(f"{kind} round {r}: bare {b * 1000:.1f} ms, job {j * 1000:.1f} ms")
        finally:
            conn.close()
        return bare, job


def create_job(api: Api, name: str) -> float:
    _, took = api.ok(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a", "name": name}
    )
    api.ok({"kind": "vm.delete", "vm": name, "force": True})
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["test", "qemu", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    kinds = ["test", "qemu"] if args.kind == "both" else [args.kind]
    results = {k: run_kind(k, args.rounds) for k in kinds}
    print(f"# vmorch create benchmark ({platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')})")  # fmt: skip
    print(f"create from template `tmpl-a` (one disk), submit to running, {args.rounds} VMs each")
    print()
    print(
        "| lab | bare libvirt calls, median | vm.create_from_template job, median | ratio | aim |"
    )
    print("|---|---|---|---|---|")
    met = True
    for kind, (bare, job) in results.items():
        bm, jm = statistics.median(bare), statistics.median(job)
        ratio = jm / bm
        aim = f"<= {AIM}x" if kind == "qemu" else "(fixed cost shown)"
        print(f"| {kind} | {bm * 1000:.1f} ms | {jm * 1000:.1f} ms | {ratio:.2f}x | {aim} |")
        if kind == "qemu":
            met = ratio <= AIM
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
