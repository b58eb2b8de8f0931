"""`vmorch`: run the processes, manage tokens and inventory, submit and watch jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.settings import Settings


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def _run_until_signal(main: Any) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return 0


def cmd_api(settings: Settings, _: argparse.Namespace) -> int:
    from aiohttp import web

    from orchestrator.api.app import make_app

    web.run_app(
        make_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log=None,
        print=None,
    )
    return 0


def cmd_router(settings: Settings, _: argparse.Namespace) -> int:
    from orchestrator.router.run import run_router

    return _run_until_signal(lambda stop: run_router(settings, stop))


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    run_worker(settings, pools=args.pool or None, concurrency=args.concurrency, noop=args.noop)
    return 0


def cmd_agent(settings: Settings, args: argparse.Namespace) -> int:
    from workers.agent.agent import run_agent

    return _run_until_signal(lambda stop: run_agent(settings, args.server, stop))


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.lab.lab import LabSpec
    from orchestrator.lab.stack import up

    spec = LabSpec(
        pools=args.pools,
        servers_per_pool=args.servers_per_pool,
        kind=args.kind,
        guest_image=args.kind == "qemu" and not args.no_guest_image,
    )
    return up(settings, spec, args.port, keep_state=args.keep_state)


def cmd_down(settings: Settings, _: argparse.Namespace) -> int:
    from orchestrator.lab.stack import down

    return down(settings)


def _redis_call(settings: Settings, fn: Any) -> Any:
    """Run `fn(services)` against Redis (the commands that need no api)."""
    from orchestrator.services import Services, connect

    async def main() -> Any:
        r = connect(settings)
        try:
            return await fn(Services.build(settings, r))
        finally:
            await r.aclose()

    return asyncio.run(main())


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.api import Role

    if args.token_cmd == "create":
        token, info = _redis_call(
            settings, lambda svc: svc.tokens.create(args.name, Role(args.role))
        )
        print(json.dumps({"token": token, **info.model_dump(mode="json")}, indent=2))
    elif args.token_cmd == "list":
        infos = _redis_call(settings, lambda svc: svc.tokens.list())
        print(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
    else:
        _redis_call(settings, lambda svc: svc.tokens.revoke(args.id))
        print(f"revoked {args.id}")
    return 0


def cmd_inventory(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.inventory import Inventory

    inv = Inventory.model_validate_json(Path(args.file).read_text())
    _redis_call(settings, lambda svc: svc.inventory.load(inv))
    print(
        f"loaded {len(inv.pools)} pools, {len(inv.servers)} servers, {len(inv.templates)} templates"
    )
    return 0


def _watch(client: Any, job_id: str) -> dict[str, Any]:
    last = ""
    while True:
        job: dict[str, Any] = client.call("GET", f"/v1/jobs/{job_id}")
        steps = " ".join(f"{s['name']}:{s['state']}" for s in job["steps"])
        line = f"{job['state']:<9} {job['progress'] * 100:5.1f}%  {steps}"
        if line != last:
            print(line, flush=True)
            last = line
        if job["state"] in ("succeeded", "failed", "aborted"):
            return job
        time.sleep(0.3)


def _client(settings: Settings, args: argparse.Namespace) -> Any:
    from orchestrator.cli.client import Client

    api, token = args.api or settings.api_url, args.token or settings.token
    return Client(api, token, settings.lab_dir.resolve())


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.cli.client import ApiError

    client = _client(settings, args)
    try:
        if args.jobs_cmd == "submit":
            raw = sys.stdin.read() if args.request == "-" else args.request
            if not raw.lstrip().startswith("{"):
                raw = Path(raw).read_text()
            headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
            job = client.call("POST", "/v1/jobs", json.loads(raw), headers)
            print(job["id"] if args.wait else json.dumps(job, indent=2), flush=True)
            if args.wait:
                job = _watch(client, job["id"])
                return 0 if job["state"] == "succeeded" else 1
        elif args.jobs_cmd == "list":
            q = "&".join(
                f"{k}={v}" for k in ("state", "kind", "vm") if (v := getattr(args, k)) is not None
            )
            page = client.call("GET", f"/v1/jobs?{q}")
            for j in page["items"]:
                print(
                    f"{j['id']}  {j['kind']:<24} {j['state']:<9} {j['progress'] * 100:5.1f}%  "
                    f"{j['links'].get('vm_name') or ''}"
                )
        elif args.jobs_cmd == "show":
            print(json.dumps(client.call("GET", f"/v1/jobs/{args.id}"), indent=2))
        elif args.jobs_cmd == "watch":
            job = _watch(client, args.id)
            return 0 if job["state"] == "succeeded" else 1
        elif args.jobs_cmd == "abort":
            print(json.dumps(client.call("POST", f"/v1/jobs/{args.id}/abort"), indent=2))
    except ApiError as e:
        print(json.dumps(e.body, indent=2), file=sys.stderr)
        return 2
    return 0


def cmd_get(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.cli.client import ApiError

    client = _client(settings, args)
    try:
        print(json.dumps(client.call("GET", f"/v1/{args.what}"), indent=2))
    except ApiError as e:
        print(json.dumps(e.body, indent=2), file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmorch", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start Redis, the lab, api, worker, router and agents")
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
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop what `vmorch up` started").set_defaults(fn=cmd_down)
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

    t = sub.add_parser("token", help="create, list and revoke API tokens")
    tsub = t.add_subparsers(dest="token_cmd", required=True)
    tc = tsub.add_parser("create")
    tc.add_argument("--name", required=True)
    tc.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    tsub.add_parser("list")
    tr = tsub.add_parser("revoke")
    tr.add_argument("id")
    t.set_defaults(fn=cmd_token)

    inv = sub.add_parser("inventory", help="load an inventory file (pools, servers, templates)")
    isub = inv.add_subparsers(dest="inv_cmd", required=True)
    isub.add_parser("load").add_argument("file")
    inv.set_defaults(fn=cmd_inventory)

    for name, fn in (("jobs", cmd_jobs), ("get", cmd_get)):
        sp = sub.add_parser(
            name,
            help="submit, list, show, watch, abort jobs"
            if name == "jobs"
            else "GET a collection: vms, pools, servers, templates, queue",
        )
        sp.add_argument("--api", default=None)
        sp.add_argument("--token", default=None)
        sp.set_defaults(fn=fn)
        if name == "get":
            sp.add_argument(
                "what",
                choices=[
                    "vms",
                    "pools",
                    "servers",
                    "templates",
                    "queue",
                    "hooks",
                    "alerts",
                    "events",
                ],
            )
            continue
        jsub = sp.add_subparsers(dest="jobs_cmd", required=True)
        js = jsub.add_parser("submit")
        js.add_argument("request", help="JSON, a file, or - for stdin")
        js.add_argument("--wait", action="store_true", help="show live progress until it ends")
        js.add_argument("--idempotency-key", default=None)
        jl = jsub.add_parser("list")
        for f in ("state", "kind", "vm"):
            jl.add_argument(f"--{f}", default=None)
        for c in ("show", "watch", "abort"):
            jsub.add_parser(c).add_argument("id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    _setup_logging(settings)
    rc: int = args.fn(settings, args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
