"""vmorch events benchmark: libvirt event -> hook job latency, and an agent's ingest rate,
each next to a baseline measured in the same run.

    /work/main/.venv/bin/python bench/bench_events.py [--quick] [--keep-logs]

Everything runs on 127.0.0.1 and unix sockets: a 1-server lab (one unprivileged libvirtd,
test driver) and a private redis-server per phase. Every process started is stopped at the
end (process groups, the lab via lab.remove()), even on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import libvirt
import redis
import redis.asyncio as aredis
from _procs import BENCH_DIR, Proc, note, percentile, pid_cpu_s, render_table, wait_until

from orchestrator.lab.lab import Lab, LabSpec
from orchestrator.lab.redis_server import RedisServer
from orchestrator.settings import Settings
from orchestrator.store import jobdoc, keys
from orchestrator.store.hooks import HookStore
from orchestrator.store.inventory import InventoryStore
from schemas.hooks import HookMatch, HookSpec, SubmitJobAction
from schemas.inventory import Inventory

AIM_P99_MS = 10.0  # issue 6: action-to-hook p99 under 10 ms
HOOK_TYPES = ["vm.lifecycle.suspended", "vm.lifecycle.resumed"]
JOB_REQUEST = {"kind": "noop", "steps": 1}
BASE_STREAM, BASE_GROUP, BASE_RESULTS = "bench:stream", "bench", "bench:results"
DOMAIN_XML = (
    "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64'>hvm</type></os></domain>"
)

Row = tuple[str, str, str, str]
"""One table row: metric, vmorch, baseline, note."""


@dataclass(frozen=True)
class Config:
    quick: bool
    workdir: Path
    actions: int  # measured libvirt actions (and baseline XADDs) in phase 1
    burst: int  # lifecycle changes in the phase-2 burst
    domains: int  # domains the burst cycles over
    lat_max_s: float  # bound of the measured phase-1 loop (each side)
    burst_max_s: float  # bound of one burst, including the drain
    warmup: int = 6  # unmeasured actions first (the router builds its caches on the first)
    gap_s: float = 0.01  # pause after each measured action, so each runs alone
    action_timeout_s: float = 5.0  # an action whose job is not seen by then counts as missed


# --- small helpers ----------------------------------------------------------------------
def start_proc(
    stack: ExitStack, cfg: Config, name: str, argv: list[str], env: dict[str, str]
) -> Proc:
    proc = Proc(name, argv, env, cfg.workdir)
    stack.callback(proc.stop)
    return proc


def start_redis(stack: ExitStack, cfg: Config, name: str) -> RedisServer:
    """A private redis-server on a free port (never the machine's own Redis)."""
    server = RedisServer(cfg.workdir / name, appendonly=False)
    stack.callback(server.stop)
    server.start()
    return server


def sync_redis(stack: ExitStack, url: str) -> redis.Redis:
    r = redis.Redis.from_url(url, decode_responses=True)
    stack.callback(r.close)
    return r


def run_async(url: str, fn: Callable[[aredis.Redis], Any]) -> Any:
    async def main() -> Any:
        r = aredis.Redis.from_url(url, decode_responses=True)
        try:
            return await fn(r)
        finally:
            await r.aclose()

    return asyncio.run(main())


def vmorch_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "VMORCH_REDIS_URL": redis_url}


