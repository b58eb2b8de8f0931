"""Benchmark setup: the run's settings, subprocesses in their own session, small statistics.

Everything the benchmark starts is registered on an ExitStack, so it is stopped at the end
even on an error or Ctrl-C. Only the process groups we created are ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from orchestrator.lab.reaper import proc_stats
from orchestrator.lab.redis_server import RedisServer
from orchestrator.store.tokens import TokenStore
from schemas.api import Role

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Row = tuple[str, float | None, float | None, str, float | None]
"""One table row: metric, vmorch value, baseline value (None: none), format, and the aim
for vmorch/baseline (None: no ratio shown)."""


@dataclass(frozen=True)
class Config:
    quick: bool
    workdir: Path
    requests: int  # measured HTTP requests per server and round
    warmup: int  # HTTP warm-up requests per server
    rounds: int  # HTTP rounds, baseline and vmorch alternating
    workflows: int  # E2E workflows (and baseline chains)
    seq_jobs: int  # sequential jobs for the first-step latency
    http_max_s: float  # bound of one HTTP run
    e2e_max_s: float  # bound of one E2E run
    seq_max_s: float  # bound of the sequential run
    clients: int = 50
    steps: int = 5
    concurrency: int = 2  # worker processes (prefork)
    warm_jobs: int = 4  # E2E warm-up: each worker process builds its runtime on a first task
    list_jobs: int = 100_000  # jobs stored for the GET /v1/jobs latency
    list_requests: int = 1000  # GETs timed, one at a time, per server

    @property
    def body(self) -> bytes:
        return json.dumps({"kind": "noop", "steps": self.steps}).encode()


def note(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy; RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """A Python subprocess in its own session (process group), output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.log = logdir / f"{name}.log"
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.p.poll() is not None:
            tail = "\n".join(self.output().splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with code {self.p.returncode}:\n{tail}")

    def wait_output(self, marker: str, timeout_s: float = 30) -> None:
        def seen() -> bool:
            self.check_alive()
            return marker in self.output()

        wait_until(seen, timeout_s, f"{self.name} to print {marker!r}", 0.05)

    def wait_http(self, url: str, timeout_s: float = 30) -> None:
        def up() -> bool:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return True
            except OSError:
                return False

        wait_until(up, timeout_s, f"{self.name} at {url}", 0.05)

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # our session: pgid == child's pid
            os.killpg(self.p.pid, sig)

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM the group, wait, then SIGKILL the group (leftover pool children too)."""
        if self.p.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.p.wait()
        self._killpg(signal.SIGKILL)
        self._out.close()

    def cpu_s(self) -> float:
        """User+system CPU seconds of every live process in this process group."""
        return group_cpu_s(self.p.pid)


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds used so far by the live processes of process group `pgid`."""
    ticks = 0
    for _pid, fields in proc_stats():  # fields: state ppid pgrp ... utime(11) stime(12)
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def pid_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def redis_commands(url: str) -> int:
    """Commands our redis-server has executed so far, including those run inside Lua scripts."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def used_memory(url: str) -> int:
    """Bytes our redis-server has allocated (INFO memory used_memory), less its clients'
    buffers (mem_clients_normal): a burst of new connections is no data."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("memory")
        return int(info["used_memory"]) - int(info["mem_clients_normal"])
    finally:
        client.close()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# --- starting things on an ExitStack ------------------------------------------------------
def spawn(
    stack: ExitStack, cfg: Config, name: str, argv: list[str], env: dict[str, str] | None = None
) -> Proc:
    proc = Proc(name, argv, env or dict(os.environ), cfg.workdir)
    stack.callback(proc.stop)
    return proc


def start_redis(stack: ExitStack, cfg: Config, name: str) -> RedisServer:
    """A private redis-server on a free port (never the machine's own Redis)."""
    server = RedisServer(cfg.workdir / name, appendonly=False)
    stack.callback(server.stop)
    server.start()
    return server


def vmorch_env(redis_url: str, api_port: int | None = None) -> dict[str, str]:
    env = {**os.environ, "VMORCH_REDIS_URL": redis_url}
    if api_port is not None:
        env["VMORCH_API_PORT"] = str(api_port)
    return env


def start_api_and_baseline(
    stack: ExitStack, cfg: Config, server: RedisServer, tag: str
) -> tuple[Proc, Proc, str, str]:
    """A vmorch api and the bare baseline app on the same Redis, both answering; returns
    them with their base URLs."""
    api_port, base_port = free_port(), free_port()
    api = spawn(
        stack,
        cfg,
        f"api-{tag}",
        ["-m", "orchestrator.cli", "api"],
        vmorch_env(server.url, api_port),
    )
    base = spawn(
        stack,
        cfg,
        f"baseline-{tag}",
        [str(BENCH_DIR / "baseline_app.py"), "--port", str(base_port), "--redis-url", server.url],
    )
    api_url, base_url = f"http://{HOST}:{api_port}", f"http://{HOST}:{base_port}"
    api.wait_http(f"{api_url}/healthz")
    base.wait_http(f"{base_url}/healthz")
    return api, base, api_url, base_url


def admin_headers(redis_url: str) -> dict[str, str]:
    """Create an admin token in our Redis; the request headers that carry it."""

    async def create() -> str:
        r = aredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await TokenStore(r).create("bench", Role.ADMIN))[0]
        finally:
            await r.aclose()

    return {"Authorization": f"Bearer {asyncio.run(create())}", "Content-Type": "application/json"}


def render_table(cells: list[tuple[str, str, str, str]]) -> str:
    """Aligned columns (metric, vmorch, baseline, note) with a rule under the header row."""
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [
        f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]}".rstrip()
        for c in cells
    ]
    lines.insert(1, "-" * max(len(ln) for ln in lines))
    return "\n".join(lines)
