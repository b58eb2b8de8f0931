"""Guest messages benchmark: throughput through one agent, and first-boot time.

1. Throughput (test-driver lab, one server, one agent): 50 VMs, each with vmorch's guest
   program behind its channel socket (QEMU's place, as in the tests' harness; no handlers,
   so the relay is measured, not fork). One `vm.message` job sends 32 key/values to each
   (1,600 messages); timed from the POST until the job reads `succeeded` (every message
   acknowledged). Baseline, same run, same guests: this process connects to the 50 sockets
   itself and sends the same 1,600 messages, awaiting every acknowledgement (no Redis, no
   job, no agent).
2. First boot (qemu lab, `tmpl-guest`): a create with two config keys, define to configured
   (the define step's end to the job's end) next to define to the guest's `guest.ready`
   event of the same VM, N rounds.

    .venv/bin/python bench/bench_guest.py                # both parts
    .venv/bin/python bench/bench_guest.py --part throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from _procs import note
from _up import lab_up

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "workers" / "guest" / "vmorch_guest.py"
VMS, PER_VM = 50, 32


def _channel(state: dict[str, Any], vm_id: str) -> str:
    sock = parse_qs(urlsplit(state["servers"][0]["uri"]).query)["socket"][0]
    return f"{os.path.dirname(sock)}/channels/{vm_id}.agent.sock"


def _guests(paths: list[str], tmp: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i, path in enumerate(paths):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix=f"g{i}-", dir=tmp))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(PROGRAM),
                    "run",
                    "--listen-unix",
                    path,
                    "--state-dir",
                    str(d / "s"),
                    "--handlers",
                    str(d / "none"),
                    "--actions",
                    str(d / "none"),
                    "--control",
                    str(d / "c.sock"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


async def _bare(paths: list[str]) -> float:
    """Send PER_VM set messages to each guest from this process, awaiting every answer."""

    async def one(i: int, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        lines = [
            json.dumps({"v": 1, "id": f"bare.{i}.{k}", "op": "set", "key": f"k{k}",
                        "value": "x" * 32}) + "\n"
            for k in range(PER_VM)
        ]  # fmt: skip
        writer.write("".join(lines).encode())
        await writer.drain()
        acks = 0
        while acks < PER_VM:
            line = json.loads(await reader.readline())
            acks += line.get("type") == "ack"
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    return time.perf_counter() - t0


def throughput() -> None:
    with lab_up("--pools", "1", "--servers-per-pool", "1") as (api, state):
        note(f"creating {VMS} VMs")
        jobs = [
            api.call(
                "POST",
                "/v1/jobs",
                {
                    "kind": "vm.create_from_template",
                    "pool": "pool-a",
                    "template": "tmpl-a",
                    "name": f"m{i:02d}",
                    "memory_mib": 32,
                    "labels": {"bench": "msg"},
                },
            )
            for i in range(VMS)
        ]
        ids = []
        for j in jobs:
            while (j := api.call("GET", f"/v1/jobs/{j['id']}"))["state"] not in (
                "succeeded", "failed"
            ):  # fmt: skip
                time.sleep(0.05)
            assert j["state"] == "succeeded", j["error"]
            ids.append(j["links"]["vm_id"])
        with tempfile.TemporaryDirectory(prefix="vmg-", dir="/tmp") as tmp:
            paths = [_channel(state, v) for v in ids]
            procs = _guests(paths, Path(tmp))
            try:
                deadline = time.monotonic() + 60
                while sum(api.call("GET", f"/v1/vms/{v}/guest")["connected"] for v in ids) < VMS:
                    assert time.monotonic() < deadline, "the guests did not connect"
                    time.sleep(0.2)
                body = {"kind": "vm.message", "labels": {"bench": "msg"}, "timeout_s": 120,
                        "messages": [{"key": f"k{k}", "value": "x" * 32}
                                     for k in range(PER_VM)]}  # fmt: skip
                _, took = api.ok(body)
                n = VMS * PER_VM
                # the baseline: as many guests of the same program, on sockets of their
                # own (the agent keeps the channels' sockets), this process their host
                bare_paths = [f"{tmp}/b{i}.sock" for i in range(VMS)]
                (Path(tmp) / "bare").mkdir()
                procs += _guests(bare_paths, Path(tmp) / "bare")
                deadline = time.monotonic() + 30
                while not all(os.path.exists(p) for p in bare_paths):
                    assert time.monotonic() < deadline, "the baseline's guests did not listen"
                    time.sleep(0.1)
                bare = asyncio.run(_bare(bare_paths))
            finally:
                for p in procs:
                    p.kill()
        print(f"\nmessages through one agent to {VMS} guests ({n} set messages, acknowledged)")
        print(f"  vm.message job, submit to succeeded: {took:.2f} s = {n / took:,.0f} messages/s")
        print(f"  bare (this process to {VMS} guests of its own): {bare:.2f} s = {n / bare:,.0f} "
              "messages/s")  # fmt: skip
        print(f"  ratio: {(n / took) / (n / bare):.2f}x of the bare relay's rate")


def _at(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def first_boot(rounds: int) -> None:
    with lab_up("--pools", "1", "--servers-per-pool", "1", "--kind", "qemu") as (api, state):
        assert "tmpl-guest" in state["templates"], "no tmpl-guest (the guest image)"
        r = redis.Redis.from_url(state["redis_url"], decode_responses=True)
        to_ready, to_configured = [], []
        for i in range(rounds):
            job, _ = api.ok(
                {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-guest",
                 "name": f"fb{i}", "config": [{"key": "hostname", "value": f"fb{i}"},
                                              {"key": "ntp", "value": "pool.ntp.org"}]}
            )  # fmt: skip
            vm_id = job["links"]["vm_id"]
            define = next(s for s in job["steps"] if s["name"] == "define")
            t_define = _at(define["ended_at"])
            ready = [
                json.loads(f["e"]) for _, f in r.xrange("vmorch:events")
                if f.get("t") == "guest.ready" and f.get("s") == vm_id
            ]  # fmt: skip
            to_ready.append(_at(ready[0]["time"]) - t_define)
            to_configured.append(_at(job["ended_at"]) - t_define)
            api.ok({"kind": "vm.delete", "vm": vm_id, "force": True})
        r.close()
        med_r, med_c = statistics.median(to_ready), statistics.median(to_configured)
        print(f"\nfirst boot on QEMU (tmpl-guest, 2 config keys, {rounds} rounds, median)")
        print(f"  define to guest.ready: {med_r:.2f} s")
        print(f"  define to configured (the job succeeded): {med_c:.2f} s "
              f"(+{(med_c - med_r) * 1000:.0f} ms)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["throughput", "first-boot", "both"], default="both")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print(f"vmorch guest messages benchmark on {platform.node()} ({os.cpu_count()} CPUs)")
    if args.part in ("throughput", "both"):
        throughput()
    if args.part in ("first-boot", "both"):
        first_boot(args.rounds)


if __name__ == "__main__":
    main()
