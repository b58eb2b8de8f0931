"""One private, unprivileged ``libvirtd`` per simulated hypervisor server (the "lab").

Why: the lab simulates many hypervisor hosts on one machine. Each gets its own
libvirtd in session mode with a private directory, socket and host UUID, so
connections to different servers never share state. The daemon runs in the
foreground under Popen (we own its PID; stop is by PID), as ``nobody`` when we
are root (via ``setpriv``), with a clean environment and in its own session so
a Ctrl-C on the parent's terminal does not reach it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from orchestrator.lab import reaper as reaper_module
from orchestrator.lab.fence import record_pid
from orchestrator.lab.process import spawn, terminate, wait_ready
from orchestrator.lab.reaper import kill_orphans

LIBVIRTD = "/usr/sbin/libvirtd"
NOBODY_ID = 65534
_CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "vmorch:lab:libvirtd-host")
_SUN_PATH_MAX_BYTES = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


@dataclass(frozen=True)
class DaemonInfo:
    """Where and how to reach one running lab daemon."""

    name: str
    directory: Path
    socket_path: Path
    uri: str  # libvirt test driver; its state is shared by all connections
    qemu_uri: str  # qemu session driver of the same daemon
    host_uuid: str
    pid: int  # of the process the lab started: libvirtd, or its reaper (kind qemu)


def _check_traversable_by_nobody(directory: Path) -> None:
    """Raise if an ancestor of ``directory`` cannot be searched by uid/gid 65534."""
    for parent in directory.parents:
        st = parent.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == NOBODY_ID and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == NOBODY_ID and st.st_mode & stat.S_IXGRP:
            continue
        raise PermissionError(
            f"{parent} (mode {stat.filemode(st.st_mode)}) is not searchable by "
            f"uid {NOBODY_ID}; libvirtd could not reach {directory}"
        )


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), uid, gid)


class LibvirtDaemon:
    """Start, stop and kill one lab libvirtd living in ``directory``.

    `reaper`: run it under `orchestrator.lab.reaper` (the QEMU servers: their QEMU
    processes are reaped at once, and end with the server when the lab stops it)."""

    def __init__(self, name: str, directory: Path, *, reaper: bool = False) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid server name {name!r}: want 1-63 [A-Za-z0-9_-]")
        self.name = name
        self.directory = Path(directory).absolute()
        self.socket_path = self.directory / "run" / "libvirt" / "libvirt-sock"
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX_BYTES:
            raise ValueError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.host_uuid = str(uuid.uuid5(_UUID_NAMESPACE, name))
        sock = quote(str(self.socket_path), safe="/")
        self.uri = f"test+unix:///default?socket={sock}"
        self.qemu_uri = f"qemu+unix:///session?socket={sock}"
        self.log_path = self.directory / "libvirtd.log"
        self.pid_file = self.directory / "run" / "libvirt" / "libvirtd.pid"
        self.reaper = reaper
        self._proc: subprocess.Popen[bytes] | None = None
        self._orphaned: list[subprocess.Popen[bytes]] = []  # reapers of killed daemons
        self._info: DaemonInfo | None = None

    @property
    def config_link(self) -> Path:
        """A short path to the daemon's config directory (the same for its restarts)."""
        digest = hashlib.sha256(str(self.directory.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"vc{digest}"

    def remove_links(self) -> None:
        if self.config_link.is_symlink():
            self.config_link.unlink()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def info(self) -> DaemonInfo:
        """Details of the running daemon; RuntimeError if it is not running."""
        if self._info is None or not self.running:
            raise RuntimeError(f"libvirtd {self.name!r} is not running")
        return self._info

    def _prepare(self) -> dict[str, str]:
        """Create the directory tree and config files; return the clean environment."""
        d = self.directory
        for sub in ("home", "config/libvirt", "cache", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "run").chmod(0o700)
        (d / "config/libvirt/libvirtd.conf").write_text(f'host_uuid = "{self.host_uuid}"\n')
        (d / "config/libvirt/qemu.conf").write_text('stdio_handler = "file"\n')
        self._remove_stale_sockets()
        self.log_path.touch()
        # QEMU's channel sockets go under the config directory (libvirt's qemu/lib/channel/
        # target/domain-<id>-<name>/<channel>): through a short link to it, their paths
        # stay within a unix socket path's 107 bytes
        link = self.config_link
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(d / "config")
        return {
            "PATH": _CLEAN_PATH,
            "HOME": str(d / "home"),
            "XDG_RUNTIME_DIR": str(d / "run"),
            "XDG_CONFIG_HOME": str(link),
            "XDG_CACHE_HOME": str(d / "cache"),
        }

    def _remove_stale_sockets(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.socket_path.with_name("libvirt-admin-sock").unlink(missing_ok=True)

    def start(self, timeout_s: float = 15.0) -> DaemonInfo:
        """Start the daemon and wait until its socket accepts connections."""
        if self.running:
            raise RuntimeError(f"libvirtd {self.name!r} is already running")
        env = self._prepare()
        argv = [LIBVIRTD]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv", path=_CLEAN_PATH)
            if setpriv is None:
                raise RuntimeError("setpriv not found; needed to drop root privileges")
            _check_traversable_by_nobody(self.directory)
            _chown_tree(self.directory, NOBODY_ID, NOBODY_ID)
            argv = [setpriv, f"--reuid={NOBODY_ID}", f"--regid={NOBODY_ID}",
                    "--clear-groups", LIBVIRTD]  # fmt: skip
        # setpriv execs libvirtd, so the child's PID is the daemon's PID (or the reaper's,
        # whose child libvirtd is: its PID is in the pid file)
        if self.reaper:
            argv = [sys.executable, reaper_module.__file__, *argv]
        self._proc = spawn(argv, self.log_path, env=env, cwd=self.directory)
        record_pid(self.directory, "reaper" if self.reaper else "libvirtd", self._proc.pid)
        try:
            self._wait_for_socket(timeout_s)
        except BaseException:
            self.stop()
            raise
        self._info = DaemonInfo(self.name, self.directory, self.socket_path, self.uri,
                                self.qemu_uri, self.host_uuid, self._proc.pid)  # fmt: skip
        return self._info

    def _wait_for_socket(self, timeout_s: float) -> None:
        if self._proc is None:
            raise RuntimeError("not started")

        def accepts() -> bool:
            if not self.socket_path.is_socket():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.socket_path))
                    return True
                except OSError:
                    return False

        wait_ready(self._proc, f"libvirtd {self.name!r}", accepts, timeout_s, self.log_path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the daemon by PID, wait ``timeout_s``, then SIGKILL. Idempotent. The
        guests of a killed daemon go too (their reaper is told to end them)."""
        proc, self._proc = self._proc, None
        orphaned, self._orphaned = self._orphaned, []
        for p in orphaned:
            kill_orphans(p.pid)
            terminate(p, timeout_s)
        terminate(proc, timeout_s)
        self._remove_stale_sockets()
        self.remove_links()  # (a start makes it again)

    def daemon_pid(self) -> int:
        """The PID of libvirtd itself (under a reaper, the reaper's child)."""
        if not self.reaper:
            return self.info.pid
        return int(self.pid_file.read_text().strip())

    def kill(self) -> None:
        """SIGKILL the daemon (chaos testing); leaves its stale socket behind. Under a
        reaper only libvirtd is killed: its guests keep running, as on a real host."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if not self.reaper:
            proc.kill()
            proc.wait()
            return
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        self._orphaned.append(proc)  # it ends when its guests do (or when fenced)

    def kill_guests(self) -> list[int]:
        """SIGKILL every guest process of this server, also of a killed libvirtd (the lab's
        fence action: the host powered off). Returns their PIDs."""
        procs = [p for p in (self._proc, *self._orphaned) if p is not None and p.poll() is None]
        killed = []
        for p in procs:
            killed += kill_orphans(p.pid)
        return killed
