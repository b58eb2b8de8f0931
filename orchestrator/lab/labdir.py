"""The lab directory of one checkout (`.vmorch` by default): which `vmorch up` holds it, what
it keeps between runs, and the state file that tells the CLI and `vmorch down` where things are.

    up.lock       flock-ed by the running `vmorch up` (from its first step to its last), with
                  its PID; the kernel drops the lock when that process dies, even by SIGKILL
    vmorch.json   API address, admin token, Redis URL with its password, PIDs (while it runs)
    logs/         one log per process, appended across runs
    redis/        Redis's AOF: jobs, tokens, VMs, hooks; removed at the next start unless kept

Everything is its owner's only (see files.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from orchestrator.lab.files import FILE_MODE, private_dir, write_private
from orchestrator.secrets import Sealer

STATE_FILE = "vmorch.json"
LOCK_FILE = "up.lock"


class LabDir:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.state_path = self.path / STATE_FILE
        self.logs = self.path / "logs"
        self.redis = self.path / "redis"
        self._lock_fd: int | None = None

    def create(self) -> None:
        private_dir(self.path)
        private_dir(self.logs)

    def lock(self) -> bool:
        """Hold the directory for this process; False if another `vmorch up` holds it.

        A lock rather than the state file's PID alone: the state file is written only once
        the lab is up, and a second `vmorch up` in between must not remove the first one's
        Redis data."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def holder(self) -> str:
        """The PID of the `vmorch up` holding the lock, as written in the lock file."""
        with contextlib.suppress(OSError):
            return (self.path / LOCK_FILE).read_text().strip() or "?"
        return "?"

    def clear_previous_state(self) -> bool:
        """Remove the last run's Redis data; True if there was some. Only for the holder of
        the lock: no other `vmorch up` is using it then."""
        if self._lock_fd is None:
            raise RuntimeError("the lab directory is not locked by this process")
        if not self.redis.exists():
            return False
        shutil.rmtree(self.redis)
        return True

    def guest_secret_key(self) -> str:
        """The key that seals secret values for guests in this stack (made once, kept
        private beside the state: sealed values in a kept Redis stay readable)."""
        path = self.path / "guest-secret.key"
        if not path.exists():
            write_private(path, Sealer.new_key())
        return path.read_text().strip()

    def read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None

    def write_state(self, state: dict[str, Any]) -> None:
        write_private(self.state_path, json.dumps(state, indent=2))

    def remove_state(self) -> None:
        self.state_path.unlink(missing_ok=True)
