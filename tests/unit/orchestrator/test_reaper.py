"""The lab's subreaper: orphans below it are reaped at once, end with a stopped server, and
outlive a killed one (as guests outlive a crashed libvirtd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.lab import reaper

# a "daemon" that daemonizes a long sleep with a double fork (as libvirtd does with QEMU),
# writes the sleep's PID to a file, then waits to be signalled
DAEMON = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "300"])
    os.write(w, str(pid).encode())
    os._exit(0)
os.wait()
open(sys.argv[1] + ".tmp", "w").write(os.read(r, 32).decode())
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen(
        [sys.executable, reaper.__file__, sys.executable, "-c", DAEMON, str(tmp_path / "pid")],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").exists():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.02)
    return p, int((tmp_path / "pid").read_text())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(cond: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_an_orphan_is_the_reapers_child_and_is_reaped_at_once(tmp_path: Path) -> None:
    p, orphan = start(tmp_path)
    try:
        assert orphan in reaper.children(p.pid)
        t0 = time.monotonic()
        assert reaper.kill_orphans(p.pid) != []
        wait_for(lambda: not Path(f"/proc/{orphan}").exists(), 5)  # no zombie left either
        assert time.monotonic() - t0 < 1.0
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


def test_a_stopped_server_takes_its_orphans_along(tmp_path: Path) -> None:
    p, orphan = start(tmp_path)
    assert alive(orphan)
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    assert not alive(orphan)


def test_orphans_outlive_a_killed_daemon_until_they_are_fenced(tmp_path: Path) -> None:
    p, orphan = start(tmp_path)
    try:
        [daemon] = [c for c in reaper.children(p.pid) if c != orphan]
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: daemon not in reaper.children(p.pid))
        # the daemon is gone, its orphan runs on, and the reaper waits for it
        assert alive(orphan) and p.poll() is None
        # until the orphan is fenced: then the reaper ends, with the daemon's status
        reaper.kill_orphans(p.pid)
        assert p.wait(10) == 128 + signal.SIGKILL
        assert not alive(orphan)
    finally:
        if p.poll() is None:
            p.kill()
