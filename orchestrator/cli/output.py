"""What the CLI prints: rich tables and views for people, or with --json one JSON document
(JSON lines for followed streams) for scripts, and errors on stderr in either form.

In --json mode stdout carries JSON only: notes meant for people go to stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.cli.durations import format_duration
from orchestrator.cli.exitcodes import CliError

PIPE_WIDTH = 200  # a table written to a pipe or a file is not wrapped at 80 columns

STATE_STYLES = {
    # jobs
    "queued": "dim",
    "running": "cyan",
    "waiting": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "aborting": "magenta",
    "aborted": "magenta",
    # steps
    "pending": "dim",
    "done": "green",
    "undoing": "magenta",
    "undone": "magenta",
    "skipped": "dim",
    # queues, processes
    "accept": "green",
    "pause": "yellow",
    "drain": "magenta",
    "alive": "green",
    "dead": "bold red",
}


class Output:
    def __init__(
        self, json_mode: bool, *, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json = json_mode
        self.stdout = stdout or sys.stdout
        self.console = Console(file=self.stdout, highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            self.console = Console(file=self.stdout, highlight=False, width=PIPE_WIDTH)
        self.stderr = stderr or sys.stderr
        self.err = Console(file=self.stderr, highlight=False, soft_wrap=True)

    @property
    def interactive(self) -> bool:
        """A person at a terminal: live views redraw in place (else one line per change)."""
        return not self.json and self.console.is_terminal

    def document(self, doc: Any) -> None:
        """The one JSON document of a command (--json)."""
        self.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        self.stdout.flush()

    def json_line(self, doc: Any) -> None:
        """One line of a followed stream (--json): flushed at once, for `| jq` and pipes."""
        self.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
        self.stdout.flush()

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def note(self, text: str) -> None:
        """A line for people: stdout, or stderr in --json mode (stdout is JSON only)."""
        (self.err if self.json else self.console).print(safe(text), markup=False)

    def outcome(self, doc: Any, line: str) -> None:
        """What a write did: `doc` as JSON, or one line for people."""
        if self.json:
            self.document(doc)
        else:
            self.note(line)

    def result(self, doc: Any, render: Callable[[Any], RenderableType]) -> None:
        """A command's answer: `doc` as JSON, or `render(doc)` for people."""
        if self.json:
            self.document(doc)
        else:
            self.show(render(doc))

    def error(self, err: CliError) -> None:
        if self.json:
            self.stderr.write(json.dumps(err.document(), default=str) + "\n")
            return
        self.err.print(Text("vmorch: ", style="bold red") + Text(safe(err.message)))
        for loc, msg in err.details:
            where = safe(".".join(str(p) for p in loc))
            self.err.print(Text(f"  {where}: " if where else "  ", style="bold") + Text(safe(msg)))
        if err.request_id:
            self.err.print(Text(f"  (request id {err.request_id})", style="dim"))


# --- tables -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], Any]  # the row (a dict of the API's JSON) -> the cell
    justify: Literal["left", "right", "center"] = "left"
    no_wrap: bool = False


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """`text` without control characters: what guests, events, hooks and API errors say is
    untrusted, and an ESC in it would drive the operator's terminal (clear it, retitle
    it, forge a hyperlink)."""
    return _CONTROL.sub("\ufffd", text)


def cell(value: Any) -> RenderableType:
    """A table cell as plain text: never read as rich markup (`[link=...]` in a guest's
    event stays text), never with control characters."""
    if value is None:
        return ""
    if isinstance(value, Text):
        return value if not _CONTROL.search(value.plain) else Text(safe(value.plain), value.style)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return Text(safe(", ".join(str(v) for v in value)))
    if isinstance(value, dict):
        return Text(safe(", ".join(f"{k}={v}" for k, v in value.items())))
    return Text(safe(str(value)))


def table(
    rows: Iterable[Mapping[str, Any]],
    columns: Iterable[Column],
    *,
    title: str | None = None,
    empty: str = "(none)",
) -> RenderableType:
    cols = list(columns)
    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for c in cols:
        t.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap, overflow="fold")
    n = 0
    for row in rows:
        t.add_row(*(cell(c.value(row)) for c in cols))
        n += 1
    if n == 0:
        return Text(f"{title + ': ' if title else ''}{empty}", style="dim")
    return t


def page(body: RenderableType, flag: str, position: str | None) -> RenderableType:
    """A page of a listing, and how to ask for the next one when there is more."""
    if not position:
        return body
    return Group(body, Text(f"more: {flag} {position}", style="dim"))


def key_values(pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column list of labelled values (empty values left out)."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for label, value in pairs:
        if value not in (None, "", [], {}):
            t.add_row(label, cell(value))
    return t


# --- values -------------------------------------------------------------------------------


def state(value: str | None) -> Text:
    """A job, step, queue or process state, coloured."""
    return Text(value or "", style=STATE_STYLES.get(value or "", ""))


def when(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def clock(value: str | datetime | None) -> str:
    """A time in the local zone: HH:MM:SS today, else with its date."""
    at = when(value)
    if at is None:
        return ""
    local = at.astimezone()
    today = datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def span(start: str | datetime | None, end: str | datetime | None = None) -> str:
    """How long from `start` to `end` (or to now while it goes on)."""
    a = when(start)
    if a is None:
        return ""
    b = when(end) or datetime.now(UTC)
    return format_duration(max(0.0, (b - a).total_seconds()))


def expiry(value: str | None) -> str:
    """When a token stops working."""
    return clock(value) if value else "never"


def ago(value: str | datetime | None) -> str:
    return f"{span(value)} ago" if when(value) else ""


def percent(progress: float | None) -> str:
    return "" if progress is None else f"{progress * 100:5.1f}%"


def short_id(value: str | None) -> str:
    """The first 8 characters of a UUID: enough to tell jobs apart in a live view."""
    return (value or "")[:8]