def last_id(r: redis.Redis, stream: str) -> str:
    newest = r.xrevrange(stream, count=1)
    return str(newest[0][0]) if newest else "0-0"


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of `pid`, from the scheduler's ns counters
    (`se.sum_exec_runtime` in /proc/PID/task/TID/sched); /proc/PID/stat ticks (10 ms) are
    too coarse for a fraction of a millisecond per event. Falls back to the ticks."""
    total_ms, found = 0.0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for ln in f:
                    if ln.startswith("se.sum_exec_runtime"):
                        total_ms += float(ln.split(":", 1)[1])
                        found = True
                        break
        except OSError:  # a thread that just ended
            continue
    if not found:
        try:
            return pid_cpu_s(pid)
        except OSError:
            return 0.0
    return total_ms / 1000


BENCH_COMMANDS = {"xread", "hget", "info", "xrange", "xrevrange", "xlen", "ping"}
"""Commands only the bench sends on the measured paths (its tap and checks), not counted."""


def commandstats(r: redis.Redis) -> dict[str, int]:
    """Calls per command so far (commands inside Lua scripts counted too)."""
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def commands_per(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """vmorch's commands per unit (not the bench's own), most frequent first."""
    delta = {
        k: (v - before.get(k, 0)) / max(n, 1)
        for k, v in after.items()
        if k not in BENCH_COMMANDS and v > before.get(k, 0)
    }
    return dict(sorted(delta.items(), key=lambda kv: -kv[1]))


def id_ms(sid: str) -> int:
    return int(sid.split("-", 1)[0])


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def start_agent(
    stack: ExitStack, cfg: Config, name: str, r: redis.Redis, url: str, server: str
) -> Proc:
    agent = start_proc(
        stack, cfg, name, ["-m", "orchestrator.cli", "agent", "--server", server], vmorch_env(url)
    )

    def up() -> bool:
        agent.check_alive()
        return any(json.loads(f["e"])["type"] == "server.up" for _, f in r.xrange(keys.EVENTS))

    wait_until(up, 30, "the agent's server.up", 0.05)
    return agent


def define_domains(conn: libvirt.virConnect, names: list[str]) -> list[libvirt.virDomain]:
    doms = []
    for name in names:
        dom = conn.defineXML(DOMAIN_XML.format(name=name))
        dom.create()
        doms.append(dom)
    return doms


@dataclass
class Cpu:
    """CPU seconds of some processes between two points."""

    probes: dict[str, Callable[[], float]]
    start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Cpu:
        self.start = {k: f() for k, f in self.probes.items()}
        return self

    def __exit__(self, *_: object) -> None:
        self.used = {k: f() - self.start[k] for k, f in self.probes.items()}


# --- 1. latency ---------------------------------------------------------------------------
class StreamTap:
    """A thread blocked in XREAD on a stream: every entry, with the time it arrived."""

    def __init__(self, url: str, stream: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.stream = stream
        self.after = last_id(self.r, stream)
        self.entries: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            read = self.r.xread({self.stream: self.after}, count=100, block=200)
            seen = time.time()
            for _, batch in read:
                for sid, fields in batch:
                    self.after = sid
                    self.entries.put((seen, sid, json.loads(fields["e"])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.r.close()


@dataclass(frozen=True)
class Sample:
    """One action's path, all in epoch seconds (one machine, one clock)."""

    t0: float  # just before the libvirt call
    t1: float  # the call returned
    event_time: float  # the agent's event envelope `time` (made as it starts publishing)
    event_seen: float  # the event's stream entry read by the tap
    created_at: float  # the hook's job record `created_at` (router, just before the Lua)
    job_seen: float  # the job's `job.queued` entry (same Lua as the LPUSH) read by the tap


@dataclass
class Measured:
    samples: list[Sample] = field(default_factory=list)
    missed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    commands: dict[str, float] = field(default_factory=dict)  # per action


def act_and_wait(
    dom: libvirt.virDomain, uuid: str, suspend: bool, tap: StreamTap, r: redis.Redis,
    timeout_s: float,
) -> Sample | None:  # fmt: skip
    """Suspend or resume `dom`, then wait for the agent's event and the hook's job."""
    want = "vm.lifecycle.suspended" if suspend else "vm.lifecycle.resumed"
    t0 = time.time()
    if suspend:
        dom.suspend()
    else:
        dom.resume()
    t1 = time.time()
    deadline = time.monotonic() + timeout_s
    event: tuple[float, dict[str, Any]] | None = None
    while True:
        try:
            seen, _sid, e = tap.entries.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if event is None:
            if e["type"] == want and e["subject"] == uuid:
                event = (seen, e)
            continue
        if e["type"] != "job.queued":
            continue
        doc = r.hget(keys.job(e["subject"]), "doc")
        job = json.loads(jobdoc.decode_json(doc)) if doc else {}
        if job.get("links", {}).get("event_id") == event[1]["id"]:
            return Sample(t0, t1, ts(event[1]["time"]), event[0], ts(job["created_at"]), seen)


