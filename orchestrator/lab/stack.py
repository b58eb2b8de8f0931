"""`vmorch up`: the embedded default on one machine. Redis, the lab, api, worker, router, agents.

Everything it starts it stops again on Ctrl-C, SIGTERM or `vmorch down`, and only then: an
api, router, worker or agent that exits is started again (see supervisor.py). Details (API
address, admin token, Redis URL with its password, every server's URI, PIDs) go to
`<lab_dir>/vmorch.json`. The lab directory, its logs and the Redis data are its owner's only
(directories 0700, files 0600).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.lab.lab import Lab, LabSpec
from orchestrator.lab.labdir import STATE_FILE, LabDir
from orchestrator.lab.process import free_port, pid_running, port_is_free, wait_ready
from orchestrator.lab.redis_server import RedisServer
from orchestrator.lab.supervisor import Supervisor
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from schemas.api import Role
from schemas.inventory import Inventory

__all__ = ["STATE_FILE", "Stack", "down", "up"]  # STATE_FILE: the CLI client's import

POLL_INTERVAL_S = 0.2
CHILD_STOP_TIMEOUT_S = 15.0


async def _prime(settings: Settings, inv: Inventory) -> dict[str, str]:
    """Load the lab's inventory and make a token of each role (role -> token): the CLI
    uses the least one a command needs."""
    r = connect(settings)
    try:
        svc = Services.build(settings, r)
        await svc.inventory.load(inv)
        tokens = {}
        for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
            tokens[role.value], _ = await svc.tokens.create(role.value, role)
        return tokens
    finally:
        await r.aclose()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


class StopSignals:
    """Ctrl-C and SIGTERM: while the lab starts they abort the start (as KeyboardInterrupt,
    so that what was started is stopped again); once it is up they only ask the wait loop to
    stop; while it stops they are noted and ignored, so a second Ctrl-C cannot leave
    orphans behind."""

    def __init__(self) -> None:
        self.received = 0
        self.interrupt = True

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received = signum
        if self.interrupt:
            raise KeyboardInterrupt


class Stack:
    """The processes of one `vmorch up`, started in order and stopped in reverse; the
    vmorch processes among them are supervised (restarted when they exit)."""

    def __init__(self, settings: Settings, spec: LabSpec, port: int | None, lab_dir: LabDir):
        self.settings = settings
        self.spec = spec
        self.port = port
        self.lab_dir = lab_dir
        self.redis: RedisServer | None = None
        self.lab: Lab | None = None
        self.children = Supervisor(time.monotonic, on_restart=self._write_state)
        self.state: dict[str, Any] = {}
        self.metrics: dict[str, str] = {}  # process name -> its /metrics URL

    def _log_path(self, name: str) -> Path:
        return self.lab_dir.logs / f"{name}.log"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "orchestrator.cli", *args]
        if name != "api":  # the api serves /metrics on its own port
            host = self.settings.metrics_host
            port = free_port(host)
            env = {**env, "VMORCH_METRICS_PORT": str(port)}
            self.metrics[name] = f"http://{host}:{port}/metrics"
        self.children.start(name, argv, env, self._log_path(name))

    def _write_state(self) -> None:
        """(Re)write vmorch.json with the current PIDs; atomic, so readers never see half."""
        self.state["processes"] = self.children.pids()
        self.lab_dir.write_state(self.state)

    def start(self) -> dict[str, Any]:
        self.lab_dir.create()
        self.redis = RedisServer(self.lab_dir.redis, appendonly=True, require_password=True)
        redis_url = self.redis.start()
        self.lab = Lab(self.spec)
        inv = self.lab.start()
        tokens = asyncio.run(_prime(self.settings.model_copy(update={"redis_url": redis_url}), inv))
        host = self.settings.api_host
        port = self.port or self.settings.api_port
        if not port_is_free(host, port):
            port = free_port(host)
        env = {
            # the lab's fence action, unless the user gave one
            "VMORCH_FENCE_COMMAND": json.dumps(
                [sys.executable, "-m", "orchestrator.lab.fence", str(self.lab.base_dir), "{server}"]
            ),
            # imports from files served on this machine (the lab's sources are local)
            "VMORCH_IMPORT_ALLOWED_HOSTS": json.dumps(["127.0.0.0/8", "::1"]),
            # the api seals secret values for guests with it, the agents open them
            "VMORCH_GUEST_SECRET_KEY": self.lab_dir.guest_secret_key(),
            **os.environ,
            "VMORCH_REDIS_URL": redis_url,
            "VMORCH_API_HOST": host,
            "VMORCH_API_PORT": str(port),
        }
        api_url = f"http://{host}:{port}"
        self._spawn("api", ["api"], env)
        self._spawn("router", ["router"], env)
        self._spawn("worker", ["worker"], env)
        # engine drills (`noop` jobs) on a worker of their own: they never take VM slots
        self._spawn("worker-noop", ["worker", "--noop", "only", "-c", "1"], env)
        for s in inv.servers:
            self._spawn(f"agent-{s.name}", ["agent", "--server", s.name], env)
        health = api_url + "/healthz"
        api = self.children.proc("api")
        wait_ready(api, "api", lambda: _http_ok(health), 30, self._log_path("api"))
        self.state = {
            "api_url": api_url,
            "admin_token": tokens[Role.ADMIN.value],
            "tokens": tokens,
            "redis_url": redis_url,
            "lab_dir": str(self.lab_dir.path),
            "hypervisor_dir": str(self.lab.base_dir),
            "pid": os.getpid(),
            "servers": [{"name": s.name, "pool": s.pool, "uri": s.uri} for s in inv.servers],
            "pools": [p.name for p in inv.pools],
            "templates": [t.name for t in inv.templates],
            "metrics": {"api": f"{api_url}/metrics", **self.metrics},
        }
        self._write_state()
        return self.state

    def stop(self) -> None:
        self.children.stop(CHILD_STOP_TIMEOUT_S)
        if self.lab is not None:
            self.lab.remove()
        if self.redis is not None:
            self.redis.stop()
        self.lab_dir.remove_state()

    def wait(self, signals: StopSignals) -> int:
        """Supervise the children until a stop signal arrives; returns the exit code."""
        signals.interrupt = False
        while not signals.received:
            self.children.poll()
            time.sleep(POLL_INTERVAL_S)
        return 0


def _refuse_if_running(lab_dir: LabDir) -> bool:
    """True (and a message) if another `vmorch up` uses `lab_dir`; else it is ours now."""
    old = lab_dir.read_state() or {}
    pid = old.get("pid")
    # the state file's PID too: a `vmorch up` from before the lock existed holds none
    if lab_dir.lock() and not (isinstance(pid, int) and pid_running(pid)):
        return False
    holder = pid if isinstance(pid, int) and pid_running(pid) else lab_dir.holder()
    print(f"vmorch is already running (pid {holder}); `vmorch down` stops it", file=sys.stderr)
    return True


def _prepare_state(lab_dir: LabDir, keep_state: bool) -> None:
    """Fresh by default: the lab's hypervisors always start empty (the test driver keeps
    nothing), so the last run's jobs, VMs and tokens would only describe a fleet gone."""
    if keep_state:
        there = lab_dir.redis.exists()
        print(f"vmorch: keeping the state of the last run{'' if there else ' (there is none)'}")
    elif lab_dir.clear_previous_state():
        print("vmorch: starting fresh (previous state removed)")
    else:
        print("vmorch: starting fresh")


