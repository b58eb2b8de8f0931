"""Keeps `vmorch up`'s own processes (api, router, worker, agents) running: one that exits is
started again after a delay that doubles while it keeps crashing, so a worker killed by the
OOM killer comes back in half a second and one that cannot start does not spin the CPU.

Only the caller stops them (Ctrl-C, SIGTERM, `vmorch down`): in a lab, a crashed worker is a
thing to recover from and watch, not a reason to take everything down with it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from orchestrator.lab.process import exited, reap_group, spawn, stop_groups


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial_s`, doubled at each crash in a row, at most `max_s`. A child
    that stayed up `reset_after_s` was healthy: its next crash starts again at `initial_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def delay_s(self, crashes: int) -> float:
        """The delay before the restart that follows the `crashes`-th crash in a row (1, 2...)."""
        return min(self.max_s, self.initial_s * 2.0 ** max(0, crashes - 1))


def describe_exit(code: int) -> str:
    """`-9 (SIGKILL)` for a signal, the code alone otherwise."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # umask 077: whatever a child creates is its owner's only, as the lab directory is
    return spawn(argv, log_path, env=env, umask=0o077)


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    started_s: float
    crashes: int = 0
    restart_at_s: float | None = None  # set while it waits to be started again


class Supervisor:
    """Starts children, restarts them when they exit, and stops them all on request.

    `poll()` is called from the caller's loop (no threads): it notices exits, restarts
    children whose delay has passed, and calls `on_restart` after each restart so the caller
    can publish the new PIDs.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        backoff: Backoff | None = None,
        on_restart: Callable[[], None] = lambda: None,
        err: TextIO | None = None,
    ) -> None:
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.on_restart = on_restart
        self.err = err or sys.stderr
        self.children: dict[str, Child] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        proc = _spawn(argv, env, log_path)
        self.children[name] = Child(name, argv, env, log_path, proc, self.clock())

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        return self.children[name].proc

    def pids(self) -> dict[str, int]:
        return {name: c.proc.pid for name, c in self.children.items()}

    def poll(self) -> None:
        """Notice children that exited and restart those whose delay has passed."""
        now_s = self.clock()
        for child in self.children.values():
            if child.restart_at_s is None and exited(child.proc):
                self._crashed(child, now_s)
            elif child.restart_at_s is not None and now_s >= child.restart_at_s:
                self._restart(child, now_s)

    def _crashed(self, child: Child, now_s: float) -> None:
        code = reap_group(child.proc)  # and its leftover pool children, if any
        up_s = now_s - child.started_s
        child.crashes = 1 if up_s >= self.backoff.reset_after_s else child.crashes + 1
        delay_s = self.backoff.delay_s(child.crashes)
        child.restart_at_s = now_s + delay_s
        self._say(
            f"{child.name} exited with {describe_exit(code)} after {up_s:.1f} s; "
            f"restarting in {delay_s:g} s (log: {child.log_path})"
        )

    def _restart(self, child: Child, now_s: float) -> None:
        child.proc = _spawn(child.argv, child.env, child.log_path)
        child.started_s, child.restart_at_s = now_s, None
        self._say(f"{child.name} restarted (pid {child.proc.pid})")
        self.on_restart()

    def stop(self, timeout_s: float) -> None:
        """Stop every child's process group: SIGTERM, then SIGKILL after `timeout_s`."""
        stop_groups([c.proc for c in self.children.values()], timeout_s)
        self.children.clear()

    def _say(self, line: str) -> None:
        print(f"vmorch: {line}", file=self.err, flush=True)
