"""`vmorch queue`: depths, oldest age, running and waiting jobs, workers; and an admin's
switch of a queue to accept, pause or drain (with a rate limit)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from orchestrator.cli.commands import leaf
from orchestrator.cli.context import Context
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, table
from orchestrator.cli.queueview import queues_table

WORKER_COLUMNS = [
    Column("worker", lambda w: w["name"], no_wrap=True),
    Column("seen", lambda w: f"{w['last_seen_s_ago']:.0f}s ago", justify="right"),
    Column("queues", lambda w: w.get("queues")),
]


def render_status(doc: dict[str, Any]) -> Any:
    return Group(
        queues_table(doc, doc.get("modes")),
        Text.assemble(
            ("running ", "bold"),
            f"{len(doc.get('running', []))}  ",
            ", ".join(doc.get("running", [])),
        ),
        Text.assemble(
            ("waiting ", "bold"),
            f"{len(doc.get('waiting', []))}  ",
            ", ".join(doc.get("waiting", [])),
        ),
        table(
            doc.get("workers", []),
            WORKER_COLUMNS,
            title="workers",
            empty="none seen in the last minute",
        ),
    )


def cmd_status(ctx: Context) -> int:
    doc = dict(ctx.call("GET", "/v1/queue"))
    doc["modes"] = ctx.find("/v1/queues")  # None: the api has no queue modes
    ctx.out.result(doc, render_status)
    return ExitCode.OK


def cmd_mode(ctx: Context) -> int:
    a = ctx.args
    body = {"mode": a.queue_cmd, "rate_limit_per_minute": a.rate_limit, "reason": a.reason}
    doc = ctx.call("PUT", f"/v1/queues/{a.queue}", body)
    limit = f", at most {a.rate_limit}/min" if a.rate_limit else ""
    ctx.out.outcome(doc, f"queue {a.queue}: {a.queue_cmd}{limit}")
    return ExitCode.OK


def register(sub: Any) -> None:
    q = leaf(
        sub,
        "queue",
        "the queues: depths, oldest age, running, waiting, workers; "
        "`queue pause|accept|drain QUEUE` switches one (admin)",
    )
    q.set_defaults(fn=cmd_status)
    qs = q.add_subparsers(dest="queue_cmd", metavar="COMMAND")
    leaf(qs, "status", "the queues at a glance (the default)").set_defaults(fn=cmd_status)
    for mode, text in (
        ("accept", "as usual (with --rate-limit: at most N jobs start a rolling minute)"),
        ("pause", "jobs are taken, queued ones wait (running ones go on)"),
        ("drain", "new jobs are refused (503), queued and running ones finish"),
    ):
        m = leaf(qs, mode, f"{mode}: {text}")
        m.add_argument("queue", help="the queue (vmorch, vmorch.pool.<pool>, vmorch.noop)")
        m.add_argument("--reason", required=True, help="why (shown and audited)")
        m.add_argument("--rate-limit", type=int, metavar="N", help="jobs started a minute at most")
        m.set_defaults(fn=cmd_mode)
