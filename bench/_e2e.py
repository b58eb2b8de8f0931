"""Phases 2 and 3: end-to-end workflow throughput (vmorch vs raw Celery chains) and the
submit-to-first-step latency of vmorch jobs."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import baseline_celery as bc
import redis
import redis.asyncio as aredis
from _load import drive, session
from _procs import (
    BENCH_DIR,
    HOST,
    Config,
    Proc,
    Row,
    admin_headers,
    free_port,
    note,
    percentile,
    pid_cpu_s,
    redis_commands,
    spawn,
    start_redis,
    used_memory,
    vmorch_env,
)

from orchestrator.settings import Settings
from orchestrator.store import keys


@dataclass
class Completion:
    done: int = 0
    elapsed_s: float = 0.0  # first submit -> last completion (or the time bound)
    n_99: int = 0  # 99% of the runs (rounded down)
    p99_s: float = 0.0  # first submit -> n_99 runs completed
    cpu_s: float = 0.0  # worker process group CPU over the run
    others_cpu_s: dict[str, float] = field(default_factory=dict)  # api, router, redis, bench
    redis_cmds: int = 0  # commands Redis executed over the run

    def rate(self, until_99: bool = False) -> float:
        if until_99:
            return self.n_99 / self.p99_s if self.p99_s else 0.0
        return self.done / self.elapsed_s if self.elapsed_s else 0.0

    def per_run(self, value: float) -> float:
        return value / max(self.done, 1)


@dataclass
class VmorchE2E:
    run: Completion = field(default_factory=Completion)
    first_step_load_ms: list[float] = field(default_factory=list)
    first_step_seq_ms: list[float] = field(default_factory=list)
    busy_e2e: int = 0  # advance messages a worker dropped as "busy" (lease still held)
    busy_seq: int = 0
    redispatched: int = 0  # jobs the router had to dispatch again (timer passed)
    memory_b: int = 0  # used_memory after the measured workflows less before
    records_b: int = 0  # MEMORY USAGE of their job hashes, summed
    fences_b: int = 0  # MEMORY USAGE of their fence keys, summed
    indexes_b: int = 0  # MEMORY USAGE of the index zsets a finished job is in, after less before
    stream_b: int = 0  # MEMORY USAGE of the event stream after less before


async def track(
    count: Callable[[], Awaitable[int]],
    base: int,
    target: int,
    t0: float,
    deadline: float,
    interval_s: float = 0.01,
) -> Completion:
    """Poll count() until base + target or the perf_counter deadline; when 99% were reached."""
    res = Completion(n_99=max(1, int(target * 0.99)))
    while True:
        n = await count()
        now = time.perf_counter()
        if n >= base + res.n_99 and not res.p99_s:
            res.p99_s = now - t0
        if n >= base + target or now > deadline:
            res.done, res.elapsed_s = n - base, now - t0
            return res
        await asyncio.sleep(interval_s)


def first_step_ms(job: dict[str, Any]) -> float:
    created = datetime.fromisoformat(job["created_at"])
    started = datetime.fromisoformat(job["steps"][0]["started_at"])
    return (started - created).total_seconds() * 1000


async def fetch_jobs(
    http: aiohttp.ClientSession, base_url: str, headers: dict[str, str], ids: Sequence[str]
) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(10)

    async def get(job_id: str) -> dict[str, Any]:
        async with sem, http.get(f"{base_url}/v1/jobs/{job_id}", headers=headers) as resp:
            resp.raise_for_status()
            doc: dict[str, Any] = await resp.json()
            return doc

    return list(await asyncio.gather(*(get(i) for i in ids)))


async def stream_bytes(r: aredis.Redis) -> int:
    """The event stream's memory, every entry counted (SAMPLES 0)."""
    return int(await r.memory_usage(keys.EVENTS, samples=0) or 0)


async def records_bytes(r: aredis.Redis, job_ids: Sequence[str]) -> int:
    return await usage(r, [keys.job(job_id) for job_id in job_ids])


async def usage(r: aredis.Redis, names: Sequence[str]) -> int:
    """MEMORY USAGE of `names`, every element counted (SAMPLES 0), summed."""
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    return sum(int(b or 0) for b in await pipe.execute())


# the indexes a finished noop job is in (retention deletes it from each)
INDEXES = [keys.JOBS_ALL, keys.JOBS_ENDED, keys.jobs_state("succeeded"), keys.jobs_kind("noop")]


def busy_drops(worker: Proc) -> int:
    return worker.output().count("s: 'busy'")


def own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_of(procs: dict[str, Callable[[], float]]) -> dict[str, float]:
    return {name: f() for name, f in procs.items()}