def measure_vmorch(
    cfg: Config, url: str, r: redis.Redis, uri: str, cpu_probes: dict[str, Callable[[], float]]
) -> Measured:
    out = Measured()
    tap = StreamTap(url, keys.EVENTS)
    conn = libvirt.open(uri)
    try:
        [dom] = define_domains(conn, ["bench-lat"])
        uuid = dom.UUIDString()
        # the define and start events: let the router handle them before measuring
        time.sleep(0.3)
        while not tap.entries.empty():
            tap.entries.get_nowait()
        suspend = True
        for _ in range(cfg.warmup):
            if act_and_wait(dom, uuid, suspend, tap, r, cfg.action_timeout_s) is None:
                raise RuntimeError("warm-up: no hook job for a libvirt action within "
                                   f"{cfg.action_timeout_s:.0f}s; see the logs")  # fmt: skip
            suspend = not suspend
            time.sleep(cfg.gap_s)
        deadline = time.monotonic() + cfg.lat_max_s
        cmds0 = commandstats(r)
        with Cpu(cpu_probes) as cpu:
            for _ in range(cfg.actions):
                if time.monotonic() > deadline:
                    note(f"latency loop capped at {cfg.lat_max_s:.0f}s")
                    break
                s = act_and_wait(dom, uuid, suspend, tap, r, cfg.action_timeout_s)
                suspend = not suspend
                if s is None:
                    out.missed += 1
                else:
                    out.samples.append(s)
                time.sleep(cfg.gap_s)
        out.cpu = cpu.used
        out.commands = commands_per(cmds0, commandstats(r), len(out.samples) + out.missed)
        if not suspend:  # leave it running
            dom.resume()
    finally:
        tap.close()
        conn.close()
    return out


def measure_baseline(cfg: Config, stack: ExitStack, url: str, r: redis.Redis) -> list[float]:
    """XADD (here) -> XREADGROUP BLOCK (a reader process), one entry at a time; ms."""
    r.xgroup_create(BASE_STREAM, BASE_GROUP, id="$", mkstream=True)
    reader = start_proc(
        stack, cfg, "baseline-stream",
        [str(BENCH_DIR / "baseline_stream.py"), "--redis-url", url, "--stream", BASE_STREAM,
         "--group", BASE_GROUP, "--results", BASE_RESULTS],
        dict(os.environ),
    )  # fmt: skip
    reader.wait_output("ready")
    out: list[float] = []
    deadline = time.monotonic() + cfg.lat_max_s
    for i in range(cfg.warmup + cfg.actions):
        if time.monotonic() > deadline:
            note(f"baseline loop capped at {cfg.lat_max_s:.0f}s")
            break
        r.xadd(BASE_STREAM, {"t": f"{time.time():.6f}"})
        got = r.blpop([BASE_RESULTS], timeout=cfg.action_timeout_s)
        if got is None:
            reader.check_alive()
            raise RuntimeError("baseline reader did not answer")
        sent, received = (float(x) for x in got[1].split())
        if i >= cfg.warmup:
            out.append((received - sent) * 1000)
        time.sleep(cfg.gap_s)
    reader.stop()
    return out


def phase_latency(cfg: Config, lab: Lab, inv: Inventory) -> list[Row]:
    server = inv.servers[0]
    with ExitStack() as stack:
        rs = start_redis(stack, cfg, "redis-latency")
        r = sync_redis(stack, rs.url)
        note(f"latency baseline: {cfg.warmup} + {cfg.actions} XADD -> XREADGROUP round trips")
        base = measure_baseline(cfg, stack, rs.url, r)
        run_async(rs.url, lambda ar: InventoryStore(ar).load(inv))
        agent = start_agent(stack, cfg, "agent-latency", r, rs.url, server.name)
        router = start_proc(
            stack, cfg, "router", ["-m", "orchestrator.cli", "router"], vmorch_env(rs.url)
        )

        def router_ready() -> bool:
            router.check_alive()
            groups = r.xinfo_groups(keys.EVENTS)
            return bool(r.exists(keys.hook("builtin-ha"))) and any(
                g["name"] == Settings().router_group for g in groups
            )

        wait_until(router_ready, 30, "the router's consumer group", 0.05)
        spec = HookSpec(
            name="bench-lifecycle",
            match=HookMatch(types=HOOK_TYPES),
            action=SubmitJobAction(kind="submit_job", request=JOB_REQUEST),
            window_s=0,
        )
        run_async(rs.url, lambda ar: HookStore(ar).create(spec))
        note(f"latency vmorch: {cfg.warmup} + {cfg.actions} suspend/resume -> hook job")
        probes = {
            "agent": lambda: proc_cpu_s(agent.pid),
            "router": lambda: proc_cpu_s(router.pid),
            "redis": lambda: proc_cpu_s(rs.pid),
            "libvirtd": lambda: proc_cpu_s(lab.daemons[server.name].info.pid),
        }
        m = measure_vmorch(cfg, rs.url, r, server.uri, probes)
        note(f"vmorch Redis commands per action: {top(m.commands, 40)}")
    return latency_rows(cfg, m, base)


