"""Process helpers for the benchmark: subprocesses in their own session, stopped by group.

Everything the benchmark starts is registered on an ExitStack, so it is stopped at the end
even on an error or Ctrl-C. Only the process groups we created are ever signalled.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.02) -> Any:
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
        self.p = subprocess.Popen([sys.executable, *argv], env=env, stdin=subprocess.DEVNULL,
                                  stdout=self._out, stderr=subprocess.STDOUT,
                                  start_new_session=True)

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
        try:
            os.killpg(self.p.pid, sig)  # our own session: pgid == our child's pid
        except ProcessLookupError:
            pass

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
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime(11) stime(12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def pid_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