async def vmorch_e2e(
    cfg: Config,
    base_url: str,
    headers: dict[str, str],
    redis_url: str,
    worker: Proc,
    router: Proc,
    others: dict[str, Callable[[], float]],
) -> VmorchE2E:
    url, out = f"{base_url}/v1/jobs", VmorchE2E()
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    succeeded, failed = keys.jobs_state("succeeded"), keys.jobs_state("failed")

    async def done() -> int:
        n_ok, n_failed = await r.zcard(succeeded), await r.zcard(failed)
        if n_failed:
            raise RuntimeError(f"{n_failed} vmorch jobs failed; see {worker.log}")
        return int(n_ok)

    try:
        async with session(cfg.clients) as http:
            await drive(http, url, cfg.body, headers, cfg.warm_jobs, cfg.warm_jobs, 30)
            now = time.perf_counter()
            if (await track(done, 0, cfg.warm_jobs, now, now + 30)).done < cfg.warm_jobs:
                raise RuntimeError(f"warm-up jobs did not succeed; see {worker.log}")
            note(f"E2E: vmorch, {cfg.workflows} workflows x {cfg.steps} steps")
            busy0, cmds0 = busy_drops(worker), redis_commands(redis_url)
            mem0, stream0 = used_memory(redis_url), await stream_bytes(r)
            index0 = await usage(r, INDEXES)
            cpu0, t0 = worker.cpu_s(), time.perf_counter()
            others0 = cpu_of(others)
            sub = await drive(
                http,
                url,
                cfg.body,
                headers,
                cfg.workflows,
                cfg.clients,
                cfg.e2e_max_s,
                collect_ids=True,
            )
            out.run = await track(done, cfg.warm_jobs, cfg.workflows, t0, t0 + cfg.e2e_max_s)
            out.run.cpu_s = worker.cpu_s() - cpu0
            out.run.others_cpu_s = {k: v - others0[k] for k, v in cpu_of(others).items()}
            out.run.redis_cmds = redis_commands(redis_url) - cmds0
            out.busy_e2e = busy_drops(worker) - busy0
            out.memory_b = used_memory(redis_url) - mem0
            out.stream_b = await stream_bytes(r) - stream0
            out.records_b = await records_bytes(r, sub.ids)
            out.fences_b = await usage(r, [keys.fence(i) for i in sub.ids])
            out.indexes_b = await usage(r, INDEXES) - index0
            if out.run.done < cfg.workflows:
                note(f"E2E vmorch: {out.run.done}/{cfg.workflows} done in {cfg.e2e_max_s:.0f}s")
            note(f"latency: up to {cfg.seq_jobs} sequential jobs (1 in flight)")
            seq: list[str] = []
            base, stop_at = cfg.warm_jobs + out.run.done, time.perf_counter() + cfg.seq_max_s
            # a job stalled by a dropped message waits for the router: redispatch_after_s
            wait_s = Settings().redispatch_after_s + 5
            while len(seq) < cfg.seq_jobs and time.perf_counter() < stop_at:
                res = await drive(http, url, cfg.body, headers, 1, 1, 10, collect_ids=True)
                if not res.ids:
                    raise RuntimeError(f"sequential submit failed: {res.first_error}")
                seq.append(res.ids[0])
                t = time.perf_counter()
                if (await track(done, base, len(seq), t, t + wait_s, 0.002)).done < len(seq):
                    raise RuntimeError(f"sequential job {res.ids[0]} not done in {wait_s}s")
            out.busy_seq = busy_drops(worker) - busy0 - out.busy_e2e
            out.redispatched = router.output().count(" redispatch ")
            load_docs = await fetch_jobs(http, base_url, headers, sub.ids)
            seq_docs = await fetch_jobs(http, base_url, headers, seq)
    finally:
        await r.aclose()
    out.first_step_load_ms = [
        first_step_ms(d) for d in load_docs if d["steps"] and d["steps"][0]["started_at"]
    ]
    out.first_step_seq_ms = [first_step_ms(d) for d in seq_docs]
    return out


def celery_e2e(
    cfg: Config, redis_url: str, worker: Proc, others: dict[str, Callable[[], float]]
) -> Completion:
    """Raw Celery chains of no-op tasks, published from this process."""
    app = bc.make_app(redis_url)
    r = redis.Redis.from_url(redis_url)

    async def done() -> int:
        return int(r.get(bc.DONE_KEY) or 0)

    try:
        for _ in range(cfg.warm_jobs):
            bc.send_chain(app, cfg.steps)
        now = time.perf_counter()
        if asyncio.run(track(done, 0, cfg.warm_jobs, now, now + 30)).done < cfg.warm_jobs:
            raise RuntimeError(f"warm-up chains did not finish; see {worker.log}")
        note(f"E2E: raw Celery, {cfg.workflows} chains x {cfg.steps} tasks")
        cmds0, cpu0, t0 = redis_commands(redis_url), worker.cpu_s(), time.perf_counter()
        others0 = cpu_of(others)
        for _ in range(cfg.workflows):
            bc.send_chain(app, cfg.steps)
        res = asyncio.run(track(done, cfg.warm_jobs, cfg.workflows, t0, t0 + cfg.e2e_max_s))
        res.cpu_s = worker.cpu_s() - cpu0
        res.others_cpu_s = {k: v - others0[k] for k, v in cpu_of(others).items()}
        res.redis_cmds = redis_commands(redis_url) - cmds0
    finally:
        r.close()
        app.close()
    return res


