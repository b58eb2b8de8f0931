"""Integration tests for the lab's private processes: redis-server and libvirtd.

These start real processes (no mocks) and always stop them in teardown.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.lab.files import private_dir
from orchestrator.lab.labdir import LabDir
from orchestrator.lab.libvirtd import LIBVIRTD, LibvirtDaemon
from orchestrator.lab.redis_server import RedisServer
from orchestrator.lab.supervisor import Backoff, Supervisor

libvirt = pytest.importorskip("libvirt")

DOMAIN_XML = (
    "<domain type='test'><name>x</name><memory unit='MiB'>64</memory>"
    "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
)

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed"
)
needs_libvirtd = pytest.mark.skipif(
    not os.access(LIBVIRTD, os.X_OK), reason="libvirtd not installed"
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 10.0) -> T:
    """Poll `predicate` until it returns something other than None (or False)."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline_s:
            raise AssertionError(f"timed out after {timeout_s} s")
        time.sleep(0.02)


def wait_pid_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline_s:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------- redis


def resp(port: int, *command: str) -> bytes:
    """Send one command in plain RESP, as a client with no credentials would, and return
    the first line of the reply (redis-py would first send HELLO and retry on errors)."""
    payload = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload.encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


@needs_redis
@pytest.mark.timeout(60)
def test_redis_server_set_get_and_stop(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    url = server.start()
    try:
        assert server.port != 6379
        assert url == f"redis://127.0.0.1:{server.port}/0" == server.url
        pid = server.pid
        assert pid_alive(pid)
        client = redis.Redis.from_url(url)
        try:
            assert client.set("k", "v")
            assert client.get("k") == b"v"
            assert int(client.info("server")["process_id"]) == pid
        finally:
            client.close()
    finally:
        server.stop()
    assert wait_pid_gone(pid)
    server.stop()  # idempotent


@needs_redis
@pytest.mark.timeout(60)
def test_redis_server_refuses_busy_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match="in use"):
            RedisServer(tmp_path / "redis", port=port).start()


