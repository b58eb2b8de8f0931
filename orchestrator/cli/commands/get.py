"""`vmorch get COLLECTION`: the inventory and the rest at a glance, as tables (or --json,
the API's answer as it is)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.cli.commands import leaf
from orchestrator.cli.commands.events import EVENT_COLUMNS
from orchestrator.cli.commands.hooks import render_alerts, render_hooks
from orchestrator.cli.commands.queue import render_status
from orchestrator.cli.context import Context
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, state, table


def _maintenance(s: dict[str, Any]) -> str:
    m = s.get("maintenance")
    return f"maintenance ({m.get('reason') or 'no reason'})" if m else ""


def _items(doc: Any) -> Any:
    return doc["items"] if isinstance(doc, dict) and "items" in doc else doc


COLLECTIONS: dict[str, Callable[[Any], Any]] = {
    "vms": lambda d: table(
        _items(d),
        [
            Column("name", lambda v: v.get("name"), no_wrap=True),
            Column("id", lambda v: v.get("id"), no_wrap=True),
            Column("state", lambda v: state(v.get("state"))),
            Column("server", lambda v: v.get("server")),
            Column("pool", lambda v: v.get("pool")),
            Column("vcpus", lambda v: v.get("vcpus"), justify="right"),
            Column(
                "memory",
                lambda v: f"{v['memory_mib']} MiB" if v.get("memory_mib") else "",
                justify="right",
            ),
            Column("ha", lambda v: v.get("ha") or None),
        ],
        empty="no VMs",
    ),
    "pools": lambda d: table(
        d,
        [
            Column("pool", lambda p: p["name"], no_wrap=True),
            Column("servers", lambda p: p.get("servers")),
            Column("repository", lambda p: (p.get("repository") or {}).get("name")),
            Column("networks", lambda p: [n.get("name") for n in p.get("networks", [])]),
        ],
        empty="no pools",
    ),
    "servers": lambda d: table(
        d,
        [
            Column("server", lambda s: s["name"], no_wrap=True),
            Column("pool", lambda s: s.get("pool")),
            Column("uri", lambda s: s.get("uri")),
            Column("down for", lambda s: f"{s['down_for_s']:.0f}s" if s.get("down_for_s") else ""),
            Column("maintenance", _maintenance),
        ],
        empty="no servers",
    ),
    "templates": lambda d: table(
        d,
        [
            Column("template", lambda t: t["name"], no_wrap=True),
            Column("repository", lambda t: t.get("repository")),
            Column("vcpus", lambda t: t.get("vcpus"), justify="right"),
            Column(
                "memory",
                lambda t: f"{t['memory_mib']} MiB" if t.get("memory_mib") else "",
                justify="right",
            ),
            Column("disks", lambda t: len(t.get("disks", [])), justify="right"),
        ],
        empty="no templates",
    ),
    "repositories": lambda d: table(
        d,
        [
            Column("repository", lambda r: r["name"], no_wrap=True),
            Column("pools", lambda r: r.get("pools")),
            Column("templates", lambda r: [t["name"] for t in r.get("templates", [])]),
            Column("isos", lambda r: [i["name"] for i in r.get("isos", [])]),
            Column("disks", lambda r: len(r.get("virtual_disks", [])), justify="right"),
        ],
        empty="no repositories",
    ),
    "queue": lambda d: render_status({**d, "modes": None}),
    "hooks": render_hooks,
    "alerts": render_alerts,
    "events": lambda d: table(_items(d), EVENT_COLUMNS, empty="no events"),
}


def cmd_get(ctx: Context) -> int:
    what = ctx.args.what
    ctx.out.result(ctx.call("GET", f"/v1/{what}"), COLLECTIONS[what])
    return ExitCode.OK


def register(sub: Any) -> None:
    p = leaf(sub, "get", "GET a collection: " + ", ".join(COLLECTIONS))
    p.add_argument("what", choices=list(COLLECTIONS))
    p.set_defaults(fn=cmd_get)
