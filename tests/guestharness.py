"""Test harness for guest channels on test-driver servers: no QEMU runs there, so the
harness stands in for it at the channel's socket (the path in the domain's XML) and runs
vmorch's own guest program behind it (`vmorch_guest.py run --listen-unix`), a process
per VM, with a handler directory the test fills."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import libvirt

from workers.hypervisor.adapter import test_channel_dir
from workers.hypervisor.xml import channel_path

PROGRAM = Path(__file__).resolve().parents[1] / "workers" / "guest" / "vmorch_guest.py"

# a handler that records what it was given: "<key>=<value>" lines in <state>/applied.log
RECORDING_HANDLER = '#!/bin/sh\nread -r v\nprintf "%s=%s\\n" "$1" "$v" >> "$0.log"\necho "ok $1"\n'


class HarnessGuest:
    """The guest program of one test-driver domain, listening at its channel socket."""

    def __init__(self, conn: libvirt.virConnect, vm_id: str, workdir: Path):
        """At the channel of the domain `vm_id` (its XML names it), or, when it is not
        defined yet (a create in progress), where the adapter will put it."""
        try:
            path = channel_path(conn.lookupByUUIDString(vm_id).XMLDesc(0))
        except libvirt.libvirtError:
            path = f"{test_channel_dir(conn.getURI())}/{vm_id}.agent.sock"
        assert path, f"domain {vm_id} has no vmorch channel with a path"
        self.path = Path(path)
        # short: a unix socket's path has at most 107 bytes
        self.dir = Path(tempfile.mkdtemp(prefix=f"vg-{vm_id[:8]}-", dir=workdir))
        self.handlers = self.dir / "handlers"
        self.handlers.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._fds: list[int] = []

    def handler(self, name: str, script: str = RECORDING_HANDLER) -> None:
        p = self.handlers / name
        p.write_text(script)
        p.chmod(0o755)

    @property
    def applied(self) -> list[str]:
        """What the recording default handler was given, in order."""
        log = self.handlers / "default.log"
        return log.read_text().splitlines() if log.exists() else []

    def start(self) -> HarnessGuest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(PROGRAM), "run", "--listen-unix", str(self.path),
             "--state-dir", str(self.dir / "state"), "--handlers", str(self.handlers),
             "--actions", str(self.dir / "actions"), "--control", str(self.dir / "control.sock")],
            stdout=subprocess.DEVNULL,
            stderr=self._log(),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        return self

    def _log(self) -> int:
        fd = os.open(self.dir / "guest.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fds.append(fd)
        return fd

    def send_event(self, name: str, *pairs: str) -> None:
        subprocess.run(
            [sys.executable, str(PROGRAM), "send-event", name, *pairs,
             "--control", str(self.dir / "control.sock")],
            check=True, timeout=10,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
