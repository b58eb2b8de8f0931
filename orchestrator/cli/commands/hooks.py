"""`vmorch hooks` (list, show, runs, retry) and `vmorch alerts` (list, ack)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.text import Text

from orchestrator.cli.commands import group, leaf
from orchestrator.cli.context import Context
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, clock, key_values, table


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _match(h: dict[str, Any]) -> str:
    m = h.get("match") or {}
    return ", ".join(m.get("types", []))


HOOK_COLUMNS = [
    Column("id", lambda h: h["id"], no_wrap=True),
    Column("name", lambda h: h.get("name")),
    Column("types", _match),
    Column("action", lambda h: (h.get("action") or {}).get("kind")),
    Column("enabled", lambda h: h.get("enabled")),
    Column("builtin", lambda h: h.get("builtin")),
    Column("window", lambda h: f"{h.get('window_s', 0):g}s", justify="right"),
    Column("suppressed", lambda h: h.get("suppressed") or "", justify="right"),
]

RUN_COLUMNS = [
    Column("run", lambda r: r.get("id"), no_wrap=True),
    Column("at", lambda r: clock(r.get("at")), no_wrap=True),
    Column("event", lambda r: r.get("event_type")),
    Column("subject", lambda r: r.get("subject")),
    Column("action", lambda r: r.get("action")),
    Column(
        "outcome",
        lambda r: Text(
            r.get("outcome", ""), style="red" if r.get("outcome") in ("failed", "refused") else ""
        ),
    ),
    Column("job", lambda r: r.get("job_id")),
    Column("retry of", lambda r: r.get("retry_of")),
    Column("detail", lambda r: r.get("detail")),
]

ALERT_COLUMNS = [
    Column("id", lambda a: a["id"], no_wrap=True),
    Column("at", lambda a: clock(a.get("at")), no_wrap=True),
    Column("type", lambda a: a.get("type")),
    Column("subject", lambda a: a.get("subject")),
    Column("message", lambda a: a.get("message")),
    Column("job", lambda a: a.get("job_id")),
    Column("acked by", lambda a: a.get("acknowledged_by")),
]


def render_hooks(hooks: list[dict[str, Any]]) -> Any:
    return table(hooks, HOOK_COLUMNS, empty="no hooks")


def render_alerts(alerts: list[dict[str, Any]]) -> Any:
    return table(alerts, ALERT_COLUMNS, empty="no alerts")


def cmd_hooks_list(ctx: Context) -> int:
    ctx.out.result(ctx.call("GET", "/v1/hooks"), render_hooks)
    return ExitCode.OK


def _hook_detail(h: dict[str, Any]) -> Any:
    return key_values(
        [
            ("hook", h["id"]),
            ("name", h.get("name")),
            ("enabled", "yes" if h.get("enabled") else "no"),
            ("builtin", "yes" if h.get("builtin") else None),
            ("created", clock(h.get("created_at"))),
            ("window", f"{h.get('window_s', 0):g}s"),
            ("suppressed", h.get("suppressed") or None),
            ("match", _compact(h.get("match"))),
            ("action", _compact(h.get("action"))),
        ]
    )


def cmd_hooks_show(ctx: Context) -> int:
    ctx.out.result(ctx.call("GET", f"/v1/hooks/{ctx.args.id}"), _hook_detail)
    return ExitCode.OK


def cmd_hooks_runs(ctx: Context) -> int:
    runs = ctx.get(f"/v1/hooks/{ctx.args.id}/runs", limit=ctx.args.limit)
    ctx.out.result(runs, lambda r: table(r, RUN_COLUMNS, empty="no runs"))
    return ExitCode.OK


def cmd_hooks_retry(ctx: Context) -> int:
    a = ctx.args
    doc = ctx.call("POST", f"/v1/hooks/{a.hook}/runs/{a.run}/retry")
    ctx.out.outcome(
        doc,
        f"run {a.run} of hook {a.hook} retried with its event; "
        f"`vmorch hooks runs {a.hook}` shows the new run",
    )
    return ExitCode.OK


def cmd_alerts_list(ctx: Context) -> int:
    ctx.out.result(ctx.get("/v1/alerts", all=ctx.args.all), render_alerts)
    return ExitCode.OK


def cmd_alerts_ack(ctx: Context) -> int:
    alert = ctx.call("POST", f"/v1/alerts/{ctx.args.id}/ack")
    ctx.out.result(
        alert, lambda a: Group(Text(f"alert {a['id']} acknowledged"), render_alerts([a]))
    )
    return ExitCode.OK


def register(sub: Any) -> None:
    hooks = group(sub, "hooks", "hooks: list, show, runs (each firing), retry a run", "hooks_cmd")
    leaf(hooks, "list", "every hook").set_defaults(fn=cmd_hooks_list)
    show = leaf(hooks, "show", "one hook: what it matches and does")
    show.add_argument("id")
    show.set_defaults(fn=cmd_hooks_show)
    runs = leaf(hooks, "runs", "a hook's firings, newest first: event, action, outcome, job")
    runs.add_argument("id")
    runs.add_argument("--limit", type=int, default=100)
    runs.set_defaults(fn=cmd_hooks_runs)
    retry = leaf(
        hooks,
        "retry",
        "run a hook's action again for one of its runs, with the run's event (admin)",
    )
    retry.add_argument("hook", help="the hook's id")
    retry.add_argument("run", help="the run's id (`vmorch hooks runs HOOK`)")
    retry.set_defaults(fn=cmd_hooks_retry)

    alerts = group(sub, "alerts", "alerts: list, acknowledge", "alerts_cmd")
    ls = leaf(alerts, "list", "alerts not yet acknowledged (--all: every alert)")
    ls.add_argument("--all", action="store_true", help="acknowledged ones too")
    ls.set_defaults(fn=cmd_alerts_list)
    ack = leaf(alerts, "ack", "acknowledge an alert")
    ack.add_argument("id")
    ack.set_defaults(fn=cmd_alerts_ack)
