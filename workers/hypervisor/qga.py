"""The QEMU guest agent's protocol (QGA): the few commands vmorch uses and what their
answers mean, over any transport that sends one JSON command and returns its reply.

On a server the transport is libvirt (`virDomainQemuAgentCommand`: libvirt owns the
domain's `org.qemu.guest_agent.0` channel); the tests also speak it over a unix socket to
Debian's real `qemu-ga` (`UnixTransport`). A guest's answers are untrusted: every field is
checked, bounded and typed before vmorch keeps it.

Commands vmorch sends: `guest-ping`, `guest-info` (version, which commands are enabled),
`guest-network-get-interfaces`, and `guest-shutdown` (a graceful power-off where ACPI
does not work; sent through libvirt's shutdown with the agent flag, not from here).
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Transport = Callable[[str], str]  # a JSON command in, the JSON reply out
MAX_REPLY = 1 << 20  # bytes of one reply taken
MAX_INTERFACES, MAX_ADDRESSES = 64, 32


class QgaError(Exception):
    """The agent answered with an error (a command it has disabled, say), or nothing
    usable."""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str | None
    addresses: list[str] = field(default_factory=list)  # "10.0.0.5/24", "fe80::1/64"


@dataclass(frozen=True)
class AgentInfo:
    version: str
    enabled: list[str]  # the commands it runs (the others are disabled or unknown)
    ping_ms: float = 0.0  # how long its guest-ping took to answer


def _result(reply: str) -> Any:
    if len(reply) > MAX_REPLY:
        raise QgaError("the guest agent's reply is too long")
    try:
        doc = json.loads(reply)
    except ValueError as e:
        raise QgaError("the guest agent's reply is not JSON") from e
    if not isinstance(doc, dict):
        raise QgaError("the guest agent's reply is not an object")
    if "error" in doc:
        err = doc["error"] if isinstance(doc["error"], dict) else {}
        raise QgaError(str(err.get("desc") or "the guest agent refused the command")[:300])
    if "return" not in doc:
        raise QgaError("the guest agent's reply has no result")
    return doc["return"]


def _command(name: str, **args: Any) -> str:
    return json.dumps({"execute": name, **({"arguments": args} if args else {})})


class Qga:
    def __init__(self, send: Transport):
        self._send = send

    def call(self, name: str, **args: Any) -> Any:
        return _result(self._send(_command(name, **args)))

    def ping(self) -> float:
        """guest-ping; the milliseconds it took."""
        t0 = time.monotonic()
        self.call("guest-ping")
        return (time.monotonic() - t0) * 1000

    def info(self) -> AgentInfo:
        doc = self.call("guest-info")
        if not isinstance(doc, dict):
            raise QgaError("guest-info: not an object")
        raw = doc.get("supported_commands")
        cmds: list[Any] = raw if isinstance(raw, list) else []
        enabled = sorted(
            str(c["name"])[:64]
            for c in cmds[:256]
            if isinstance(c, dict) and isinstance(c.get("name"), str) and c.get("enabled")
        )
        return AgentInfo(version=str(doc.get("version", ""))[:64], enabled=enabled)

    def interfaces(self) -> list[Interface]:
        doc = self.call("guest-network-get-interfaces")
        if not isinstance(doc, list):
            raise QgaError("guest-network-get-interfaces: not a list")
        return [i for i in (_interface(x) for x in doc[:MAX_INTERFACES]) if i is not None]


def _interface(x: Any) -> Interface | None:
    if not isinstance(x, dict) or not isinstance(x.get("name"), str):
        return None
    mac = x.get("hardware-address")
    addrs = []
    for a in (x.get("ip-addresses") or [])[:MAX_ADDRESSES]:
        if not isinstance(a, dict):
            continue
        try:
            ip = ipaddress.ip_address(str(a.get("ip-address")))
            prefix = int(a.get("prefix", ip.max_prefixlen))
            if not 0 <= prefix <= ip.max_prefixlen:
                continue
        except ValueError:
            continue  # not an address: a guest may say anything
        addrs.append(f"{ip}/{prefix}")
    mac_ok = (
        isinstance(mac, str) and len(mac) == 17 and all(c in "0123456789abcdefABCDEF:" for c in mac)
    )
    return Interface(name=x["name"][:64], mac=str(mac).lower() if mac_ok else None, addresses=addrs)


class UnixTransport:
    """QGA over a unix socket (`qemu-ga --method unix-listen`): the tests' transport. Each
    command is preceded by `guest-sync-delimited`, as the protocol asks, so that a reply
    left over from an earlier command is not taken for this one's."""

    def __init__(self, path: str, timeout_s: float = 5.0):
        self.path, self.timeout_s = path, timeout_s

    def __call__(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(self.path)
            f = s.makefile("rwb")
            token = random.randrange(1, 2**31)
            f.write(b"\xff" + _command("guest-sync-delimited", id=token).encode() + b"\n")
            f.flush()
            while True:  # to the sync answer (after the 0xff the agent sends before it;
                # the agent answers the 0xff that reset its parser with an error first)
                line = f.readline(MAX_REPLY)
                if not line:
                    raise QgaError("the guest agent closed the connection")
                line = line.lstrip(b"\xff")
                try:
                    if line.strip() and _result(line.decode(errors="replace")) == token:
                        break
                except QgaError:
                    continue
            f.write(command.encode() + b"\n")
            f.flush()
            reply = f.readline(MAX_REPLY + 1)
            if not reply:
                raise QgaError("the guest agent closed the connection")
            return reply.decode(errors="replace")
