"""`vmorch audit` (who wrote what, admins) and `vmorch whoami`."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from orchestrator.cli.commands import leaf
from orchestrator.cli.context import Context
from orchestrator.cli.credentials import ROLE_ORDER
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, clock, expiry, key_values, page, table

AUDIT_COLUMNS = [
    Column("at", lambda r: clock(r.get("at")), no_wrap=True),
    Column("token", lambda r: r.get("token_name")),
    Column("role", lambda r: r.get("role")),
    Column("action", lambda r: r.get("action"), no_wrap=True),
    Column(
        "status",
        lambda r: Text(str(r.get("status", "")), style="red" if r.get("status", 0) >= 400 else ""),
        justify="right",
    ),
    Column("target", lambda r: r.get("target")),
    Column("reason", lambda r: r.get("reason")),
    Column("request", lambda r: r.get("request_id")),
]


def cmd_audit(ctx: Context) -> int:
    a = ctx.args
    found = ctx.get(
        "/v1/audit",
        token_name=a.token_name,
        action=a.action,
        target=a.target,
        limit=a.limit,
        cursor=a.cursor,
    )

    ctx.out.result(
        found, lambda p: page(table(p["items"], AUDIT_COLUMNS, empty="nothing recorded"),
                              "--cursor", p.get("next_cursor"))
    )  # fmt: skip
    return ExitCode.OK


WHOAMI_COLUMNS = [
    Column("known as", lambda m: m.get("known_as")),
    Column("token", lambda m: m.get("name")),
    Column("id", lambda m: m.get("id")),
    Column("role", lambda m: m.get("role")),
    Column("created", lambda m: clock(m.get("created_at"))),
    Column("expires", lambda m: expiry(m.get("expires_at"))),
]


def cmd_whoami(ctx: Context) -> int:
    """The token reads use; --all: each token the CLI knows (how it picks one per call)."""
    if not ctx.args.all:
        me = ctx.call("GET", "/v1/whoami")
        ctx.out.result(
            me,
            lambda m: key_values(
                [
                    ("token", m.get("name")),
                    ("id", m.get("id")),
                    ("role", m.get("role")),
                    ("created", clock(m.get("created_at"))),
                    ("expires", expiry(m.get("expires_at"))),
                ]
            ),
        )
        return ExitCode.OK
    creds = ctx.client.credentials
    known = [("--token", creds.fixed)] if creds.fixed else []
    known += [(r.value, creds.by_role[r]) for r in ROLE_ORDER if r in creds.by_role]
    rows = []
    for label, token in known:
        status, me = ctx.client.request("GET", "/v1/whoami", token=token)
        rows.append({"known_as": label, **(me if status == 200 else {"error": me})})
    ctx.out.result(rows, lambda r: table(r, WHOAMI_COLUMNS, empty="no token known"))
    return ExitCode.OK


def register(sub: Any) -> None:
    p = leaf(
        sub,
        "audit",
        "the audit trail, newest first: every write with its token, "
        "request id, outcome and reason (admin)",
    )
    p.add_argument("--token-name", help="only this token's writes")
    p.add_argument("--action", metavar="GLOB", help="action, a glob: 'jobs.*', queues.put")
    p.add_argument("--target", help="the object acted on (a job id, hook id, queue)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.set_defaults(fn=cmd_audit)
    w = leaf(sub, "whoami", "the token the CLI uses for reads: its name, role and expiry")
    w.add_argument("--all", action="store_true", help="every token the CLI knows, by role")
    w.set_defaults(fn=cmd_whoami)
