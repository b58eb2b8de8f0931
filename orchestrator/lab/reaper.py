"""Run a command under a child subreaper: `python -m orchestrator.lab.reaper CMD ARGS...`.

The lab's QEMU servers need this. libvirtd daemonizes each QEMU process (a double fork), so
the QEMU process's parent becomes the nearest subreaper, or PID 1. On these machines PID 1
reaps late, and a domain's destroy then takes 1.6-1.8 s instead of 0.2 s
(`../shared/notes/hypervisor-lab.md`). This process marks itself a subreaper
(`PR_SET_CHILD_SUBREAPER`), runs the command as its child and reaps every orphan below it
at once.

It also owns the server's processes:
- SIGTERM, SIGINT and SIGHUP are passed to the command.
- When the command ends after such a signal (the lab stopping the server), the processes
  left below it, the QEMU processes of its domains, are terminated.
- When the command dies on its own (a SIGKILLed libvirtd, in a chaos test), those
  processes keep running, as guests do on a host whose libvirtd crashed. This process
  stays until the last of them has ended. `kill_orphans` is what a fence action of the lab
  uses to power them off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 3.0  # SIGTERM, then SIGKILL, for the processes left when the lab stops a server


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(PID, the fields of /proc/PID/stat after "pid (comm) ": state ppid pgrp ...) of
    every process now; one gone meanwhile is left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc), zombies included: the reaper
    reaps those before it ends, so none is left to PID 1."""
    return [p for p, fields in proc_stats() if int(fields[1]) == pid]


def kill_orphans(reaper_pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process below the reaper `reaper_pid`; returns their PIDs."""
    pids = children(reaper_pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def _reap_all() -> list[tuple[int, int]]:
    """Reap every child that has ended, without blocking: [(pid, status)]."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m orchestrator.lab.reaper CMD [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    asked: list[int] = []
    code: int | None = None  # the command's exit code, once it has ended
    # block the signals until the handlers are set, so none is lost to a default action
    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled | {signal.SIGCHLD})
    main_pid = os.fork()
    if main_pid == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled | {signal.SIGCHLD})
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)

    def forward(sig: int, _frame: object) -> None:
        asked.append(sig)
        if code is None:  # not after it was reaped: its PID may belong to another now
            with contextlib.suppress(ProcessLookupError):
                os.kill(main_pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    deadline: float | None = None  # when what is left below gets SIGKILL
    while True:
        # woken at once by a child's end (SIGCHLD is blocked and waited for), so orphans
        # are reaped as soon as they exit: what makes a domain's destroy quick
        signal.sigtimedwait({signal.SIGCHLD}, 0.2)
        for pid, status in _reap_all():
            if pid == main_pid:
                code = os.waitstatus_to_exitcode(status)
        if code is None:
            continue
        if asked and deadline is None:  # the lab stops this server: its guests go with it
            kill_orphans(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
        if not children(os.getpid()):
            return code if code >= 0 else 128 - code
        if deadline is not None and time.monotonic() > deadline:
            kill_orphans(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