def latency_rows(cfg: Config, m: Measured, base: list[float]) -> list[Row]:
    s = m.samples

    def ms(f: Callable[[Sample], float]) -> list[float]:
        return [f(x) * 1000 for x in s]

    def p(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.2f}" if values else "-"

    def both(values: list[float]) -> str:
        return f"{p(values, 50)} / {p(values, 99)}" if values else "-"

    enq = ms(lambda x: x.job_seen - x.t0)
    p99 = percentile(enq, 99) if enq else float("inf")
    verdict = "meets" if p99 < AIM_P99_MS else "MISSES"
    n = max(len(s) + m.missed, 1)
    rows: list[Row] = [
        (
            f"1. libvirt action -> hook job enqueued, p50 (ms, n={len(s)})",
            p(enq, 50),
            p(base, 50),
            "baseline: bare XADD -> XREADGROUP BLOCK, same Redis",
        ),
        (
            "   libvirt action -> hook job enqueued, p99 (ms)",
            p(enq, 99),
            p(base, 99),
            f"{verdict} aim p99 < {AIM_P99_MS:.0f} ms",
        ),
        ("   libvirt action -> hook job enqueued, max (ms)", p(enq, 100), p(base, 100), ""),
        (
            "   libvirt action -> job created_at, p50 / p99 (ms)",
            both(ms(lambda x: x.created_at - x.t0)),
            "-",
            "created_at: router, before the Lua",
        ),
        ("   actions with no hook job within 5 s", f"{m.missed}/{n}", "-", ""),
        ("   where the time goes, p50 / p99 (ms):", "", "", ""),
        (
            "   a. libvirt call returns (dom.suspend/resume)",
            both(ms(lambda x: x.t1 - x.t0)),
            "-",
            "RPC to libvirtd",
        ),
        (
            "   b. action -> agent makes the event",
            both(ms(lambda x: x.event_time - x.t0)),
            "-",
            "libvirtd event, agent's libvirt thread, asyncio queue",
        ),
        (
            "   c. agent event -> entry on the stream",
            both(ms(lambda x: x.event_seen - x.event_time)),
            "-",
            "JSON, one script: expectations EXISTS + XADD, tap wake-up",
        ),
        (
            "   d. entry on the stream -> router creates the job",
            both(ms(lambda x: x.created_at - x.event_seen)),
            "-",
            "XREADGROUP wake, waits, attribution, find_vm, hooks, submit",
        ),
        (
            "   e. job created_at -> job.queued seen (LPUSH done)",
            both(ms(lambda x: x.job_seen - x.created_at)),
            "-",
            "job JSON, job event, Celery message, create-job Lua",
        ),
    ]
    for name in ("agent", "router", "redis", "libvirtd"):
        rows.append(
            (
                f"   {name} CPU per action (ms)",
                f"{m.cpu.get(name, 0.0) * 1000 / n:.3f}", "-", "",
            )
        )  # fmt: skip
    rows.append(
        (
            "   Redis commands per action (agent + router, incl. in Lua)",
            f"{sum(m.commands.values()):.1f}",
            "-",
            top(m.commands),
        )
    )
    return rows


def top(per: dict[str, float], k: int = 8) -> str:
    return " ".join(f"{name} {v:.1f}" for name, v in list(per.items())[:k])


# --- 2. ingest rate ------------------------------------------------------------------------
@dataclass
class Burst:
    done: int = 0
    start: float = 0.0
    end: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.done / (self.end - self.start) if self.end > self.start else 0.0


def drive(uri: str, names: list[str], rounds: int) -> tuple[threading.Thread, Burst]:
    """A thread suspending (even rounds) and resuming (odd rounds) every domain in turn."""
    burst = Burst()

    def run() -> None:
        conn = libvirt.open(uri)
        try:
            doms = [conn.lookupByName(n) for n in names]
            burst.start = time.time()
            for i in range(rounds):
                for d in doms:
                    if i % 2 == 0:
                        d.suspend()
                    else:
                        d.resume()
                    burst.done += 1
        except libvirt.libvirtError as e:
            burst.error = str(e)
        finally:
            burst.end = time.time()
            conn.close()

    t = threading.Thread(target=run, name="burst-driver", daemon=True)
    t.start()
    return t, burst


@contextmanager
def domains(uri: str, names: list[str]) -> Iterator[list[str]]:
    conn = libvirt.open(uri)
    try:
        yield [d.UUIDString() for d in define_domains(conn, names)]
    finally:
        conn.close()


