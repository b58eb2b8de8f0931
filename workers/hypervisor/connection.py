"""One server's libvirt connection for the adapter, where every call has a deadline.

libvirt-python calls block in C and cannot be interrupted, so each call runs on a thread of
its own while its caller waits for it with a deadline, and with a `check` that may raise to
give up early (an abort, a lost lease). A call given up on is left to finish on its thread:
  - On a timeout the connection is retired (later calls open a new one), and for one
    deadline new calls fail at once while the timed-out call is still outstanding: a hung
    daemon costs each worker process one deadline, not one per call.
  - A call whose connection was still being opened when its caller gave up never starts,
    so a daemon that comes back does not run a stale action. One already sent may still
    be carried out: steps converge, so running it again (or undoing it) stays right.
Connections have keepalive, so libvirt itself closes one whose daemon stopped answering,
which also ends a call stuck on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import libvirt

from orchestrator.errors import HypervisorTimeout
from workers.hypervisor.errors import is_transient
from workers.hypervisor.events import Keepalive, open_connection

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.1  # how often a waiting caller runs its `check`


@dataclass(frozen=True)
class CallLimits:
    """How long one libvirt call may take (a volume copy: `copy_timeout_s`), and the
    connections' keepalive."""

    timeout_s: float = 30.0
    copy_timeout_s: float = 1800.0
    keepalive: Keepalive = field(default_factory=Keepalive)


@dataclass
class _Opened:
    """An open connection and how many calls are running on it."""

    conn: libvirt.virConnect
    users: int = 0
    retired: bool = False  # no new calls; closed when the last one ends
    closed: bool = False


class _Call(Generic[T]):
    """One call, shared by its caller and its thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.timed_out = False
        self.opened: _Opened | None = None
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Connection:
    """Calls to one server, each on its own thread, over one shared libvirt connection."""

    def __init__(self, uri: str, limits: CallLimits | None = None):
        self.uri = uri
        self.limits = limits or CallLimits()
        self._lock = threading.Lock()
        self._current: _Opened | None = None
        self._hung_calls = 0  # calls that timed out and have not returned yet
        self._hung_at = 0.0  # monotonic time of the latest timeout
        self._hung_window_s = 0.0  # ...and that call's deadline: how long to fail fast

    def call(
        self,
        fn: Callable[[libvirt.virConnect], T],
        *,
        timeout_s: float | None = None,
        check: Callable[[], None] | None = None,
    ) -> T:
        """`fn(conn)` within `timeout_s` (the limits' by default): its result, or its error
        (libvirt's, unmapped); HypervisorTimeout at the deadline; whatever `check` raises."""
        limit_s = timeout_s or self.limits.timeout_s
        self._fail_fast()
        call: _Call[T] = _Call()
        threading.Thread(
            target=self._run, args=(fn, call), name="libvirt-call", daemon=True
        ).start()
        try:
            self._wait(call, limit_s, check)
        except BaseException as e:
            timed_out = isinstance(e, HypervisorTimeout)
            if self._abandon(call, timed_out, limit_s) or not timed_out:
                raise
        return call.outcome()  # done (also when it finished right at the deadline)

    def close(self) -> None:
        with self._lock:
            cur, self._current = self._current, None
            if cur is not None:
                self._retire(cur)

    # --- the caller's side ---------------------------------------------------------------
    def _fail_fast(self) -> None:
        with self._lock:
            if not self._hung_calls:
                return
            since_s = time.monotonic() - self._hung_at
            if since_s < self._hung_window_s:
                raise HypervisorTimeout(
                    f"{self.uri}: no answer to a call for more than {self._hung_window_s:g} s"
                    f" (timed out {since_s:.1f} s ago); not trying again yet"
                )

    def _wait(self, call: _Call[Any], limit_s: float, check: Callable[[], None] | None) -> None:
        deadline = time.monotonic() + limit_s
        while not call.done.wait(min(POLL_S, max(0.0, deadline - time.monotonic()))):
            if check is not None:
                check()
            if time.monotonic() >= deadline:
                raise HypervisorTimeout(f"{self.uri}: no answer within {limit_s:g} s")

    def _abandon(self, call: _Call[Any], timed_out: bool, limit_s: float) -> bool:
        """Give up on `call`; False when it has finished after all."""
        with self._lock, call.lock:
            if call.done.is_set():
                return False
            call.abandoned = True
            call.timed_out = timed_out
            if timed_out:
                self._hung_calls += 1
                self._hung_at = time.monotonic()
                self._hung_window_s = limit_s
                if call.opened is not None:
                    self._retire(call.opened)
        if timed_out:
            log.warning("%s: a libvirt call had no answer in time; reconnecting", self.uri)
        return True

    # --- the call's thread ---------------------------------------------------------------
    def _run(self, fn: Callable[[libvirt.virConnect], T], call: _Call[T]) -> None:
        opened: _Opened | None = None
        transient = False
        try:
            opened = self._acquire()
            with call.lock:
                call.opened = opened
                if call.abandoned:
                    return  # its caller gave up while it connected: do not act late
            call.result = fn(opened.conn)
        except libvirt.libvirtError as e:
            call.error = e
            transient = is_transient(e)  # (its caller classifies it: counted once)
        except BaseException as e:
            call.error = e
        finally:
            with self._lock:
                if opened is not None:
                    opened.users -= 1
                    if transient:
                        self._retire(opened)  # lost: the next call reconnects
                    self._close_if_unused(opened)
                with call.lock:
                    call.done.set()
                    if call.timed_out:
                        self._hung_calls -= 1

    def _acquire(self) -> _Opened:
        with self._lock:
            cur = self._current
            if cur is not None and cur.conn.isAlive():
                cur.users += 1
                return cur
            if cur is not None:
                self._retire(cur)  # closed by libvirt (keepalive, EOF)
        conn = open_connection(self.uri, self.limits.keepalive)  # may block: not locked
        with self._lock:
            opened = _Opened(conn, users=1)
            if self._current is None:
                self._current = opened
            else:  # another call opened one meanwhile: ours serves this call only
                opened.retired = True
            return opened

    def _retire(self, opened: _Opened) -> None:
        """Under the lock: no new calls on `opened`; closed once no call runs on it."""
        if self._current is opened:
            self._current = None
        opened.retired = True
        self._close_if_unused(opened)

    @staticmethod
    def _close_if_unused(opened: _Opened) -> None:
        if opened.retired and opened.users == 0 and not opened.closed:
            opened.closed = True
            _close_later(opened.conn)


def _close_later(conn: libvirt.virConnect) -> None:
    """Close on a thread: closing a remote connection is itself a call to the daemon."""

    def close() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    threading.Thread(target=close, name="libvirt-close", daemon=True).start()
