#!/usr/bin/env python3
"""vmorch-guest: the guest side of vmorch's message channel.

Runs inside a VM, as a service (see vmorch-guest.service beside this file). It reads the
virtio-serial port `org.vmorch.agent.0`, on which the host's vmorch agent sends
newline-delimited JSON (protocol version 1):

    host -> guest  {"v": 1, "id": ID, "op": "hello"}                  -> ready
                   {"v": 1, "id": ID, "op": "set", "key": K, "value": V, "secret": false}
                   {"v": 1, "id": ID, "op": "get", "keys": [K, ...]}
                   {"v": 1, "id": ID, "op": "ping"}
                   {"v": 1, "id": ID, "op": "action", "name": N, "args": {...}}
    guest -> host  {"v": 1, "type": "ready", "version": ..., "boot_id": ..., "keys": [...]}
                   {"v": 1, "type": "ack", "id": ID, "result": ...}
                   {"v": 1, "type": "error", "id": ID, "error": "..."}
                   {"v": 1, "type": "report", "keys": {K: V}}
                   {"v": 1, "type": "event", "name": N, "data": {K: V}}

A key that is set is kept in the local store (`--state-dir`; a secret's value is never
written there) and handed to its handler: the executable `<handlers>/<key>` (or
`<handlers>/default`), run with the key as its argument and the value on its standard
input. The message is acknowledged once the handler ran (its output as the result), or
answered with an error (its exit status and the end of its error output). Each message id
is applied once: a message delivered again is answered as the first time, not run again.
An action runs `<actions>/<name>` with its arguments as JSON on standard input.

From the guest's command line, through the running service (`--control`):
    vmorch-guest send-event NAME [k=v ...]
    vmorch-guest report k=v [k=v ...]

Standard library only; Python 3.8 or newer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

VERSION = "1.0.0"
PROTOCOL = 1
PORT_NAME = "org.vmorch.agent.0"
MAX_LINE = 256 * 1024  # the longest line taken from the host
MAX_OUTPUT = 2000  # characters of a handler's output kept for an answer
APPLIED_KEPT = 1000  # message ids remembered (applied once)
PENDING_MAX = 100  # events and reports kept while no host listens
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_CONTROL = "/run/vmorch-guest.sock"


def log(msg: str) -> None:
    sys.stderr.write(f"vmorch-guest: {msg}\n")
    sys.stderr.flush()


def _write_json(path: str, data: object) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str, default: dict[str, Any]) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else default
    except (OSError, ValueError):
        return default


class Store:
    """The keys set (a secret's value is not kept) and the answers to applied ids."""

    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.keys_path = os.path.join(state_dir, "keys.json")
        self.applied_path = os.path.join(state_dir, "applied.json")
        self.keys = _read_json(self.keys_path, {})
        self.applied = _read_json(self.applied_path, {})

    def set(self, key: str, value: str, secret: bool) -> None:
        self.keys[key] = {"secret": True} if secret else {"value": value}
        _write_json(self.keys_path, self.keys)

    def get(self, key: str) -> object:
        entry = self.keys.get(key)
        if not isinstance(entry, dict) or entry.get("secret"):
            return None
        return entry.get("value")

    def remember(self, msg_id: str, answer: dict[str, Any]) -> None:
        self.applied[msg_id] = answer
        while len(self.applied) > APPLIED_KEPT:
            del self.applied[next(iter(self.applied))]
        _write_json(self.applied_path, self.applied)


class Transport:
    """The host end: the virtio-serial port (a character device; reads give EOF while no
    host is connected), or, for tests, a unix socket this program listens on as QEMU does
    (`--listen-unix`), so that the host's agent connects to it."""

    def __init__(self, port: str | None, listen: str | None):
        self.port, self.listen = port, listen
        self.fd = -1
        self.server: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.host = False  # a host has sent something since the port last read EOF
        if listen:
            if os.path.exists(listen):
                os.unlink(listen)
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind(listen)
            self.server.listen(1)
        else:
            self.fd = os.open(port or "", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        if self.listen:
            return (self.conn or self.server).fileno()  # type: ignore[union-attr]
        return self.fd

    def on_readable(self) -> bytes | None:
        """Bytes from the host; b"" when there were none (or a host came); None when the
        host has gone (or is not there: the port reads EOF)."""
        if self.listen:
            if self.conn is None:
                self.conn, _ = self.server.accept()  # type: ignore[union-attr]
                return b""
            try:
                data = self.conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.conn.close()
                self.conn = None
                return None
            return data
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return b""
        self.host = bool(data)
        return data or None

    def send(self, obj: dict[str, Any]) -> bool:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            if self.listen:
                if self.conn is None:
                    return False
                self.conn.sendall(data)
                return True
            if not self.host:
                return False  # no host: kept until one says hello
            deadline = time.monotonic() + 2.0  # a host that does not read: give up
            while data:
                try:
                    n = os.write(self.fd, data)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    select.select([], [self.fd], [], 0.5)
                    continue
                data = data[n:]
            return True
        except OSError as e:
            log(f"cannot write to the host: {e}")
            return False


def find_port() -> str:
    """The device of the vmorch port: /dev/virtio-ports/<name> where udev made it, else
    the vportNpM whose sysfs name is it."""
    link = "/dev/virtio-ports/" + PORT_NAME
    if os.path.exists(link):
        return link
    base = "/sys/class/virtio-ports"
    for dev in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, dev, "name")) as f:
                if f.read().strip() == PORT_NAME:
                    return "/dev/" + dev
        except OSError:
            continue
    raise SystemExit(f"vmorch-guest: no virtio-serial port named {PORT_NAME}")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _kill_session(p: subprocess.Popen) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _tail(data: bytes) -> str:
    return data.decode("utf-8", "replace")[-MAX_OUTPUT:].strip()