def count_burst(r: redis.Redis, after: str, uuids: set[str]) -> tuple[int, int, int]:
    """(count, first ms, last ms) of the burst's lifecycle entries after entry `after`."""
    count, first, last = 0, 0, 0
    while True:
        page = r.xrange(keys.EVENTS, min=f"({after}", max="+", count=1000)
        if not page:
            return count, first, last
        for sid, fields in page:
            e = json.loads(fields["e"])
            if e["type"] in HOOK_TYPES and e["subject"] in uuids:
                count += 1
                first = first or id_ms(sid)
                last = id_ms(sid)
            after = sid


@dataclass
class Ingest:
    burst: Burst
    count: int = 0
    rate: float = 0.0
    lag_ms: float = 0.0  # last entry (or callback) after the last action ended
    cpu_ms: float = 0.0
    commands: dict[str, float] = field(default_factory=dict)  # per event


def phase_ingest(cfg: Config, inv: Inventory, lab: Lab) -> tuple[Ingest, Ingest]:
    server = inv.servers[0]
    rounds = max(2, cfg.burst // cfg.domains // 2 * 2)  # even: the domains end running
    names = [f"bench-burst-{i}" for i in range(cfg.domains)]
    k = rounds * cfg.domains
    with ExitStack() as stack:
        rs = start_redis(stack, cfg, "redis-ingest")
        r = sync_redis(stack, rs.url)
        run_async(rs.url, lambda ar: InventoryStore(ar).load(inv))
        uuids = set(stack.enter_context(domains(server.uri, names)))
        agent = start_agent(stack, cfg, "agent-ingest", r, rs.url, server.name)
        time.sleep(0.3)  # the agent's reconcile of the new domains
        after = last_id(r, keys.EVENTS)
        note(f"ingest: {k} suspend/resume on {cfg.domains} domains, agent publishing")
        cpu0, cmds0 = proc_cpu_s(agent.pid), commandstats(r)
        thread, burst = drive(server.uri, names, rounds)
        thread.join(cfg.burst_max_s)
        if thread.is_alive() or burst.error:
            raise RuntimeError(f"burst driver: {burst.error or 'did not finish'}")
        # wait for the agent to drain: all K, or no new entry for 3 s, or the bound
        deadline, seen, still_since = time.monotonic() + cfg.burst_max_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            n = r.xlen(keys.EVENTS)
            if n != seen:
                seen, still_since = n, time.monotonic()
            elif time.monotonic() - still_since > 3:
                break
            if count_burst(r, after, uuids)[0] >= burst.done:
                break
            time.sleep(0.1)
        count, first, last = count_burst(r, after, uuids)
        agent_cpu = proc_cpu_s(agent.pid) - cpu0
        agent.stop()
        vm = Ingest(burst, count)
        if count > 1 and last > first:
            vm.rate = (count - 1) / ((last - first) / 1000)
        vm.lag_ms = last - burst.end * 1000 if count else 0.0
        vm.cpu_ms = agent_cpu * 1000 / max(count, 1)
        vm.commands = commands_per(cmds0, commandstats(r), count)

        note(f"ingest reference: {k} suspend/resume, bare libvirt event client counting")
        listener = start_proc(
            stack, cfg, "libvirt-listener",
            [str(BENCH_DIR / "libvirt_listener.py"), "--uri", server.uri, "--expect", str(k),
             "--max-s", str(cfg.burst_max_s)],
            dict(os.environ),
        )  # fmt: skip
        listener.wait_output("ready")
        thread, burst2 = drive(server.uri, names, rounds)
        thread.join(cfg.burst_max_s)
        if thread.is_alive() or burst2.error:
            raise RuntimeError(f"burst driver: {burst2.error or 'did not finish'}")
        try:
            listener.p.wait(cfg.burst_max_s + 5)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError("libvirt listener did not finish") from e
        res = json.loads(listener.output().strip().splitlines()[-1])
        ref = Ingest(burst2, int(res["count"]))
        if ref.count > 1 and res["last"] > res["first"]:
            ref.rate = (ref.count - 1) / (res["last"] - res["first"])
        ref.lag_ms = (res["last"] - burst2.end) * 1000 if ref.count else 0.0
        ref.cpu_ms = float(res["cpu_s"]) * 1000 / max(ref.count, 1)
    return vm, ref


def ingest_rows(vm: Ingest, ref: Ingest) -> list[Row]:
    def lost(x: Ingest) -> str:
        return f"{x.count}/{x.burst.done} ({x.burst.done - x.count} lost)"

    kept_up = vm.lag_ms < 100
    return [
        (
            "2. events appended per second by one agent",
            f"{vm.rate:.0f}", f"{ref.rate:.0f}",
            "baseline: callbacks/s of a bare libvirt-python client"
            + (" (kept up with the driver: ceiling >= this)" if ref.lag_ms < 100 else ""),
        ),
        ("   events received / actions performed", lost(vm), lost(ref), ""),
        (
            "   driver thread's action rate (actions/s)",
            f"{vm.burst.rate:.0f}", f"{ref.burst.rate:.0f}",
            "1 thread, suspend/resume RPCs to libvirtd",
        ),
        (
            "   last event after the last action (ms)",
            f"{round(vm.lag_ms):d}", f"{round(ref.lag_ms):d}",
            "agent kept up (rate = the driver's)" if kept_up
            else "agent fell behind (rate = the agent's capacity)",
        ),
        ("   client process CPU per event (ms)", f"{vm.cpu_ms:.3f}", f"{ref.cpu_ms:.3f}", ""),
        (
            "   agent's Redis commands per event (incl. in Lua)",
            f"{sum(vm.commands.values()):.1f}", "-", top(vm.commands),
        ),
    ]  # fmt: skip


# --- output --------------------------------------------------------------------------------
def header(cfg: Config) -> str:
    s = Settings()
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    redis_version = out.split()[2].removeprefix("v=")
    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    lv = libvirt.getVersion()
    libs = ", ".join(f"{p} {version(p)}" for p in ("redis", "libvirt-python", "pydantic"))
    rounds = max(2, cfg.burst // cfg.domains // 2 * 2)
    return "\n".join(
        [
            f"vmorch events benchmark{' (--quick)' if cfg.quick else ''}",
            f"machine : nproc={len(os.sched_getaffinity(0))} ({cpu_model}), "
            f"{platform.system()} {platform.release()}, load average at start "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"software: Python {platform.python_version()}, {libs}, libvirt "
            f"{lv // 1_000_000}.{lv // 1000 % 1000}.{lv % 1000} (test driver), "
            f"redis-server {redis_version}",
            f"latency : 1-server lab, 1 agent + 1 router processes; hook on {HOOK_TYPES} -> "
            f"submit_job {json.dumps(JOB_REQUEST)}, window_s 0; no worker; a domain outside "
            f"the inventory suspended/resumed {cfg.actions} times ({cfg.warmup} warm-up), one "
            f"at a time, {cfg.gap_s * 1000:.0f} ms apart; 'enqueued' = the job's job.queued "
            "entry (written by the same Lua as the Celery LPUSH) read by a blocking XREAD "
            "thread in the bench; baseline = bench XADD -> reader process XREADGROUP BLOCK",
            f"ingest  : {rounds * cfg.domains} suspend/resume from 1 thread over {cfg.domains} "
            "domains; agent rate = entries/s between the first and last entry id; then the "
            "same burst with the agent stopped and a bare libvirt event client counting",
            f"vmorch  : defaults: log_level={s.log_level} claim_idle_ms={s.claim_idle_ms} "
            f"sweep_interval_s={s.sweep_interval_s}; a private redis-server per phase, "
            "appendonly no",
        ]
    )


def table(rows: list[Row]) -> str:
    cells = [("metric", "vmorch", "baseline", "note"), *rows]
    return render_table(cells)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller runs (under ~40 s)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop everything
    workdir = Path(tempfile.mkdtemp(prefix="vmorch-bench-events-"))
    q = args.quick
    cfg = Config(
        quick=q,
        workdir=workdir,
        actions=200 if q else 1000,
        burst=600 if q else 3000,
        domains=10,
        lat_max_s=15 if q else 40,
        burst_max_s=15 if q else 30,
    )
    print(header(cfg), flush=True)
    ok = False
    try:
        with ExitStack() as stack:
            lab = Lab(LabSpec(pools=1, servers_per_pool=1))
            stack.callback(lab.remove)
            note("starting a 1-server lab (libvirtd, test driver)")
            inv = lab.start()
            rows = phase_latency(cfg, lab, inv)
            vm, ref = phase_ingest(cfg, inv, lab)
            rows += ingest_rows(vm, ref)
        ok = True
    except KeyboardInterrupt:
        note("interrupted; everything started was stopped")
        return 130
    finally:
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            note(f"logs kept in {workdir}")
    print()
    print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
