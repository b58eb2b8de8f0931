"""Guest channels: the agent's side of each running VM's virtio-serial port.

For every domain running on its server, the agent connects to the channel's unix socket
(QEMU listens on it; the path comes from the live domain XML), says hello, and relays:
the guest's lines become events (`guest.ready`, `guest.message`, `guest.event.<name>`)
and answers to messages; the VM's outbox (`store/guest.py`) is sent in order whenever the
guest is ready, again after a reconnect (the guest applies each id once).

Everything a guest sends is untrusted. A line longer than `guest_line_max` is dropped to
its end, a line that is not a valid message (`schemas.guest`) is dropped, and lines past
the VM's rate (`guest_rate_per_s`, bucket `guest_burst`) are dropped unread; each drop is
counted per VM and reason. A guest may answer only its own VM's messages. One channel's
trouble ends that channel's connection at worst (it is tried again), never the agent or
another VM's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.asyncio as aredis
from pydantic import ValidationError

from orchestrator import logs
from orchestrator.errors import HypervisorUnavailable
from orchestrator.metrics import GUEST_CHANNEL_DROPS
from orchestrator.secrets import Unsealable
from orchestrator.services import Services, sealer_of
from orchestrator.store.events import make_event
from orchestrator.store.guest import MessageRecord
from schemas import event_types as et
from schemas.guest import Ack, GuestError, GuestEvent, Ready, Report, ToGuest, from_guest
from schemas.inventory import Server
from workers.hypervisor.events import EventConnection

log = logging.getLogger("vmorch.agent.guest")
T = TypeVar("T")
RETRY_MIN_S, RETRY_MAX_S = 0.05, 5.0
FLUSH_S = 1.0  # drop counters and last-seen go to Redis at most this often per VM
DOORBELL_BLOCK_MS = 1000
XML_THREADS = 2  # reads of channel paths from libvirt at once
PATH_RECHECK_S = 30.0  # a socket path not there is read again from libvirt this often
RESULT_MAX = 4096  # characters of a guest's answer kept (JSON)
SWEEP_S = 10.0  # every channel looks at its outbox this often (a doorbell may be trimmed)


class Bucket:
    """A token bucket: `rate` lines per second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ByteBudget:
    """A token bucket of bytes that says how long to wait instead of refusing."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = float(burst), clock()

    def spend(self, n: int) -> float:
        """Take `n` bytes; the seconds to wait before reading more (0: none)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Channel:
    """One running VM's channel: connect, serve, reconnect, until the VM stops."""

    def __init__(self, owner: GuestChannels, uuid: str):
        self.owner = owner
        self.uuid = uuid
        self.kick = asyncio.Event()  # the outbox may have something to send
        self.ready = False
        self.sent: set[str] = set()  # sent on this connection since the guest's last ready
        self.bucket = Bucket(owner.settings.guest_rate_per_s, owner.settings.guest_burst)
        bps = owner.settings.guest_bytes_per_s
        self.bytes = ByteBudget(bps, 4 * bps)
        self.drops: Counter[str] = Counter()
        self.dropped_total: Counter[str] = Counter()
        self.last_flush = 0.0
        self.task: asyncio.Task[None] | None = None

    # --- connecting --------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the channel until the domain is definitely not running (or has none);
        every other trouble (the socket, libvirt, Redis, a bug) is retried."""
        logs.bind(vm_id=self.uuid)  # this channel's task only
        delay = RETRY_MIN_S
        path: str | None = None
        looked = 0.0  # when the path was last read from libvirt
        while True:
            try:
                stale = time.monotonic() - looked > PATH_RECHECK_S
                if path is None or (delay >= RETRY_MAX_S and (os.path.exists(path) or stale)):
                    # the path from the live XML: again when a socket there refuses for
                    # long, or is not there for longer (QEMU picks a new one each start)
                    path, looked = await self.owner.channel_path(self.uuid), time.monotonic()
                    if path is None:
                        return  # not running (any more), or no channel: nothing to serve
                reader, writer = await asyncio.open_unix_connection(
                    path, limit=self.owner.settings.guest_line_max + 1
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except (HypervisorUnavailable, TimeoutError) as e:  # libvirt: ask again later
                log.info("vm=%s guest channel path not read: %s", self.uuid, e)
                await asyncio.sleep(RETRY_MAX_S)
                continue
            except Exception:
                log.exception("vm=%s guest channel path not read", self.uuid)
                await asyncio.sleep(RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            try:
                await self._serve(reader, writer)
            except (OSError, asyncio.IncompleteReadError) as e:
                log.info("vm=%s guest channel closed: %s", self.uuid, e)
            except aredis.RedisError as e:
                log.warning("vm=%s guest channel: Redis failed (%s); reconnecting", self.uuid, e)
            except Exception:
                log.exception("vm=%s guest channel failed; reconnecting", self.uuid)
            finally:
                self.ready = False
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                with contextlib.suppress(aredis.RedisError):
                    await self._flush(force=True)
                    await self.owner.guests.disconnected(self.uuid, self.owner.server.name)
            await asyncio.sleep(RETRY_MIN_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ToGuest(id=f"hello-{time.time_ns()}", op="hello").line())
        await writer.drain()
        sender = asyncio.create_task(self._send_outbox(writer))
        try:
            await self._read(reader, sender)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    # --- guest -> host -----------------------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader, sender: asyncio.Task[None]) -> None:
        skipping = False  # inside an over-long line: drop up to its end
        while True:
            if sender.done():  # the writer side ended: start over (reconnect)
                raise OSError(f"the sender stopped: {sender.exception()!r}")
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), FLUSH_S)
            except TimeoutError:  # a quiet channel: what was counted goes out now
                await self._flush(force=bool(self.drops))
                continue
            except asyncio.LimitOverrunError as e:
                await reader.readexactly(e.consumed)  # drop what was read of it
                if not skipping:
                    self._drop("too_long")
                skipping = True
                await self._pace(e.consumed)
                continue
            except asyncio.IncompleteReadError:
                return  # the guest side closed (QEMU went)
            await self._pace(len(line))
            if skipping:
                skipping = False
                continue
            if not self.bucket.take():  # blank lines count too: every line costs work
                self._drop("rate")
            elif line.strip():
                try:
                    msg = from_guest.validate_json(line)
                except ValidationError:
                    self._drop("invalid")
                else:
                    await self._handle(msg)
            await self._flush()

    async def _pace(self, n: int) -> None:
        """At most guest_bytes_per_s from one guest: past its budget the channel is not
        read for a while (backpressure: the guest's writes wait in QEMU, not here)."""
        wait_s = self.bytes.spend(n)
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    def _drop(self, reason: str) -> None:
        GUEST_CHANNEL_DROPS.labels(reason).inc()
        self.drops[reason] += 1
        self.dropped_total[reason] += 1

    async def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_S:
            return
        self.last_flush = now
        drops, self.drops = self.drops, Counter()
        for reason, n in drops.items():
            log.warning("vm=%s guest channel: %d line(s) dropped (%s)", self.uuid, n, reason)
            await self.owner.guests.dropped(self.uuid, reason, n)
        await self.owner.guests.seen(self.uuid)

    async def _handle(self, msg: Ready | Ack | GuestError | Report | GuestEvent) -> None:
        o = self.owner
        if isinstance(msg, Ready):
            self.ready = True
            self.sent.clear()  # a guest that restarted may have lost what it was sent
            await o.guests.connected(self.uuid, o.server.name, msg)
            await o.publish(
                et.GUEST_READY,
                self.uuid,
                {**o.about(self.uuid), "version": msg.version, "boot_id": msg.boot_id,
                 "uptime_s": msg.uptime_s},
            )  # fmt: skip
            self.kick.set()  # everything not yet answered goes (again)
        elif isinstance(msg, Ack | GuestError):
            await self._answered(msg)
        elif isinstance(msg, Report):
            await o.guests.report(self.uuid, dict(msg.keys))
            await o.publish(et.GUEST_MESSAGE, self.uuid, {**o.about(self.uuid), "keys": msg.keys})
        else:
            await o.publish(
                et.GUEST_EVENT + msg.name,
                self.uuid,
                {**o.about(self.uuid), "name": msg.name, "data": msg.data},
            )

    async def _answered(self, msg: Ack | GuestError) -> None:
        o = self.owner
        [rec] = await o.guests.messages([msg.id])
        if rec is None or rec.vm_id != self.uuid:
            self._drop("invalid")  # not a message of this VM's: a guest answers its own only
            return
        ok = isinstance(msg, Ack)
        answer: dict[str, Any] = {}
        if isinstance(msg, Ack) and not rec.secret and msg.result is not None:
            if len(json.dumps(msg.result)) <= RESULT_MAX:
                answer["result"] = msg.result
            else:  # kept in the record, the event and the job: bounded
                answer["result_dropped"] = f"over {RESULT_MAX} characters"
        if isinstance(msg, GuestError):
            answer["error"] = msg.error
        status = "acknowledged" if ok else "failed"
        if await o.guests.answer(rec.id, status, answer) != "ok":
            return  # answered before (a duplicate), or failed meanwhile (its deadline)
        data = {**o.about(self.uuid), "message_id": rec.id, "key": rec.key, **answer}
        await o.publish(et.GUEST_ACKNOWLEDGED if ok else et.GUEST_FAILED, rec.job_id, data)

    async def _failed_here(self, rec: MessageRecord, error: str) -> None:
        o = self.owner
        if await o.guests.answer(rec.id, "failed", {"error": error}) == "ok":
            data = {**o.about(self.uuid), "message_id": rec.id, "key": rec.key, "error": error}
            await o.publish(et.GUEST_FAILED, rec.job_id, data)

    # --- host -> guest -----------------------------------------------------------------------
    async def _send_outbox(self, writer: asyncio.StreamWriter) -> None:
        self.sent = set()
        while True:
            await self.kick.wait()
            self.kick.clear()
            if not self.ready:
                continue
            try:
                await self._send_pending(writer)
            except aredis.RedisError as e:  # the outbox stays: look again soon
                log.warning("vm=%s outbox not read (%s); again in 1 s", self.uuid, e)
                await asyncio.sleep(1.0)
                self.kick.set()

    async def _send_pending(self, writer: asyncio.StreamWriter) -> None:
        """The outbox in order, but what this connection sent since the guest's ready."""
        now_ms = int(time.time() * 1000)
        for rec in await self.owner.guests.outbox(self.uuid):
            if rec.id in self.sent or (rec.deadline_ms and rec.deadline_ms < now_ms):
                continue
            try:
                line = self.owner.line(rec)
            except Unsealable as e:
                await self._failed_here(rec, f"not sent: {e}")
                continue
            writer.write(line)
            await writer.drain()
            self.sent.add(rec.id)
            await self.owner.guests.answer(rec.id, "delivered", {})


class GuestChannels:
    """The channels of one server's running VMs, and the doorbell that wakes them."""

    def __init__(
        self, services: Services, server: Server, conn: Callable[[], EventConnection | None]
    ):
        self.settings = services.settings
        self.server = server
        self.guests = services.guests
        self.events = services.events
        self._conn = conn
        self.sealer = sealer_of(services.settings)
        self.channels: dict[str, Channel] = {}
        self.names: dict[str, str] = {}  # domain names, as libvirt reported them
        self._xml = ThreadPoolExecutor(XML_THREADS, thread_name_prefix="guest-xml")
        self._qga = ThreadPoolExecutor(1, thread_name_prefix="guest-qga")

    def about(self, uuid: str) -> dict[str, Any]:
        return {
            "vm_id": uuid,
            "vm_name": self.names.get(uuid, ""),
            "server": self.server.name,
            "pool": self.server.pool,
        }

    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        vm_id = str(data.get("vm_id", subject))
        await self.events.publish(make_event(type_, et.source_guest(vm_id), subject, data))

    def line(self, rec: MessageRecord) -> bytes:
        """The message as the guest reads it (a secret's value unsealed only here; Unsealable
        when this agent's key cannot open it)."""
        value = rec.value
        if rec.secret and value is not None:
            if self.sealer is None:
                raise Unsealable("this agent has no VMORCH_GUEST_SECRET_KEY")
            value = self.sealer.unseal(value)
        return ToGuest(
            id=rec.id,
            op=rec.op,  # type: ignore[arg-type]
            key=rec.key,
            value=value,
            secret=rec.secret,
            name=rec.name,
            args=rec.args,
        ).line()

    async def channel_path(self, uuid: str) -> str | None:
        """The channel's socket; None when the domain is definitely not running or has no
        channel; HypervisorUnavailable or TimeoutError when libvirt cannot say now."""
        conn = self._conn()
        if conn is None:
            raise HypervisorUnavailable("the agent is not connected to its server")
        return await self._call(self._xml, conn.channel_path, uuid)

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[[str], T], uuid: str) -> T:
        """`fn(uuid)` (a libvirt call) on `pool`, within the call timeout: threads of their
        own, as a call to a server that hangs stays stuck until it answers and must not
        take the threads the agent's own calls (states, facts) use."""
        call = asyncio.get_running_loop().run_in_executor(pool, fn, uuid)
        return await asyncio.wait_for(call, self.settings.libvirt_call_timeout_s)

    def track(self, uuid: str, running: bool, name: str = "") -> None:
        """A domain runs (serve its channel) or does not (stop serving it)."""
        if name:
            self.names[uuid] = name
        ch = self.channels.get(uuid)
        if running:
            if ch is None or ch.task is None or ch.task.done():
                ch = self.channels[uuid] = Channel(self, uuid)
                ch.task = asyncio.create_task(ch.run(), name=f"guest-{uuid}")
        elif ch is not None:
            del self.channels[uuid]
            self.names.pop(uuid, None)
            if ch.task is not None:
                ch.task.cancel()

    def sync(self, running: dict[str, str]) -> None:
        """Serve exactly the channels of `running` (uuid -> name; after a comparison)."""
        for uuid in set(self.channels) - set(running):
            self.track(uuid, False)
        for uuid, name in running.items():
            self.track(uuid, True, name)

    def kick_all(self) -> None:
        for ch in self.channels.values():
            ch.kick.set()

    async def doorbell(self, stop: asyncio.Event) -> None:
        """Wake the channel of each VM whose outbox grew (every agent reads the doorbell;
        the one serving the VM sends). After a Redis failure every channel looks again."""
        pos: str | None = None
        next_sweep = time.monotonic() + SWEEP_S
        while not stop.is_set():
            try:
                if pos is None:
                    pos = await self.guests.doorbell_position()
                    self.kick_all()
                pos, vms = await self.guests.doorbell(pos, DOORBELL_BLOCK_MS)
            except aredis.RedisError as e:
                log.warning("server=%s guest doorbell: %s; retrying", self.server.name, e)
                pos = None
                await asyncio.sleep(1.0)
                continue
            for vm in vms:
                if (ch := self.channels.get(vm)) is not None:
                    ch.kick.set()
            if time.monotonic() >= next_sweep:
                # every channel looks at its outbox (a doorbell entry may have been trimmed
                # before this agent read it), and a channel that ended while its domain
                # runs (libvirt could not say, a bug) starts again
                next_sweep = time.monotonic() + SWEEP_S
                self.kick_all()
                for uuid, ch in list(self.channels.items()):
                    if ch.task is not None and ch.task.done():
                        self.track(uuid, True)

    async def qemu_agents(self, stop: asyncio.Event) -> None:
        """Every `agent_facts_interval_s`: what each running domain's QEMU guest agent
        says, recorded for `GET /v1/vms/{vm}/guest` (the test driver has no agents)."""
        if self.server.uri.startswith("test"):
            return
        every_s = self.settings.agent_facts_interval_s
        while not stop.is_set():
            for uuid in list(self.channels):
                conn = self._conn()
                if conn is None:
                    break
                try:
                    info = await self._call(self._qga, conn.guest_agent, uuid)
                    await self.guests.qemu_agent(uuid, info)
                except (HypervisorUnavailable, TimeoutError, aredis.RedisError) as e:
                    log.info("vm=%s QEMU guest agent not read: %s", uuid, e)
                except Exception:  # what a guest says must not end this loop
                    log.exception("vm=%s QEMU guest agent's answer not taken", uuid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def close(self) -> None:
        tasks = [ch.task for ch in self.channels.values() if ch.task is not None]
        self.channels.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._xml.shutdown(wait=False, cancel_futures=True)
        self._qga.shutdown(wait=False, cancel_futures=True)
