"""The lab's fence action: `python -m orchestrator.lab.fence LAB_DIR SERVER`.

A real fence agent powers a host off (IPMI, Redfish). The lab's servers share one
machine, so this powers one server's guests off instead: every QEMU process under the
server's reapers (also under the reaper of a libvirtd that was killed, whose guests ran
on), and the server's libvirtd itself if it still runs (a test-driver server's guests live
inside it). It prints what it did and exits 0 once nothing of the server runs.
`vmorch up` sets `VMORCH_FENCE_COMMAND` to this for its own processes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from orchestrator.lab.reaper import children

PIDS_FILE = "lab-pids"  # in the server's directory: "<role> <pid>" per line, appended


def record_pid(server_dir: Path, role: str, pid: int) -> None:
    """Note a process the lab started for a server (the fence finds it there)."""
    with open(server_dir / PIDS_FILE, "a") as f:
        f.write(f"{role} {pid}\n")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def fence(server_dir: Path) -> list[str]:
    """Kill what runs of the server; returns what was killed."""
    done: list[str] = []
    try:
        lines = (server_dir / PIDS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return done
    for line in lines:
        role, _, raw = line.partition(" ")
        pid = int(raw)
        cmd = _cmdline(pid)
        # a PID the lab recorded, still that process (not a reused PID)?
        if role == "reaper" and b"reaper.py" in cmd:
            for guest in children(pid):
                if b"libvirtd" in _cmdline(guest):
                    continue  # the daemon is killed below, from the lines that name it
                os.kill(guest, signal.SIGKILL)
                done.append(f"guest {guest}")
            for daemon in children(pid):
                if b"libvirtd" in _cmdline(daemon):
                    os.kill(daemon, signal.SIGKILL)
                    done.append(f"libvirtd {daemon}")
        elif role == "libvirtd" and b"libvirtd" in cmd:
            os.kill(pid, signal.SIGKILL)
            done.append(f"libvirtd {pid}")
    return done


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m orchestrator.lab.fence LAB_DIR SERVER", file=sys.stderr)
        return 2
    server_dir = Path(argv[0]) / argv[1]
    if not server_dir.is_dir():
        print(f"no lab server {argv[1]} in {argv[0]}", file=sys.stderr)
        return 1
    killed = fence(server_dir)
    deadline = time.monotonic() + 10
    left = killed
    while left and time.monotonic() < deadline:
        left = [k for k in killed if Path(f"/proc/{k.split()[1]}").exists()]
        time.sleep(0.05)
    print(f"fenced {argv[1]}: killed {', '.join(killed) or 'nothing (nothing ran)'}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
