"""The long-running processes (`vmorch api`, `router`, `worker`, `agent`) and `vmorch
inventory load`: they talk to Redis, not to the api."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from orchestrator.cli.commands import group, leaf
from orchestrator.cli.context import Context
from orchestrator.cli.exitcodes import ExitCode


def _run_until_signal(main: Any) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return 0


def cmd_api(ctx: Context) -> int:
    from aiohttp import web

    from orchestrator.api.app import make_app

    settings = ctx.settings
    web.run_app(
        make_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log=None,
        print=None,
    )
    return 0


def cmd_router(ctx: Context) -> int:
    from orchestrator.router.run import run_router

    return _run_until_signal(lambda stop: run_router(ctx.settings, stop))


def cmd_worker(ctx: Context) -> int:
    from workers.worker import run_worker

    a = ctx.args
    run_worker(ctx.settings, pools=a.pool or None, concurrency=a.concurrency, noop=a.noop)
    return 0


def cmd_agent(ctx: Context) -> int:
    from workers.agent.agent import run_agent

    return _run_until_signal(lambda stop: run_agent(ctx.settings, ctx.args.server, stop))


def cmd_inventory(ctx: Context) -> int:
    from schemas.inventory import Inventory

    inv = Inventory.model_validate_json(Path(ctx.args.file).read_text())
    ctx.redis(lambda svc: svc.inventory.load(inv))
    doc = {"pools": len(inv.pools), "servers": len(inv.servers), "templates": len(inv.templates)}
    ctx.out.result(
        doc,
        lambda d: f"loaded {d['pools']} pools, {d['servers']} servers, {d['templates']} templates",
    )
    return ExitCode.OK


def register(sub: Any) -> None:
    sub.add_parser("api", help="serve the HTTP API").set_defaults(fn=cmd_api)
    sub.add_parser("router", help="run the router").set_defaults(fn=cmd_router)
    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("--pool", action="append", help="consume this pool's queue (repeatable)")
    w.add_argument("-c", "--concurrency", type=int, default=None)
    w.add_argument(
        "--noop",
        choices=["no", "also", "only"],
        default="no",
        help="consume the queue of noop jobs (engine drills, benchmarks): no, also, only",
    )
    w.set_defaults(fn=cmd_worker)
    a = sub.add_parser("agent", help="run the agent of one server")
    a.add_argument("--server", required=True)
    a.set_defaults(fn=cmd_agent)

    inv = group(sub, "inventory", "load an inventory file (pools, servers, templates)", "inv_cmd")
    load = leaf(inv, "load", "load an inventory file (on Redis: VMORCH_REDIS_URL)")
    load.add_argument("file")
    load.set_defaults(fn=cmd_inventory)
