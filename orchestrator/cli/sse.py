"""Server-Sent Events over urllib's streaming response: a parser, and a follower that reads
on a thread so that the caller keeps a deadline and a live view refreshing while it waits.

The follower reconnects when a stream ends or breaks: with `Last-Event-ID` (the api resumes
after it, with an `events.gap` event first if entries were trimmed meanwhile) for the event
stream, or afresh (a new snapshot) for a job's stream. It gives up, as unreachable, when no
connection succeeds for RECONNECT_FOR_S; an answer of the api (401, 404, 429) ends it at once.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from orchestrator.cli.client import ApiError

RECONNECT_FOR_S = 30.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class SseEvent:
    type: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse(lines: Iterator[bytes]) -> Iterator[SseEvent]:
    """The events of a text/event-stream (comments and unknown fields skipped)."""
    etype, eid = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data or etype:
                yield SseEvent(etype or "message", "\n".join(data), eid)
            etype, data, eid = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            etype = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            eid = value


class StreamEnded(Exception):
    """The stream ended and the follower was told not to reconnect (or was closed)."""


Opener = Callable[[str | None], IO[bytes]]


class Follower:
    """Reads `open_stream(last_event_id)` on a daemon thread; `next(timeout)` hands over its
    events in order. `resume`: reconnect with the last event id (the event stream), else
    afresh; a stream that ends after an event for which `until(event)` is true is not
    reconnected (a job's stream, once the job has ended)."""

    def __init__(
        self,
        open_stream: Opener,
        *,
        resume: bool,
        until: Callable[[SseEvent], bool] = lambda _: False,
    ) -> None:
        self._open = open_stream
        self._resume = resume
        self._until = until
        self._items: queue.Queue[SseEvent | BaseException] = queue.Queue()
        self._closed = threading.Event()
        self._ended = False
        self.last_id: str | None = None
        self._thread = threading.Thread(target=self._run, name="vmorch-sse", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop following. The reading thread is not waited for, nor its stream closed
        under it (closing a buffered reader another thread reads blocks until that read
        returns): it ends at its next line, a keep-alive at the latest, or with the
        process (a daemon thread)."""
        self._closed.set()

    def next(self, timeout_s: float | None) -> SseEvent | None:
        """The next event; None when `timeout_s` passed without one; raises what ended the
        stream (ApiError, StreamEnded)."""
        try:
            item = self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._items.put(item)  # stays ended for later calls too
            raise item
        return item

    def _connect(self, first: bool) -> IO[bytes]:
        """A connection; after the first, one retried with backoff for RECONNECT_FOR_S (an
        api that cannot be reached at all is said at once)."""
        deadline = time.monotonic() + RECONNECT_FOR_S
        attempt = 0
        while True:
            try:
                return self._open(self.last_id if self._resume else None)
            except ApiError as e:
                if first or 0 < e.status < 500 or time.monotonic() > deadline:
                    raise
            if self._closed.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]):
                raise StreamEnded("closed")
            attempt += 1

    def _run(self) -> None:
        try:
            first = True
            while not self._closed.is_set():
                stream, first = self._connect(first), False
                with contextlib.suppress(OSError, ValueError):  # broken, timed out
                    for event in parse(iter(stream.readline, b"")):
                        if event.id:
                            self.last_id = event.id
                        self._ended = self._ended or self._until(event)
                        self._items.put(event)
                        if self._closed.is_set():
                            break
                with contextlib.suppress(Exception):
                    stream.close()
                if self._ended:
                    break
            self._items.put(StreamEnded("the stream ended"))
        except BaseException as e:  # handed to the caller's thread
            self._items.put(e)
