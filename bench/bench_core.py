"""vmorch core benchmark: HTTP job submissions, end-to-end workflow throughput and
submit-to-first-step latency, each next to a baseline measured in the same run.

    /work/main/.venv/bin/python bench/bench_core.py [--quick] [--keep-logs]

Everything runs on 127.0.0.1 against private redis-servers started here; every process
started is stopped at the end (process groups), even on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from _e2e import phase_e2e
from _listing import phase_listing
from _load import drive, session
from _procs import (
    Config,
    Row,
    admin_headers,
    note,
    percentile,
    pid_cpu_s,
    redis_commands,
    render_table,
    start_api_and_baseline,
    start_redis,
)

from orchestrator.lab.redis_server import RedisServer
from orchestrator.settings import Settings


# --- 1. HTTP submissions ----------------------------------------------------------------
@dataclass
class HttpStats:
    """Measured runs of one server, summed over the rounds."""

    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    redis_cmds: int = 0

    def per_req_ms(self, cpu_s: float) -> float:
        return cpu_s * 1000 / max(self.ok, 1)


def own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def http_round(
    cfg: Config,
    url: str,
    headers: dict[str, str],
    server_pid: int,
    redis: RedisServer,
    stats: HttpStats,
) -> None:
    """One run against one server: warm-up (new connections), then the measured requests."""
    async with session(cfg.clients) as http:
        warm = await drive(http, url, cfg.body, headers, cfg.warmup, cfg.clients, cfg.http_max_s)
        if warm.errors:
            raise RuntimeError(f"{url}: {warm.errors} errors in warm-up: {warm.first_error}")
        cmds0 = redis_commands(redis.url)
        cpu0, rcpu0, ccpu0 = pid_cpu_s(server_pid), pid_cpu_s(redis.pid), own_cpu_s()
        res = await drive(http, url, cfg.body, headers, cfg.requests, cfg.clients, cfg.http_max_s)
        stats.server_cpu_s += pid_cpu_s(server_pid) - cpu0
        stats.redis_cpu_s += pid_cpu_s(redis.pid) - rcpu0
        stats.client_cpu_s += own_cpu_s() - ccpu0
        stats.redis_cmds += redis_commands(redis.url) - cmds0
    if res.errors or res.ok < cfg.requests:
        note(f"{url}: {res.ok}/{cfg.requests} ok, {res.errors} errors ({res.first_error})")
    stats.rates.append(res.rate)
    stats.latencies_ms += res.latencies_ms
    stats.ok += res.ok


def phase_http(cfg: Config) -> list[Row]:
    with ExitStack() as stack:
        server = start_redis(stack, cfg, "redis-http")
        api, base, api_url, base_url = start_api_and_baseline(stack, cfg, server, "http")
        headers = admin_headers(server.url)
        b, v = HttpStats(), HttpStats()
        for i in range(cfg.rounds):
            note(
                f"HTTP round {i + 1}/{cfg.rounds}: baseline, then vmorch api "
                f"({cfg.warmup} warm-up + {cfg.requests} requests each)"
            )
            asyncio.run(http_round(cfg, f"{base_url}/v1/jobs", headers, base.pid, server, b))
            asyncio.run(http_round(cfg, f"{api_url}/v1/jobs", headers, api.pid, server, v))
    return [
        (
            f"HTTP POST /v1/jobs, {cfg.clients} clients (req/s, median of {cfg.rounds} rounds)",
            percentile(v.rates, 50),
            percentile(b.rates, 50),
            ".0f",
            0.7,
        ),
        (
            "HTTP POST latency p50 (ms)",
            percentile(v.latencies_ms, 50),
            percentile(b.latencies_ms, 50),
            ".1f",
            None,
        ),
        (
            "HTTP POST latency p99 (ms)",
            percentile(v.latencies_ms, 99),
            percentile(b.latencies_ms, 99),
            ".1f",
            None,
        ),
        (
            "HTTP server process CPU per request (ms)",
            v.per_req_ms(v.server_cpu_s),
            b.per_req_ms(b.server_cpu_s),
            ".3f",
            None,
        ),
        (
            "HTTP redis-server CPU per request (ms)",
            v.per_req_ms(v.redis_cpu_s),
            b.per_req_ms(b.redis_cpu_s),
            ".3f",
            None,
        ),
        (
            "HTTP load client CPU per request (ms)",
            v.per_req_ms(v.client_cpu_s),
            b.per_req_ms(b.client_cpu_s),
            ".3f",
            None,
        ),
        (
            "HTTP Redis commands per request (incl. in Lua)",
            v.redis_cmds / max(v.ok, 1),
            b.redis_cmds / max(b.ok, 1),
            ".1f",
            None,
        ),
    ]


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
    libs = ", ".join(f"{p} {version(p)}" for p in ("aiohttp", "celery", "redis", "pydantic"))
    return "\n".join(
        [
            f"vmorch core benchmark{' (--quick)' if cfg.quick else ''}",
            f"machine : nproc={len(os.sched_getaffinity(0))} ({cpu_model}), "
            f"{platform.system()} {platform.release()}, load average at start "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"software: Python {platform.python_version()}, {libs}, redis-server {redis_version}",
            f"HTTP    : {cfg.clients} keep-alive clients (1 aiohttp session, in the bench process) "
            f"POST {cfg.body.decode()}; {cfg.rounds} rounds x (baseline, vmorch), each "
            f"{cfg.warmup} warm-up + {cfg.requests} measured (cap {cfg.http_max_s:.0f}s); "
            "no worker; baseline = bare aiohttp app doing 1 Redis SET",
            f"E2E     : {cfg.workflows} workflows x {cfg.steps} no-op steps submitted over HTTP by "
            f"{cfg.clients} clients; 1 worker (prefork -c {cfg.concurrency}) + router + api; "
            f"baseline = {cfg.workflows} celery.chain of {cfg.steps} no-op tasks published by the "
            f"bench, same worker settings; {cfg.warm_jobs} warm-up each; cap {cfg.e2e_max_s:.0f}s",
            f"latency : created_at -> steps[0].started_at of up to {cfg.seq_jobs} jobs run one at "
            f"a time (no queueing; cap {cfg.seq_max_s:.0f}s), and of the E2E jobs (all queued)",
            f"memory  : INFO used_memory less client buffers, before and after the "
            f"{cfg.workflows} measured E2E workflows, per workflow; MEMORY USAGE (SAMPLES 0) of "
            "their records and of the stream",
            f"listing : {cfg.list_jobs} finished {cfg.steps}-step jobs stored (record and indexes, "
            f"by a Lua loop); {cfg.list_requests} GET /v1/jobs one at a time; baseline = bare "
            "aiohttp app doing the same Redis reads, docs inflated, not parsed",
            f"vmorch  : defaults: lease_ms={s.lease_ms} sweep_interval_s={s.sweep_interval_s} "
            f"redispatch_after_s={s.redispatch_after_s} log_level={s.log_level}; "
            "a private redis-server per phase, appendonly no",
        ]
    )


def table(rows: list[Row]) -> str:
    cells = [("metric", "vmorch", "baseline", "vmorch/baseline")]
    for metric, v, b, fmt, aim in rows:
        ratio = ""
        if aim is not None and v is not None and b:
            ratio = f"{v / b:.2f}x ({'meets' if v / b >= aim else 'BELOW'} aim >= {aim:.2f}x)"
        cells.append(
            (
                metric,
                "-" if v is None else format(v, fmt),
                "-" if b is None else format(b, fmt),
                ratio,
            )
        )
    return render_table(cells)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop everything
    workdir = Path(tempfile.mkdtemp(prefix="vmorch-bench-"))
    q = args.quick
    cfg = Config(
        quick=q,
        workdir=workdir,
        requests=1000 if q else 5000,
        warmup=200 if q else 500,
        rounds=3,
        workflows=50 if q else 200,
        seq_jobs=30 if q else 100,
        http_max_s=15 if q else 30,
        e2e_max_s=30 if q else 60,
        seq_max_s=20 if q else 40,
        list_jobs=20_000 if q else 100_000,
        list_requests=300 if q else 1000,
    )
    print(header(cfg), flush=True)
    ok = False
    try:
        rows = phase_http(cfg) + phase_e2e(cfg) + phase_listing(cfg)
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
