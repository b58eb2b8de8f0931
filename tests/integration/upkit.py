"""`vmorch up` as a user runs it, for tests: a subprocess in a temporary lab directory on
a free port, its details from `vmorch.json`, stopped with `vmorch down` (or, after a
failed test, with whatever it left behind)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.lab.process import free_port
from tests.integration.conftest import Api, wait_until


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a PID with another start time is another process."""
    fields = _stat_fields(pid)
    return None if fields is None else (pid, fields[19])


def alive(ident: tuple[int, str]) -> bool:
    fields = _stat_fields(ident[0])
    return fields is not None and fields[19] == ident[1] and fields[0] != "Z"


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a pid 1 that never reaps)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(root: int) -> set[tuple[int, str]]:
    """Every live process below `root` (children, their children...), by identity."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            parent_of[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return {ident for pid in found if (ident := _identity(pid)) and alive(ident)}


def group_members(pgid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


class Up:
    """One `vmorch up` subprocess with its lab directory; `down()` stops it as a user would."""

    def __init__(
        self,
        lab_dir: Path,
        *flags: str,
        umask: int = 0o022,
        env: dict[str, str] | None = None,
    ) -> None:
        self.lab_dir = lab_dir
        self.state_path = lab_dir / "vmorch.json"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VMORCH_")},
            "VMORCH_LAB_DIR": str(lab_dir),
            **(env or {}),
        }
        out = lab_dir.parent / f"up-{time.time_ns()}"
        self.stdout_path, self.stderr_path = out.with_suffix(".out"), out.with_suffix(".err")
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "up", "--pools", "1",
                 "--servers-per-pool", "1", "--port", str(free_port("127.0.0.1")), *flags],
                env=self.env, stdout=stdout, stderr=stderr, start_new_session=True, umask=umask,
            )  # fmt: skip
        wait_until(self._is_up, 90, "vmorch up")
        self.api = Api(self.state()["api_url"], self.state()["admin_token"])

    def _is_up(self) -> bool:
        assert self.p.poll() is None, self.output()
        return "vmorch is up" in self.stdout() and self.state_path.exists()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_path.read_text()))

    def down(self) -> subprocess.CompletedProcess[str]:
        down = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "down"],
            env=self.env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        self.p.wait(30)
        return down

    def close(self) -> None:
        """Teardown after a failed test: stop it, and whatever it left behind."""
        if self.p.poll() is None:
            left = descendants(self.p.pid)
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
            for pid, _ in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
