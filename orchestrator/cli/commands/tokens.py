"""`vmorch tokens` (alias `token`): create, list and revoke API tokens on Redis directly,
so that the first token can be made before any exists. Each change is written to the audit
trail as the api's own token routes would record it (token id `local`)."""

from __future__ import annotations

import getpass
import uuid
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from orchestrator.cli.commands import group, leaf
from orchestrator.cli.context import Context
from orchestrator.cli.durations import duration_arg
from orchestrator.cli.exitcodes import CliError, ExitCode
from orchestrator.cli.output import Column, clock, expiry, table
from orchestrator.errors import NotFound
from schemas.api import Role
from schemas.audit import AuditRecord
from schemas.base import utcnow

if TYPE_CHECKING:
    from orchestrator.services import Services

TOKEN_COLUMNS = [
    Column("id", lambda t: t["id"], no_wrap=True),
    Column("name", lambda t: t.get("name")),
    Column("role", lambda t: t.get("role")),
    Column("created", lambda t: clock(t.get("created_at"))),
    Column("expires", lambda t: expiry(t.get("expires_at"))),
]


async def _audit(svc: Services, action: str, status: int, target: str) -> None:
    await svc.audit.record(
        AuditRecord(
            at=utcnow(),
            token_id="local",
            token_name=f"local:{getpass.getuser()}",
            role=Role.ADMIN.value,
            request_id=uuid.uuid4().hex,
            action=action,
            status=status,
            target=target,
        )
    )


def cmd_create(ctx: Context) -> int:
    a = ctx.args

    async def create(svc: Services) -> dict[str, Any]:
        try:
            token, info = await svc.tokens.create(a.name, Role(a.role), expires_in=a.expires_in)
        except ValueError as e:  # a name that is not one, a life under a second
            raise CliError(
                ExitCode.REFUSED, f"token not created: {e}", error_code="validation_error"
            ) from None
        await _audit(svc, "tokens.create", 201, info.id)
        return {"token": token, **info.model_dump(mode="json")}

    doc = ctx.redis(create)
    ctx.out.result(
        doc,
        lambda d: Group(
            Text.assemble(("token: ", "bold"), d["token"]),
            Text("shown this once: keep it (only its SHA-256 is stored)", style="dim"),
            table([d], TOKEN_COLUMNS),
        ),
    )
    return ExitCode.OK


def cmd_list(ctx: Context) -> int:
    infos = ctx.redis(lambda svc: svc.tokens.list())
    docs = sorted((i.model_dump(mode="json") for i in infos), key=lambda d: d["created_at"])
    ctx.out.result(docs, lambda d: table(d, TOKEN_COLUMNS, empty="no tokens"))
    return ExitCode.OK


def cmd_revoke(ctx: Context) -> int:
    token_id = ctx.args.id

    async def revoke(svc: Services) -> bool:
        try:
            await svc.tokens.revoke(token_id)
        except NotFound:
            await _audit(svc, "tokens.delete", 404, token_id)
            return False
        await _audit(svc, "tokens.delete", 204, token_id)
        return True

    if not ctx.redis(revoke):
        raise CliError(ExitCode.REFUSED, f"token {token_id!r} not found", error_code="not_found")
    ctx.out.result({"revoked": token_id}, lambda _: Text(f"revoked {token_id}"))
    return ExitCode.OK


def register(sub: Any) -> None:
    tokens = group(
        sub,
        "tokens",
        "create, list and revoke API tokens (on Redis: VMORCH_REDIS_URL, else the running lab's)",
        "token_cmd",
        aliases=["token"],
    )
    c = leaf(tokens, "create", "a new token, shown once")
    c.add_argument("--name", required=True)
    c.add_argument("--role", required=True, choices=[r.value for r in Role])
    c.add_argument(
        "--expires-in",
        type=duration_arg,
        metavar="DURATION",
        help="it stops working after this long: 90s, 30m, 12h, 7d (default: never)",
    )
    c.set_defaults(fn=cmd_create)
    leaf(tokens, "list", "every token (never the secrets)").set_defaults(fn=cmd_list)
    r = leaf(tokens, "revoke", "revoke a token: it stops working at once, its streams end")
    r.add_argument("id")
    r.set_defaults(fn=cmd_revoke)
