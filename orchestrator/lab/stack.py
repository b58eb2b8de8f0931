"""`vmorch up`: the embedded default on one machine. Redis, the lab, api, worker, router, agents.

Everything it starts it stops again on Ctrl-C, SIGTERM or `vmorch down`. Details (API address,
admin token, every server's URI, PIDs) go to `<lab_dir>/vmorch.json`. The lab directory, its
logs and the Redis data are its owner's only (directories 0700, files 0600).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from orchestrator.lab.files import private_dir, write_private
from orchestrator.lab.lab import Lab, LabSpec
from orchestrator.lab.process import free_port, port_is_free, spawn, wait_ready
from orchestrator.lab.redis_server import RedisServer
from orchestrator.settings import Settings
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.tokens import TokenStore
from schemas.api import Role
from schemas.inventory import Inventory

STATE_FILE = "vmorch.json"


async def _prime(redis_url: str, inv: Inventory) -> str:
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await InventoryStore(r).load(inv)
        token, _ = await TokenStore(r).create("admin", Role.ADMIN)
        return token
    finally:
        await r.aclose()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


class Stack:
    """The processes of one `vmorch up`, started in order and stopped in reverse."""

    def __init__(self, settings: Settings, spec: LabSpec, port: int | None):
        self.settings = settings
        self.spec = spec
        self.port = port
        self.lab_dir = settings.lab_dir.resolve()
        self.redis: RedisServer | None = None
        self.lab: Lab | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _log_path(self, name: str) -> Path:
        return self.lab_dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "orchestrator.cli", *args]
        self.procs[name] = spawn(argv, self._log_path(name), env=env, umask=0o077)

    def start(self) -> dict[str, Any]:
        private_dir(self.lab_dir)
        private_dir(self.lab_dir / "logs")
        self.redis = RedisServer(self.lab_dir / "redis", appendonly=True, require_password=True)
        redis_url = self.redis.start()
        self.lab = Lab(self.spec)
        inv = self.lab.start()
        token = asyncio.run(_prime(redis_url, inv))
        host = self.settings.api_host
        port = self.port or self.settings.api_port
        if not port_is_free(host, port):
            port = free_port(host)
        env = {
            **os.environ,
            "VMORCH_REDIS_URL": redis_url,
            "VMORCH_API_HOST": host,
            "VMORCH_API_PORT": str(port),
        }
        api_url = f"http://{host}:{port}"
        self._spawn("api", ["api"], env)
        self._spawn("router", ["router"], env)
        self._spawn("worker", ["worker"], env)
        for s in inv.servers:
            self._spawn(f"agent-{s.name}", ["agent", "--server", s.name], env)
        health = api_url + "/healthz"
        wait_ready(self.procs["api"], "api", lambda: _http_ok(health), 30, self._log_path("api"))
        state = {
            "api_url": api_url,
            "admin_token": token,
            "redis_url": redis_url,
            "lab_dir": str(self.lab_dir),
            "hypervisor_dir": str(self.lab.base_dir),
            "pid": os.getpid(),
            "servers": [{"name": s.name, "pool": s.pool, "uri": s.uri} for s in inv.servers],
            "pools": [p.name for p in inv.pools],
            "templates": [t.name for t in inv.templates],
            "processes": {n: p.pid for n, p in self.procs.items()},
        }
        write_private(self.lab_dir / STATE_FILE, json.dumps(state, indent=2))
        return state

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.lab is not None:
            self.lab.remove()
        if self.redis is not None:
            self.redis.stop()
        (self.lab_dir / STATE_FILE).unlink(missing_ok=True)

    def wait(self) -> int:
        """Block until a signal or until a process dies; returns an exit code."""
        stopping = {"sig": 0}

        def on_signal(signum: int, _frame: object) -> None:
            stopping["sig"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping["sig"]:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    print(f"vmorch: {name} exited with {p.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0


def up(settings: Settings, spec: LabSpec, port: int | None) -> int:
    state_path = settings.lab_dir.resolve() / STATE_FILE
    if state_path.exists():
        old = json.loads(state_path.read_text())
        try:
            os.kill(int(old["pid"]), 0)
            print(
                f"vmorch is already running (pid {old['pid']}); `vmorch down` stops it",
                file=sys.stderr,
            )
            return 1
        except (OSError, KeyError, ValueError):
            pass  # a stale file from a crashed run
    stack = Stack(settings, spec, port)
    try:
        state = stack.start()
        print(
            f"vmorch is up\n  api:         {state['api_url']}\n"
            f"  admin token: {state['admin_token']}\n  details:     {state_path}\n"
            "Ctrl-C (or `vmorch down`) stops everything.",
            flush=True,
        )
        return stack.wait()
    finally:
        stack.stop()
        print("vmorch stopped", flush=True)


def down(settings: Settings) -> int:
    state_path = settings.lab_dir.resolve() / STATE_FILE
    if not state_path.exists():
        print("vmorch is not running (no state file)", file=sys.stderr)
        return 1
    pid = int(json.loads(state_path.read_text())["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_path.unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.2)
    print(f"vmorch (pid {pid}) did not stop within 60 s", file=sys.stderr)
    return 1
