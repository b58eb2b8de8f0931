"""vmorch's guest agent client (`workers/hypervisor/qga.py`) against Debian's real
`qemu-ga`, run on this host on a unix socket in place of a guest, with every command that
could touch the host blocked (all but a few read-only ones)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.lab.guestimage import unpacked
from workers.hypervisor.qga import Qga, QgaError, UnixTransport

pytestmark = pytest.mark.integration
SAFE = {
    "guest-sync-delimited", "guest-sync", "guest-ping", "guest-info",
    "guest-network-get-interfaces",
}  # fmt: skip


@pytest.fixture
def qemu_ga(tmp_path: Path) -> Iterator[tuple[Path, set[str]]]:
    binary = unpacked("qemu-guest-agent") / "usr/sbin/qemu-ga"
    every = set(
        subprocess.run([binary, "-b", "help"], capture_output=True, text=True).stdout.split()
    )
    assert {"guest-shutdown", "guest-exec", "guest-file-open"} <= every
    blocked = every - SAFE
    sock = tmp_path / "qga.sock"
    proc = subprocess.Popen(
        [binary, "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path),
         "-f", str(tmp_path / "qga.pid"), "-b", ",".join(sorted(blocked))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "qemu-ga did not listen"
        time.sleep(0.02)
    yield sock, blocked
    proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def test_the_client_reads_a_real_agent_and_blocked_commands_are_refused(
    qemu_ga: tuple[Path, set[str]],
) -> None:
    sock, blocked = qemu_ga
    qga = Qga(UnixTransport(str(sock)))
    assert qga.ping() > 0
    info = qga.info()
    assert info.version.startswith("7.") and set(info.enabled) == SAFE
    ifaces = {i.name: i for i in qga.interfaces()}
    assert "127.0.0.1/8" in ifaces["lo"].addresses
    assert all(i.mac is None or len(i.mac) == 17 for i in ifaces.values())
    for cmd in ("guest-shutdown", "guest-exec", "guest-file-open", "guest-set-time"):
        assert cmd in blocked
        with pytest.raises(QgaError, match="disabled"):
            qga.call(cmd)
    # replies a guest could send are checked, not trusted
    assert Qga(lambda _c: '{"return": [{"name": "x", "ip-addresses": [{"ip-address": '
               '"nonsense"}], "hardware-address": "<script>"}]}').interfaces() == [
        __import__("workers.hypervisor.qga", fromlist=["Interface"]).Interface("x", None, [])
    ]  # fmt: skip
    with pytest.raises(QgaError, match="not JSON"):
        Qga(lambda _c: "\x00garbage").ping()