def phase_e2e(cfg: Config) -> list[Row]:
    with ExitStack() as stack:
        server = start_redis(stack, cfg, "redis-e2e")
        port = free_port()
        env = vmorch_env(server.url, port)
        api = spawn(stack, cfg, "api-e2e", ["-m", "orchestrator.cli", "api"], env)
        router = spawn(stack, cfg, "router", ["-m", "orchestrator.cli", "router"], env)
        worker = spawn(
            stack,
            cfg,
            "worker",
            ["-m", "orchestrator.cli", "worker", "-c", str(cfg.concurrency), "--noop", "also"],
            env,
        )
        base_url = f"http://{HOST}:{port}"
        api.wait_http(f"{base_url}/healthz")
        worker.wait_output(" ready.")
        headers = admin_headers(server.url)
        others = {
            "api": api.cpu_s,
            "router": router.cpu_s,
            "redis-server": lambda: pid_cpu_s(server.pid),
            "bench (clients)": own_cpu_s,
        }
        vm = asyncio.run(vmorch_e2e(cfg, base_url, headers, server.url, worker, router, others))
        worker.stop()  # free the CPUs for the baseline
        router.stop()
        bworker = spawn(
            stack,
            cfg,
            "baseline-worker",
            [
                str(BENCH_DIR / "baseline_celery.py"),
                "--redis-url",
                server.url,
                "-c",
                str(cfg.concurrency),
            ],
        )
        bworker.wait_output(" ready.")
        bothers = {k: others[k] for k in ("redis-server", "bench (clients)")}
        ch = celery_e2e(cfg, server.url, bworker, bothers)
    n, m = vm.run.done, len(vm.first_step_seq_ms)
    return [
        (
            f"E2E {cfg.workflows} workflows x {cfg.steps} steps, to last done (workflows/s)",
            vm.run.rate(),
            ch.rate(),
            ".1f",
            0.9,
        ),
        ("E2E workflows/s, to 99% done", vm.run.rate(True), ch.rate(True), ".1f", 0.9),
        (
            "E2E worker CPU per workflow (ms)",
            vm.run.per_run(vm.run.cpu_s * 1000),
            ch.per_run(ch.cpu_s * 1000),
            ".1f",
            None,
        ),
        *(
            (
                f"E2E {name} CPU per workflow (ms)",
                vm.run.per_run(cpu * 1000),
                ch.per_run(ch.others_cpu_s[name] * 1000) if name in ch.others_cpu_s else None,
                ".1f",
                None,
            )
            for name, cpu in vm.run.others_cpu_s.items()
        ),
        (
            "E2E Redis commands per workflow (incl. in Lua)",
            vm.run.per_run(vm.run.redis_cmds),
            ch.per_run(ch.redis_cmds),
            ".0f",
            None,
        ),
        (
            "Redis memory a finished job keeps: record + indexes (bytes; aim <= 2048)",
            vm.run.per_run(vm.records_b + vm.fences_b + vm.indexes_b),
            None,
            ".0f",
            None,
        ),
        (
            "  of which its job record (MEMORY USAGE job:<id>)",
            vm.run.per_run(vm.records_b),
            None,
            ".0f",
            None,
        ),
        (
            "  its entries in the 4 index zsets (MEMORY USAGE after less before)",
            vm.run.per_run(vm.indexes_b),
            None,
            ".0f",
            None,
        ),
        (
            "  its fence key (MEMORY USAGE fence:<id>)",
            vm.run.per_run(vm.fences_b),
            None,
            ".0f",
            None,
        ),
        (
            "its events on the stream, until trimmed at the maxlen (bytes)",
            vm.run.per_run(vm.stream_b),
            None,
            ".0f",
            None,
        ),
        (
            "used_memory delta per workflow (all of it, allocator included; noisy)",
            vm.run.per_run(vm.memory_b),
            None,
            ".0f",
            None,
        ),
        ("E2E advance msgs dropped 'busy' (lease race)", vm.busy_e2e, None, "d", None),
        (
            "router re-dispatches (whole vmorch E2E + latency run)",
            vm.redispatched,
            None,
            "d",
            None,
        ),
        (
            f"submit->first step p50, {m} sequential jobs (ms)",
            percentile(vm.first_step_seq_ms, 50),
            None,
            ".1f",
            None,
        ),
        (
            f"submit->first step p99, {m} sequential jobs (ms)",
            percentile(vm.first_step_seq_ms, 99),
            None,
            ".1f",
            None,
        ),
        (f"advance msgs dropped 'busy', {m} sequential jobs", vm.busy_seq, None, "d", None),
        (
            f"submit->first step p50, the {n} E2E jobs, queued (ms)",
            percentile(vm.first_step_load_ms, 50),
            None,
            ".1f",
            None,
        ),
        (
            f"submit->first step p99, the {n} E2E jobs, queued (ms)",
            percentile(vm.first_step_load_ms, 99),
            None,
            ".1f",
            None,
        ),
    ]