class Guest:
    def __init__(self, args: argparse.Namespace):
        self.store = Store(args.state_dir)
        self.handlers = args.handlers
        self.actions = args.actions
        self.timeout_s = args.handler_timeout
        self.transport = Transport(args.port, args.listen_unix)
        self.buf = b""
        self.skipping = False  # inside a line longer than MAX_LINE: dropped to its end
        self.pending: list[dict[str, Any]] = []  # events and reports not yet sent
        self.control: socket.socket | None = None
        if args.control:
            if os.path.exists(args.control):
                os.unlink(args.control)
            self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.control.bind(args.control)
            os.chmod(args.control, 0o600)
            self.control.listen(8)

    # --- host messages ----------------------------------------------------------------
    def ready(self) -> None:
        self.send(
            {
                "type": "ready",
                "version": VERSION,
                "boot_id": _boot_id(),
                "uptime_s": round(_uptime(), 1),
                "keys": sorted(self.store.keys)[:256],
            }
        )
        pending, self.pending = self.pending, []
        for i, msg in enumerate(pending):
            if not self.send(msg):  # the host went again: kept for its next hello
                self.pending = pending[i:]
                break

    def send(self, obj: dict[str, Any]) -> bool:
        return self.transport.send(dict({"v": PROTOCOL}, **obj))

    def handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log("a line from the host is not JSON; ignored")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("id"), str):
            log("a message without an id; ignored")
            return
        msg_id = msg["id"]
        if msg.get("v") != PROTOCOL:
            self.send({"type": "error", "id": msg_id, "error": "unknown protocol version"})
            return
        op = msg.get("op")
        if op == "hello":
            self.ready()
            return
        if op == "ping":
            self.send({"type": "ack", "id": msg_id, "result": {"pong": True}})
            return
        if op == "get":
            names = msg.get("keys")
            names = names if isinstance(names, list) else []
            found = {k: self.store.get(k) for k in names if isinstance(k, str)}
            self.send({"type": "ack", "id": msg_id, "result": found})
            return
        if op not in ("set", "action"):
            self.send({"type": "error", "id": msg_id, "error": f"unknown op {op!r}"})
            return
        done = self.store.applied.get(msg_id)
        if done is None:  # applied once: a message delivered again gets the same answer
            done = self.set(msg) if op == "set" else self.action(msg)
            self.store.remember(msg_id, done)
        self.send(dict(done, id=msg_id))

    def set(self, msg: dict[str, Any]) -> dict[str, Any]:
        key, value, secret = msg.get("key"), msg.get("value"), bool(msg.get("secret"))
        if not isinstance(key, str) or not NAME_RE.match(key):
            return {"type": "error", "error": "invalid key name"}
        if not isinstance(value, str):
            return {"type": "error", "error": f"the value of {key} is not a string"}
        self.store.set(key, value, secret)
        handler = self._program(self.handlers, key)
        if handler is None:
            return {"type": "ack", "result": {"stored": True}}
        return self._run([handler, key], value.encode(), f"handler of {key}", secret)

    def action(self, msg: dict[str, Any]) -> dict[str, Any]:
        name, args = msg.get("name"), msg.get("args") or {}
        if not isinstance(name, str) or not NAME_RE.match(name):
            return {"type": "error", "error": "invalid action name"}
        program = self._program(self.actions, name, default=False)
        if program is None:
            return {"type": "error", "error": f"no action {name} is configured"}
        return self._run([program], json.dumps(args).encode(), f"action {name}", False)

    def _program(self, directory: str | None, name: str, default: bool = True) -> str | None:
        if not directory:
            return None
        for candidate in [name, "default"] if default else [name]:
            path = os.path.join(directory, candidate)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        return None

    def _run(self, argv: list[str], stdin: bytes, what: str, secret: bool) -> dict[str, Any]:
        """Run a handler in a session of its own, its output in files (a background child
        that keeps a pipe open cannot hold this program up), the whole session killed
        past the timeout."""
        env = dict(os.environ, VMORCH_GUEST_VERSION=VERSION)
        if secret:
            env["VMORCH_SECRET"] = "1"
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.TemporaryFile() as inp:  # fmt: skip
            inp.write(stdin)
            inp.seek(0)
            try:
                p = subprocess.Popen(
                    argv, stdin=inp, stdout=out, stderr=err, env=env, start_new_session=True
                )
            except OSError as e:
                return {"type": "error", "error": f"{what} could not run: {e.strerror}"}
            try:
                code = p.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_session(p)
                return {"type": "error", "error": f"{what} ran over {self.timeout_s}s"}
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(65536), err.read(65536)
        if code != 0:
            tail = "" if secret else _tail(stderr)
            return {"type": "error", "error": f"{what} exited {code}: {tail}"}
        return {"type": "ack", "result": {"output": "" if secret else _tail(stdout)}}

    def on_bytes(self, data: bytes) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    self.buf, self.skipping = b"", True
                    log("a line from the host is too long; dropped")
                return
            line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
            if self.skipping:
                self.skipping = False
                continue
            if line.strip():
                self.handle_line(line)

    # --- the command line's messages --------------------------------------------------
    def on_control(self) -> None:
        conn, _ = self.control.accept()  # type: ignore[union-attr]
        conn.settimeout(2.0)
        try:
            raw = b""
            while not raw.endswith(b"\n") and len(raw) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                raw += chunk
            msg = json.loads(raw or b"null")
            if not isinstance(msg, dict) or msg.get("type") not in ("event", "report"):
                conn.sendall(b"error: not an event or a report\n")
                return
            if not self.send(msg):
                self.pending = ([*self.pending, msg])[-PENDING_MAX:]
            conn.sendall(b"ok\n")
        except (OSError, ValueError) as e:
            log(f"a command-line message was not taken: {e}")
        finally:
            conn.close()

    def run(self) -> None:
        self.ready()  # to a host already there; else its hello asks again
        while True:
            watched = [self.transport.fileno()] + ([self.control] if self.control else [])
            readable, _, _ = select.select(watched, [], [], 5.0)
            if self.control is not None and self.control in readable:
                self.on_control()
            if self.transport.fileno() in readable:
                data = self.transport.on_readable()
                if data is None:  # no host: the port reads EOF until one connects
                    self.buf, self.skipping = b"", False
                    if not self.transport.listen:
                        time.sleep(0.2)
                elif data:
                    self.on_bytes(data)


