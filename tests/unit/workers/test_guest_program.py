"""The guest program (`workers/guest/vmorch_guest.py`) as a process, in its test mode: it
listens on a unix socket as QEMU does, and this test is the host's agent. Every line it
writes must be a valid message of the protocol (`schemas.guest`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.guest import Ack, GuestError, GuestEvent, Ready, Report, from_guest

PROGRAM = Path(__file__).resolve().parents[3] / "workers" / "guest" / "vmorch_guest.py"


class Host:
    """The host end of the channel: lines out, validated messages in."""

    def __init__(self, path: Path):
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                assert time.monotonic() < deadline, "the guest program does not listen"
                time.sleep(0.02)
        self.sock.settimeout(10)
        self.buf = b""

    def send(self, **msg: Any) -> None:
        self.sock.sendall((json.dumps({"v": 1, **msg}) + "\n").encode())

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> Any:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the guest closed the channel"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return from_guest.validate_json(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    handlers = tmp_path / "handlers"
    actions = tmp_path / "actions"
    handlers.mkdir()
    actions.mkdir()
    chan, control = tmp_path / "chan.sock", tmp_path / "control.sock"
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), "run", "--listen-unix", str(chan),
         "--state-dir", str(tmp_path / "state"), "--handlers", str(handlers),
         "--actions", str(actions), "--control", str(control), "--handler-timeout", "5"],
    )  # fmt: skip
    try:
        yield tmp_path, chan, control
    finally:
        proc.kill()
        proc.wait()


def handler(directory: Path, name: str, script: str) -> None:
    p = directory / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(0o755)


def test_set_runs_the_handler_once_per_id_and_answers(guest: tuple[Path, Path, Path]) -> None:
    tmp, chan, _ = guest
    handler(tmp / "handlers", "hostname", 'read v; echo "$1=$v" >> "$0.ran"; echo "set $v"\n')
    handler(tmp / "handlers", "broken", 'echo "no such interface" >&2; exit 3\n')
    host = Host(chan)
    host.send(id="h1", op="hello")
    ready = host.next()
    assert isinstance(ready, Ready) and ready.version and ready.keys == []
    host.send(id="m1", op="set", key="hostname", value="web1")
    ack = host.next()
    assert isinstance(ack, Ack) and ack.id == "m1" and ack.result == {"output": "set web1"}
    # delivered again (a reconnect): the same answer, the handler not run again
    host.send(id="m1", op="set", key="hostname", value="web1")
    assert host.next() == ack
    assert (tmp / "handlers" / "hostname.ran").read_text() == "hostname=web1\n"
    # a handler's error is the answer
    host.send(id="m2", op="set", key="broken", value="x")
    err = host.next()
    assert isinstance(err, GuestError) and err.id == "m2"
    assert err.error == "handler of broken exited 3: no such interface"
    # a key without a handler is stored; a secret's value is not kept in the store
    host.send(id="m3", op="set", key="motd", value="hello")
    host.send(id="m4", op="set", key="root_password", value="s3cret", secret=True)
    assert [host.next().id, host.next().id] == ["m3", "m4"]
    host.send(id="g1", op="get", keys=["motd", "root_password", "nothing"])
    got = host.next()
    assert got.result == {"motd": "hello", "root_password": None, "nothing": None}
    assert "s3cret" not in (tmp / "state" / "keys.json").read_text()
    # ping, unknown ops and versions are answered, never fatal
    host.send(id="p1", op="ping")
    assert host.next().result == {"pong": True}
    host.send(id="x1", op="reboot")
    assert host.next() == GuestError(v=1, type="error", id="x1", error="unknown op 'reboot'")
    host.raw(b'{"v": 9, "id": "x2", "op": "ping"}\n')
    assert host.next().error == "unknown protocol version"
    host.close()
    # a new connection (the agent restarted): ready again, with the keys it holds
    host = Host(chan)
    host.send(id="h2", op="hello")
    again = host.next()
    assert isinstance(again, Ready) and again.keys == [
        "broken",
        "hostname",
        "motd",
        "root_password",
    ]
    host.close()


def test_garbage_and_long_lines_are_dropped_and_the_channel_goes_on(
    guest: tuple[Path, Path, Path],
) -> None:
    _, chan, _ = guest
    host = Host(chan)
    host.raw(b"\x00\xff\xfe not json\n")
    host.raw(b"[1, 2]\n")
    host.raw(b'{"v": 1, "op": "ping"}\n')  # no id
    host.raw(b"x" * (300 * 1024) + b"\n")  # past the program's line limit
    host.send(id="p2", op="ping")
    assert host.next().id == "p2"
    host.close()


def test_actions_and_command_line_events_and_reports(guest: tuple[Path, Path, Path]) -> None:
    tmp, chan, control = guest
    handler(tmp / "actions", "backup", 'cat > "$0.args"; echo started\n')
    host = Host(chan)
    host.send(id="h1", op="hello")
    assert isinstance(host.next(), Ready)
    host.send(id="a1", op="action", name="backup", args={"target": "/srv"})
    assert host.next().result == {"output": "started"}
    assert json.loads((tmp / "actions" / "backup.args").read_text()) == {"target": "/srv"}
    host.send(id="a2", op="action", name="nothing")
    assert host.next().error == "no action nothing is configured"
    cli = [sys.executable, str(PROGRAM)]
    out = subprocess.run(
        [*cli, "send-event", "backup-done", "size=10G", "--control", str(control)],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ev = host.next()
    assert isinstance(ev, GuestEvent) and ev.name == "backup-done" and ev.data == {"size": "10G"}
    subprocess.run(
        [*cli, "report", "ip=10.0.0.5", "--control", str(control)], check=True, timeout=10
    )
    rep = host.next()
    assert isinstance(rep, Report) and rep.keys == {"ip": "10.0.0.5"}
    bad = subprocess.run(
        [*cli, "send-event", "../etc", "--control", str(control)], capture_output=True, timeout=10
    )
    assert bad.returncode != 0 and b"not an event name" in bad.stderr
    host.close()


def test_a_handler_that_leaves_a_child_behind_or_hangs_does_not_hold_the_guest(
    guest: tuple[Path, Path, Path],
) -> None:
    tmp, chan, _ = guest
    handler(tmp / "handlers", "bg", "sleep 30 &\necho started\n")  # keeps stdout open
    handler(tmp / "handlers", "hang", "exec sleep 30\n")
    host = Host(chan)
    t0 = time.monotonic()
    host.send(id="b1", op="set", key="bg", value="x")
    assert host.next().result == {"output": "started"}
    assert time.monotonic() - t0 < 3
    host.send(id="h1", op="set", key="hang", value="x")  # past --handler-timeout 5
    err = host.next()
    assert isinstance(err, GuestError) and err.error == "handler of hang ran over 5.0s"
    host.send(id="p1", op="ping")
    assert host.next().id == "p1"
    host.close()