def up(
    settings: Settings,
    spec: LabSpec,
    port: int | None,
    keep_state: bool = False,
    quiet: bool = False,
) -> int:
    """Start the stack and supervise it until stopped. `quiet`: the admin token is not
    printed (terminal scrollback, CI logs); it is in the details file, as always."""
    lab_dir = LabDir(settings.lab_dir)
    signals = StopSignals()
    signals.install()
    stack = Stack(settings, spec, port, lab_dir)
    try:
        lab_dir.create()
        if _refuse_if_running(lab_dir):
            return 1
        _prepare_state(lab_dir, keep_state)
        try:
            state = stack.start()
            token = "(in the details file)" if quiet else state["admin_token"]
            print(
                f"vmorch is up ({spec.kind} lab: {spec.pools} pools of "
                f"{spec.servers_per_pool} servers)\n  api:         {state['api_url']}\n"
                f"  admin token: {token}\n  details:     {lab_dir.state_path}\n"
                "Ctrl-C (or `vmorch down`) stops everything.",
                flush=True,
            )
            return stack.wait(signals)
        finally:
            signals.interrupt = False
            stack.stop()
            print("vmorch stopped", flush=True)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the lab was up
        return 130
    finally:
        lab_dir.unlock()


def down(settings: Settings) -> int:
    lab_dir = LabDir(settings.lab_dir)
    state = lab_dir.read_state()
    if state is None:
        print("vmorch is not running (no state file)", file=sys.stderr)
        return 1
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        lab_dir.remove_state()
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return 0
        time.sleep(0.2)
    print(f"vmorch (pid {pid}) did not stop within 60 s", file=sys.stderr)
    return 1