def _pairs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not NAME_RE.match(k):
            raise SystemExit(f"vmorch-guest: {item!r} is not key=value")
        out[k] = v
    return out


def _tell(control: str, msg: dict[str, Any]) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect(control)
        s.sendall((json.dumps(msg) + "\n").encode())
        answer = s.recv(4096).decode().strip()
    except OSError as e:
        sys.stderr.write(f"vmorch-guest: the service does not answer at {control}: {e}\n")
        return 2
    finally:
        s.close()
    if answer != "ok":
        sys.stderr.write(f"vmorch-guest: {answer}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmorch-guest", description="vmorch's guest program")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the message channel (as a service)")
    run.add_argument("--port", help="the virtio-serial device (default: found by name)")
    run.add_argument("--listen-unix", help="tests: listen on this unix socket, as QEMU does")
    run.add_argument("--state-dir", default="/var/lib/vmorch-guest")
    run.add_argument("--handlers", default="/etc/vmorch-guest/handlers.d")
    run.add_argument("--actions", default="/etc/vmorch-guest/actions.d")
    run.add_argument("--handler-timeout", type=float, default=300.0)
    run.add_argument("--control", default=DEFAULT_CONTROL)
    ev = sub.add_parser("send-event", help="send a named event to vmorch")
    ev.add_argument("name")
    ev.add_argument("pairs", nargs="*", metavar="k=v")
    ev.add_argument("--control", default=DEFAULT_CONTROL)
    rep = sub.add_parser("report", help="report key/values to vmorch")
    rep.add_argument("pairs", nargs="+", metavar="k=v")
    rep.add_argument("--control", default=DEFAULT_CONTROL)
    args = p.parse_args(argv)
    if args.command == "send-event":
        if not NAME_RE.match(args.name):
            raise SystemExit(f"vmorch-guest: {args.name!r} is not an event name")
        return _tell(args.control, {"type": "event", "name": args.name, "data": _pairs(args.pairs)})
    if args.command == "report":
        return _tell(args.control, {"type": "report", "keys": _pairs(args.pairs)})
    if not args.listen_unix and not args.port:
        args.port = find_port()
    Guest(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
