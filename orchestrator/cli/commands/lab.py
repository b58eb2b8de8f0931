"""`vmorch lab up|down|status` (and `vmorch up`, `vmorch down`): the embedded default on
one machine. `status` reads the details file `vmorch up` writes, checks the PIDs recorded
there and the api's health, and says what runs where."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Group
from rich.text import Text

from orchestrator.cli.client import ApiError, Client
from orchestrator.cli.commands import group, leaf
from orchestrator.cli.context import Context, redact_url
from orchestrator.cli.exitcodes import ExitCode
from orchestrator.cli.output import Column, key_values, state, table
from orchestrator.lab.process import pid_running

HEALTH_TIMEOUT_S = 3.0


def cmd_up(ctx: Context) -> int:
    from orchestrator.lab.lab import LabSpec
    from orchestrator.lab.stack import up

    a = ctx.args
    spec = LabSpec(
        pools=a.pools,
        servers_per_pool=a.servers_per_pool,
        kind=a.kind,
        guest_image=a.kind == "qemu" and not a.no_guest_image,
    )
    return up(ctx.settings, spec, a.port, keep_state=a.keep_state, quiet=a.quiet)


def cmd_down(ctx: Context) -> int:
    from orchestrator.lab.stack import down

    return down(ctx.settings)


def _health(api_url: str | None) -> str:
    """The lab's own api (not --api's): does it answer /healthz?"""
    if not api_url:
        return "unknown"
    try:
        status, _ = Client(api_url, "").request("GET", "/healthz", timeout_s=HEALTH_TIMEOUT_S)
    except ApiError as e:
        return f"unreachable: {e.body['error']['message']}"
    return "ok" if status == 200 else f"unhealthy (HTTP {status})"


def lab_status(ctx: Context) -> dict[str, Any]:
    """The lab as its details file describes it, with what is alive now."""
    st = ctx.details
    if not st:
        return {"running": False, "details": str(ctx.settings.lab_dir.resolve() / "vmorch.json")}
    up_pid = st.get("pid")
    processes = [
        {"name": name, "pid": pid, "alive": isinstance(pid, int) and pid_running(pid)}
        for name, pid in sorted((st.get("processes") or {}).items())
    ]
    health = _health(st.get("api_url"))
    alive = isinstance(up_pid, int) and pid_running(up_pid)
    return {
        "running": alive,
        "healthy": alive and health == "ok" and all(p["alive"] for p in processes),
        "pid": up_pid,
        "api_url": st.get("api_url"),
        "api_health": health,
        "redis_url": redact_url(str(st.get("redis_url", ""))),
        "lab_dir": st.get("lab_dir"),
        "processes": processes,
        "servers": st.get("servers", []),
        "pools": st.get("pools", []),
        "templates": st.get("templates", []),
        "tokens": sorted(st.get("tokens") or {}) or (["admin"] if st.get("admin_token") else []),
    }


def _alive(flag: bool) -> Text:
    return state("alive" if flag else "dead")


def render_status(doc: dict[str, Any]) -> Any:
    if not doc.get("running") and "processes" not in doc:
        return Text(f"vmorch is not running (no {doc['details']})", style="yellow")
    head = key_values(
        [
            ("vmorch up", Text.assemble(f"pid {doc['pid']} ", _alive(doc["running"]))),
            ("api", f"{doc['api_url']}  {doc['api_health']}"),
            ("redis", doc["redis_url"]),
            ("lab dir", doc["lab_dir"]),
            ("pools", doc["pools"]),
            ("templates", doc["templates"]),
            ("tokens", ", ".join(doc["tokens"]) + " (in the details file)"),
        ]
    )
    procs = table(
        doc["processes"],
        [
            Column("process", lambda p: p["name"], no_wrap=True),
            Column("pid", lambda p: p["pid"], justify="right"),
            Column("state", lambda p: _alive(p["alive"])),
        ],
        title="processes",
    )
    servers = table(
        doc["servers"],
        [
            Column("server", lambda s: s["name"], no_wrap=True),
            Column("pool", lambda s: s.get("pool")),
            Column("libvirt uri", lambda s: s.get("uri")),
        ],
        title="servers",
    )
    verdict = (
        Text("healthy", style="green")
        if doc["healthy"]
        else Text("not healthy: see above", style="bold red")
    )
    return Group(head, Text(""), procs, Text(""), servers, Text(""), verdict)


def cmd_status(ctx: Context) -> int:
    doc = lab_status(ctx)
    ctx.out.result(doc, render_status)
    return ExitCode.OK if doc.get("healthy") else ExitCode.FAILED


def add_up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument("--pools", type=int, default=2)
    up.add_argument("--servers-per-pool", type=int, default=2)
    up.add_argument(
        "--kind",
        choices=["test", "qemu"],
        default="test",
        help="test: libvirt's test driver (fast, no guests run); qemu: real QEMU guests "
        "(TCG), installed by `scripts/install --qemu`",
    )
    up.add_argument(
        "--no-guest-image",
        action="store_true",
        help="qemu: do not build the guest image (Debian's kernel and vmorch's guest "
        "program, from Debian packages, cached in /var/cache/vmorch) behind tmpl-guest",
    )
    up.add_argument("--port", type=int, default=None, help="API port (default 8080, or a free one)")
    up.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the last run's Redis data (jobs, tokens, VMs, hooks); by default each "
        "`vmorch up` starts fresh, as the lab's hypervisors do",
    )
    up.add_argument(
        "--quiet",
        action="store_true",
        help="do not print the admin token (it is in the details file, mode 0600)",
    )


UP_HELP = "start Redis, the lab, api, worker, router and agents"
DOWN_HELP = "stop what `vmorch up` started"


def register(sub: Any) -> None:
    for parent in (sub, group(sub, "lab", "the lab on this machine: up, down, status", "lab_cmd")):
        up = parent.add_parser("up", help=UP_HELP, description=UP_HELP)
        add_up_arguments(up)
        up.set_defaults(fn=cmd_up)
        parent.add_parser("down", help=DOWN_HELP, description=DOWN_HELP).set_defaults(fn=cmd_down)
        if parent is not sub:
            leaf(
                parent,
                "status",
                "the lab's servers, URLs and processes, and whether each is "
                "alive (exit 1 when not running or something is down)",
            ).set_defaults(fn=cmd_status)