@needs_redis
@pytest.mark.timeout(60)
def test_redis_server_context_manager(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        pid = server.pid
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()
    assert wait_pid_gone(pid)


@needs_redis
@pytest.mark.timeout(60)
def test_redis_server_with_a_password_refuses_clients_without_it(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", require_password=True) as server:
        password = server.password
        assert password is not None and len(password) >= 32
        assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        # given: a key written by a client that has the URL
        owner = redis.Redis.from_url(server.url)
        no_retry = Retry(NoBackoff(), 0)
        wrong = redis.Redis(host="127.0.0.1", port=server.port, password="guess", retry=no_retry)
        try:
            assert owner.set("vmorch:hooksecret:x", "s3cret")
            # then: a client without the password can neither read nor write
            assert resp(server.port, "GET", "vmorch:hooksecret:x").startswith(b"-NOAUTH")
            assert resp(server.port, "SET", "vmorch:token:x", "{}").startswith(b"-NOAUTH")
            with pytest.raises(redis.exceptions.AuthenticationError):
                wrong.get("vmorch:hooksecret:x")
            assert owner.get("vmorch:hooksecret:x") == b"s3cret"
            assert owner.exists("vmorch:token:x") == 0
            # and the password is neither on the command line nor left in a file
            cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
            assert password.encode() not in cmdline
            for path in (tmp_path / "redis").rglob("*"):
                if path.is_file():
                    assert password.encode() not in path.read_bytes(), path
        finally:
            owner.close()
            wrong.close()


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything below it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@needs_redis
@pytest.mark.timeout(60)
def test_redis_data_and_log_are_owner_only_whatever_our_umask(tmp_path: Path) -> None:
    # given: a data directory an older vmorch made 0755, and a permissive umask
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with umask(0), RedisServer(data, appendonly=True) as server:
        # when: the server writes its AOF
        client = redis.Redis.from_url(server.url)
        try:
            client.set("vmorch:hooksecret:x", "s3cret")
        finally:
            client.close()
        modes = modes_under(data)
    # then: the directories are 0700 and every file 0600, the AOF among them
    assert any(name.endswith(".aof") for name in modes), modes
    assert "appendonlydir" in modes and "redis.log" in modes, modes
    for name, mode in modes.items():
        want = 0o700 if (data / name).is_dir() else 0o600
        assert mode == want, f"{name}: {oct(mode)} (want {oct(want)})"


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_private_dir_refuses_a_shared_directory(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(PermissionError, match="shared directory"):
        private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == mode  # left as it was


# ------------------------------------------------------------------ libvirtd


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """A lab directory nobody (uid 65534) can reach.

    pytest's tmp_path lives under /tmp/pytest-of-root (mode 700), which the
    unprivileged daemon could not traverse, so use a short world-searchable
    directory (also keeps socket paths under the AF_UNIX length limit).
    """
    path = Path(tempfile.mkdtemp(prefix="vmorch-lab-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons() -> Iterator[list[LibvirtDaemon]]:
    """Collects daemons started by a test and always stops them afterwards."""
    started: list[LibvirtDaemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


def host_uuid_of(qemu_uri: str) -> str:
    conn = libvirt.open(qemu_uri)
    try:
        caps = ET.fromstring(conn.getCapabilities())
    finally:
        conn.close()
    text = caps.findtext("host/uuid")
    assert text is not None
    return text


@pytest.mark.parametrize("bad", ["", "a" * 64, "a b", "a/b", "../x", "ü", "x\n", "a.b"])
def test_libvirt_daemon_rejects_bad_names(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LibvirtDaemon(bad, tmp_path / "x")


@needs_libvirtd
@pytest.mark.timeout(120)
def test_two_libvirt_daemons_are_isolated(lab_dir: Path, daemons: list[LibvirtDaemon]) -> None:
    a = LibvirtDaemon("hv-a", lab_dir / "hv-a")
    b = LibvirtDaemon("hv_b", lab_dir / "hv-b")
    daemons.extend([a, b])
    info_a, info_b = a.start(), b.start()
    assert a.running and b.running
    assert info_a.socket_path.is_socket() and info_b.socket_path.is_socket()

    # Distinct, configured host UUIDs (the test driver does not report one;
    # the qemu session driver of the same daemon does).
    assert info_a.host_uuid != info_b.host_uuid
    assert host_uuid_of(info_a.qemu_uri) == info_a.host_uuid
    assert host_uuid_of(info_b.qemu_uri) == info_b.host_uuid

    a1, a2 = libvirt.open(info_a.uri), libvirt.open(info_a.uri)
    b1 = libvirt.open(info_b.uri)
    try:
        # The test driver preloads a domain named "test" in every daemon.
        assert a1.lookupByName("test") is not None
        a1.defineXML(DOMAIN_XML)
        assert "x" in a2.listDefinedDomains()
        assert a2.lookupByName("x").name() == "x"
        assert "x" not in b1.listDefinedDomains()
        with pytest.raises(libvirt.libvirtError):
            b1.lookupByName("x")
    finally:
        for conn in (a1, a2, b1):
            conn.close()

    a.stop()
    b.stop()
    assert not a.running and not b.running
    assert wait_pid_gone(info_a.pid) and wait_pid_gone(info_b.pid)
    assert not info_a.socket_path.exists()
    with pytest.raises(RuntimeError):
        _ = a.info
    a.stop()  # idempotent

    # Restart in the same directory: same identity, new process, fresh state.
    info_a2 = a.start()
    assert info_a2.pid != info_a.pid
    assert info_a2.host_uuid == info_a.host_uuid
    assert host_uuid_of(info_a2.qemu_uri) == info_a.host_uuid
    conn = libvirt.open(info_a2.uri)
    try:
        assert "test" in [d.name() for d in conn.listAllDomains()]
        assert "x" not in conn.listDefinedDomains()  # test driver state is in memory
    finally:
        conn.close()
    a.stop()
    assert wait_pid_gone(info_a2.pid)


@needs_libvirtd
@pytest.mark.timeout(120)
def test_libvirt_daemon_kill_then_restart(lab_dir: Path, daemons: list[LibvirtDaemon]) -> None:
    d = LibvirtDaemon("hv-chaos", lab_dir / "hv-chaos")
    daemons.append(d)
    pid = d.start().pid
    d.kill()
    assert not d.running
    assert wait_pid_gone(pid)
    assert d.socket_path.exists()  # SIGKILL leaves the socket behind
    info = d.start()  # stale socket must not confuse the readiness wait
    conn = libvirt.open(info.uri)
    try:
        assert conn.lookupByName("test").name() == "test"
    finally:
        conn.close()
    d.stop()
    assert wait_pid_gone(info.pid)


# ---------------------------------------------------------------- supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def crashed(sup: Supervisor, name: str) -> bool:
    """Let the supervisor look; true once it has seen `name` exit (a restart is pending)."""
    sup.poll()
    return sup.children[name].restart_at_s is not None


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    assert [backoff.delay_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


@pytest.mark.timeout(60)
def test_supervisor_restarts_a_crashing_child_later_each_time(tmp_path: Path) -> None:
    # given: a child that exits with 3 as soon as it starts
    clock, err, restarts = FakeClock(), io.StringIO(), []
    sup = Supervisor(clock, Backoff(0.5, 30.0, reset_after_s=60.0), lambda: restarts.append(1), err)
    sup.start("crasher", python("raise SystemExit(3)"), dict(os.environ), tmp_path / "c.log")
    try:
        for crashes, delay_s in ((1, 0.5), (2, 1.0), (3, 2.0)):
            first_pid = sup.pids()["crasher"]
            # when: it exits, the supervisor notes it and waits before starting it again
            wait_for(lambda: crashed(sup, "crasher"))
            assert (
                f"crasher exited with 3 after 0.0 s; restarting in {delay_s:g} s" in err.getvalue()
            )
            restart_at_s = sup.children["crasher"].restart_at_s
            assert restart_at_s == clock.now_s + delay_s
            clock.now_s = restart_at_s - 0.01
            sup.poll()
            assert sup.pids()["crasher"] == first_pid and len(restarts) == crashes - 1
            # then: once the delay has passed, a new process
            clock.now_s = restart_at_s
            sup.poll()
            assert sup.pids()["crasher"] != first_pid and len(restarts) == crashes
        # a child that stayed up for reset_after_s starts from the first delay again
        clock.now_s += 60.0
        wait_for(lambda: crashed(sup, "crasher"))
        assert (
            err.getvalue().splitlines()[-1].startswith("vmorch: crasher exited with 3 after 60.0 s")
        )
        assert "restarting in 0.5 s" in err.getvalue().splitlines()[-1]
    finally:
        sup.stop(5)


GRANDCHILD = """
import signal, subprocess, sys, time
code = "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
       "print('grandchild', os.getpid(), flush=True); time.sleep(120)"
subprocess.Popen([sys.executable, "-c", code])
time.sleep(120)
"""


def grandchild_pid(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if line.startswith("grandchild "):
            return int(line.split()[1])
    return None


@pytest.mark.timeout(60)
def test_supervisor_kills_what_a_crashed_child_leaves_in_its_group(tmp_path: Path) -> None:
    # given: a child with a child of its own (as a Celery worker has its pool)
    sup = Supervisor(FakeClock(), err=io.StringIO())
    log = tmp_path / "parent.log"
    sup.start("parent", python(GRANDCHILD), dict(os.environ), log)
    try:
        orphan = wait_for(lambda: grandchild_pid(log))
        # when: only the parent is SIGKILLed
        os.kill(sup.pids()["parent"], signal.SIGKILL)
        wait_for(lambda: crashed(sup, "parent"))
        # then: its leftover child is killed too, not left running beside the next one
        assert wait_pid_gone(orphan)
    finally:
        sup.stop(5)


@pytest.mark.timeout(60)
def test_supervisor_stop_kills_grandchildren_that_ignore_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(FakeClock(), err=io.StringIO())
    log = tmp_path / "parent.log"
    sup.start("parent", python(GRANDCHILD), dict(os.environ), log)
    parent = sup.pids()["parent"]
    stubborn = wait_for(lambda: grandchild_pid(log))
    sup.stop(timeout_s=0.5)  # the parent dies of SIGTERM; the grandchild ignores it
    assert wait_pid_gone(parent) and wait_pid_gone(stubborn)
    assert sup.pids() == {}


# ------------------------------------------------------------------ lab dir

HOLD_LOCK = """
import sys, time
from pathlib import Path
from orchestrator.lab.labdir import LabDir
lab = LabDir(Path(sys.argv[1]))
lab.create()
assert lab.lock()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_lab_dir_is_held_by_one_process_until_it_dies(tmp_path: Path) -> None:
    # given: another process holds the lab directory (a `vmorch up` still starting: no
    # vmorch.json yet), with Redis data in it
    (tmp_path / "lab" / "redis").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "lab")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        lab = LabDir(tmp_path / "lab")
        # then: we cannot take it, we see who has it, and we may not remove its data
        assert not lab.lock()
        assert lab.holder() == str(holder.pid)
        with pytest.raises(RuntimeError, match="not locked"):
            lab.clear_previous_state()
        assert (tmp_path / "lab" / "redis").is_dir()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # when: the holder dies without cleaning up (SIGKILL), the lock goes with it
    assert lab.lock()
    try:
        assert lab.clear_previous_state() is True
        assert not (tmp_path / "lab" / "redis").exists()
        assert lab.clear_previous_state() is False
        assert stat.S_IMODE((tmp_path / "lab" / "up.lock").stat().st_mode) == 0o600
    finally:
        lab.unlock()
