"""Child processes the lab owns (redis-server, libvirtd, vmorch's own): started in their own
session with a log, waited for until ready, and stopped by their PID (or by their process
group, for those with children of their own such as a Celery worker's pool); and the free
TCP ports they are given."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.lab.files import open_private_append

LOG_TAIL_LINES = 30


def free_port(host: str) -> int:
    """A TCP port on `host` that is free now (the kernel's pick; it may be taken again
    before it is used, which the caller's bind then reports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True if nothing is bound to `host:port`. It binds rather than connects, so it never
    talks to a server that might be someone else's."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pid_running(pid: int) -> bool:
    """True if `pid` is a live process. A zombie (exited, not yet reaped by its parent) is
    not: `vmorch down` waits for `vmorch up` to exit, and its parent may reap it late."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False  # gone (and reaped) since kill()
    except OSError:
        return True  # no /proc to read: trust kill()
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    umask: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output appended to `log_path` (owner-only), in its own session:
    a Ctrl-C on the parent's terminal must not kill it before the parent stops it in order.
    `umask` is the child's (077 keeps what it creates owner-only); None leaves ours."""
    fd = open_private_append(log_path)
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=-1 if umask is None else umask,
        )
    finally:
        os.close(fd)


def wait_ready(
    proc: subprocess.Popen[bytes],
    what: str,
    ready: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
) -> None:
    """Poll `ready()` until it is true; raise with the log's tail if the process exits first
    or `timeout_s` passes."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with code {code}:\n{log_tail(log_path)}")
        if ready():
            return
        if time.monotonic() >= deadline_s:
            raise RuntimeError(f"{what} was not ready after {timeout_s} s:\n{log_tail(log_path)}")
        time.sleep(0.05)


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM by PID, wait up to `timeout_s`, then SIGKILL. A no-op for a process gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once `proc` has exited, without reaping it: until it is reaped its PID, and so
    its process group's id, cannot be given to another process, so the group can still be
    signalled safely."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else
        return proc.poll() is not None
    return info is not None


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group `proc` leads (spawn starts each in its own session).
    Only while `proc` is unreaped: a reaped leader's group id may be anyone's later."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def reap_group(proc: subprocess.Popen[bytes]) -> int:
    """Once `proc` has exited: SIGKILL what is left of its group (a Celery worker's pool
    children outlive a SIGKILLed parent), then reap it; returns its exit code."""
    signal_group(proc, signal.SIGKILL)
    return proc.wait()


def stop_groups(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every group at once, give the leaders `timeout_s` to exit (a Celery worker
    finishes its tasks' current step), then SIGKILL what is left and reap them all."""
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline_s = time.monotonic() + timeout_s
    while not all(exited(p) for p in procs) and time.monotonic() < deadline_s:
        time.sleep(0.05)
    for proc in procs:
        reap_group(proc)
