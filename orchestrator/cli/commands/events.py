"""`vmorch events`: the event stream, listed or followed live, filtered."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.text import Text

from orchestrator.cli.commands import leaf
from orchestrator.cli.context import Context, query
from orchestrator.cli.durations import duration_arg
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, clock, page, safe, table
from orchestrator.cli.sse import Follower

TICK_S = 0.5


def _data(doc: dict[str, Any]) -> str:
    return json.dumps(doc.get("data") or {}, separators=(",", ":"))


EVENT_COLUMNS = [
    Column("time", lambda e: clock(e.get("time")), no_wrap=True),
    Column("type", lambda e: e.get("type"), no_wrap=True),
    Column("subject", lambda e: e.get("subject")),
    Column("source", lambda e: e.get("source")),
    Column("data", _data),
]


def _line(doc: dict[str, Any]) -> str:
    """A followed event for people: time, type, subject, source, data."""
    return "  ".join(
        str(x)
        for x in (
            clock(doc.get("time")),
            doc.get("type"),
            doc.get("subject") or "-",
            doc.get("source"),
            _data(doc),
        )
    )


def _filters(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    return {"type": a.type, "subject": a.subject, "source": a.source, "after": a.after}


def follow(ctx: Context) -> int:
    """Events as they come, until Ctrl-C or --duration: a line each, or JSON lines (each
    the event with its stream_id: `--after` it resumes there)."""
    client, out = ctx.client, ctx.out
    path = query("/v1/events/stream", **_filters(ctx))
    end = (
        None if ctx.args.duration is None else time.monotonic() + ctx.args.duration.total_seconds()
    )
    with Follower(lambda last: client.stream(path, last_event_id=last), resume=True) as events:
        while end is None or time.monotonic() < end:
            event = events.next(TICK_S)
            if event is None:
                continue
            doc = event.json()
            if event.id:
                doc["stream_id"] = event.id
            if out.json:
                out.json_line(doc)
            elif event.type == "events.gap":
                out.err.print(Text(safe(f"events were lost: {_data(doc)}"), style="yellow"))
            else:
                out.note(_line(doc))
    return ExitCode.OK


def cmd_events(ctx: Context) -> int:
    if ctx.args.follow:
        return follow(ctx)
    found = ctx.get("/v1/events", **_filters(ctx), limit=ctx.args.limit)

    def render(p: dict[str, Any]) -> Any:
        parts: list[Any] = [table(p["items"], EVENT_COLUMNS, empty="no events")]
        if p.get("gap"):
            parts.append(
                Text(f"events were lost (trimmed) after {p['gap']['after']}", style="yellow")
            )
        return page(Group(*parts), "--after", p.get("next_after"))

    ctx.out.result(found, render)
    return ExitCode.OK


def register(sub: Any) -> None:
    p = leaf(sub, "events", "list events, or follow them live (--follow), filtered")
    p.add_argument("--type", metavar="GLOB", help="event type, a glob: 'job.*', vm.lifecycle.*")
    p.add_argument("--subject", help="exact subject (a job id, a VM's uuid, a server)")
    p.add_argument("--source", help="exact source (libvirt://srv-a1, vmorch://engine)")
    p.add_argument("--after", metavar="STREAM_ID", help="start after this stream_id")
    p.add_argument("--limit", type=int, default=100, help="listing: at most this many")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow live (Server-Sent Events), resuming across reconnections",
    )
    p.add_argument(
        "--duration",
        type=duration_arg,
        metavar="DURATION",
        help="--follow: stop after this long (exit 0)",
    )
    p.set_defaults(fn=cmd_events)
