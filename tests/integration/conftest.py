"""Integration fixtures on real parts: a private redis-server, the lab's libvirtd servers,
the api and router as processes, and real Celery worker processes (started per test)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis
import redis.asyncio as aredis

from orchestrator.cli.client import Client
from orchestrator.lab.lab import Lab
from orchestrator.lab.process import free_port, signal_group, spawn, stop_groups
from orchestrator.lab.redis_server import RedisServer
from orchestrator.router.consumer import EventConsumer
from orchestrator.secrets import Sealer
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import jobdoc, keys
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.tokens import TokenStore
from schemas.api import Role
from schemas.inventory import Inventory

TERMINAL = {"succeeded", "failed", "aborted"}
ENGINE_ENV = {
    "VMORCH_LEASE_MS": "3000",
    "VMORCH_SWEEP_INTERVAL_S": "0.3",
    "VMORCH_REDISPATCH_AFTER_S": "5",
    "VMORCH_RETRY_BASE_S": "0.1",
    "VMORCH_CLAIM_IDLE_MS": "1000",
    "VMORCH_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
    "VMORCH_IMPORT_ALLOWED_HOSTS": '["127.0.0.1"]',
    "VMORCH_HA_RELOCATE_AFTER_S": "2",
    "VMORCH_AGENT_FACTS_INTERVAL_S": "0.5",
    # shared by the api (seals secret values for guests) and the agents (open them)
    "VMORCH_GUEST_SECRET_KEY": Sealer.new_key(),
}


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.02)


class Proc:
    """A vmorch process (api, router, worker, agent) started and stopped with the lab's own
    process helper: its own session, a log, stopped by its PID (with its process group)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.p = spawn([sys.executable, "-m", "orchestrator.cli", *args], log, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker and its pool children)."""
        signal_group(self.p, sig)

    def stop(self) -> None:
        stop_groups([self.p], 15)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vmorch-it-"))
    yield d


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """Our private Redis, password-protected as `vmorch up`'s is: every client in the suite
    (redis-py, Celery's broker, kombu) must take its credentials from its URL."""
    server = RedisServer(workdir / "redis", appendonly=False, require_password=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def lab() -> Iterator[tuple[Lab, Inventory]]:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    lab = Lab()
    inv = lab.start()
    yield lab, inv
    lab.remove()


@pytest.fixture(scope="session")
def env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "VMORCH_REDIS_URL": redis_url, **ENGINE_ENV}


def start_api(env: dict[str, str], log: Path) -> tuple[str, Proc]:
    """A `vmorch api` process on a free port, once it answers /healthz ."""
    port = free_port("127.0.0.1")
    proc = Proc(["api"], {**env, "VMORCH_API_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return True
        except OSError:
            assert proc.p.poll() is None, proc.output()
            return False

    wait_until(up, 30, f"api ({log.name})")
    return url, proc


@pytest.fixture(scope="session")
def api_url(env: dict[str, str], workdir: Path, lab: Any) -> Iterator[str]:
    url, proc = start_api(env, workdir / "api.log")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def agents(
    env: dict[str, str], workdir: Path, lab: tuple[Lab, Inventory], redis_url: str
) -> Iterator[dict[str, Proc]]:
    """One agent process per lab server, for the whole session."""

    async def load() -> None:
        ar = aredis.Redis.from_url(redis_url, decode_responses=True)
        await InventoryStore(ar).load(lab[1])
        await ar.aclose()

    asyncio.run(load())
    procs = {
        s.name: Proc(["agent", "--server", s.name], env, workdir / f"agent-{s.name}.log")
        for s in lab[1].servers
    }

    def up(name: str) -> bool:
        assert procs[name].p.poll() is None, procs[name].output()
        return bool(events(redis_url, "server.up", name))

    for name in procs:
        wait_until(lambda name=name: up(name), 30, f"agent {name} to connect")
    yield procs
    for p in procs.values():
        p.stop()


def events(
    redis_url: str, type_: str | None = None, subject: str | None = None
) -> list[dict[str, Any]]:
    """The events on the stream, decoded, of `type_` and about `subject` if given."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        out = [json.loads(f["e"]) for _, f in r.xrange(keys.EVENTS)]
    finally:
        r.close()
    return [
        e
        for e in out
        if (type_ is None or e["type"] == type_)
        and (subject is None or e.get("subject") == subject)
    ]


@pytest.fixture(scope="session")
def router(env: dict[str, str], workdir: Path) -> Iterator[Proc]:
    proc = Proc(["router"], env, workdir / "router.log")
    yield proc
    proc.stop()


def _clean_lab(lab: Lab, inv: Inventory) -> None:
    """Remove every domain and every non-template volume from the lab's running servers."""
    template_volumes = {d.volume for t in inv.templates for d in t.disks}
    for s in inv.servers:
        if s.name not in lab.keepers:  # killed by a test and not restarted
            continue
        conn = libvirt.open(s.uri)
        for dom in conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        for sp in conn.listAllStoragePools():
            for vol in sp.listAllVolumes():
                if vol.name() not in template_volumes:
                    vol.delete(0)
        conn.close()


@pytest.fixture
def fleet(redis_url: str, lab: tuple[Lab, Inventory], router: Proc) -> Iterator[Inventory]:
    """A clean fleet: our private Redis flushed and reloaded, the lab's servers emptied."""
    # Forget the last test's fleet before emptying the servers, so that destroying its HA
    # VMs does not set HA to work (the VMs are unknown by then); empty Redis again after.
    r = redis.Redis.from_url(redis_url)
    r.flushall()  # our own private server, started by this session
    _clean_lab(*lab)
    r.flushall()
    r.close()

    async def load() -> None:
        settings = Settings(redis_url=redis_url)
        ar = connect(settings)
        services = Services.build(settings, ar)
        await services.inventory.load(lab[1])
        # the routers' group, from the start of the new stream, and the built-in HA hook
        await EventConsumer(services).setup(from_start=True)
        await ar.aclose()

    asyncio.run(load())
    yield lab[1]


def make_token(redis_url: str, role: Role, name: str = "") -> str:
    async def create() -> str:
        ar = aredis.Redis.from_url(redis_url, decode_responses=True)
        token, _ = await TokenStore(ar).create(name or role.value, role)
        await ar.aclose()
        return token

    return asyncio.run(create())


class Api(Client):
    """The API over HTTP, as a client sees it: the CLI's own client, with waits."""

    def __init__(self, url: str, token: str):
        super().__init__(url, token)
        self.url = url

    def submit(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        status, job = self.request("POST", "/v1/jobs", body, **kw)
        assert status == 202, job
        return dict(job)

    def job(self, job_id: str) -> dict[str, Any]:
        status, job = self.request("GET", f"/v1/jobs/{job_id}")
        assert status == 200, job
        return dict(job)

    def wait(
        self, job_id: str, states: set[str] | None = None, timeout_s: float = 60
    ) -> dict[str, Any]:
        want = states or TERMINAL

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in want else None

        return dict(wait_until(reached, timeout_s, f"job {job_id} to reach {want}"))

    def run(self, body: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        return self.wait(self.submit(body)["id"], timeout_s=timeout_s)

    def hook_runs(self, hook_id: str) -> list[dict[str, Any]]:
        """A hook's runs, newest first."""
        status, body = self.request("GET", f"/v1/hooks/{hook_id}/runs")
        assert status == 200, body
        return list(body)

    def audit(self, **query: str) -> list[dict[str, Any]]:
        """The audit trail's newest records (`GET /v1/audit` with these filters)."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        status, page = self.request("GET", f"/v1/audit?{q}")
        assert status == 200, page
        return list(page["items"])


@pytest.fixture
def api(api_url: str, redis_url: str, fleet: Inventory) -> Api:
    return Api(api_url, make_token(redis_url, Role.ADMIN))


@pytest.fixture
def start_worker(
    env: dict[str, str], workdir: Path, fleet: Inventory
) -> Iterator[Callable[..., Proc]]:
    """Start a real Celery worker process (`vmorch worker`), with extra settings if asked."""
    procs: list[Proc] = []

    def start(concurrency: int = 2, **settings: str) -> Proc:
        extra = {f"VMORCH_{k.upper()}": v for k, v in settings.items()}
        log = workdir / f"worker-{len(procs)}-{time.time_ns()}.log"
        proc = Proc(["worker", "-c", str(concurrency), "--noop", "also"], {**env, **extra}, log)
        procs.append(proc)

        def ready() -> bool:
            assert proc.p.poll() is None, proc.output()
            return " ready." in proc.output()

        wait_until(ready, 30, "celery worker")
        return proc

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def worker(start_worker: Callable[..., Proc]) -> Proc:
    return start_worker()


def hv(inv: Inventory, server: str) -> libvirt.virConnect:
    uri = next(s.uri for s in inv.servers if s.name == server)
    return libvirt.open(uri)


def find_domains(inv: Inventory, name: str) -> list[tuple[str, libvirt.virDomain]]:
    """Every (server, domain) named `name` across the lab."""
    found = []
    for s in inv.servers:
        conn = libvirt.open(s.uri)
        for d in conn.listAllDomains():
            if d.name() == name:
                found.append((s.name, d))
    return found


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1, served from a thread of the test process; it
    answers each POST to /hook after `delay_s` and keeps (headers, body) of each."""

    def __init__(self, delay_s: float = 0.0) -> None:
        import threading

        from aiohttp import web

        self.delay_s = delay_s
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        ready = threading.Event()

        async def hook(request: web.Request) -> web.Response:
            self.got.append((dict(request.headers), await request.read()))
            await asyncio.sleep(self.delay_s)
            return web.Response(status=204)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(start())
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)

    @property
    def deliveries(self) -> list[str]:
        return [h["X-Vmorch-Delivery"] for h, _ in self.got]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Any]:
    """Start `vmorch up` with flags (`tests.integration.upkit.Up`); all stopped at the end."""
    from tests.integration.upkit import Up

    started: list[Up] = []

    def start(*flags: str, umask: int = 0o022, env: dict[str, str] | None = None) -> Up:
        started.append(Up(tmp_path / "lab", *flags, umask=umask, env=env))
        return started[-1]

    yield start
    for up in started:
        up.close()


def redis_holding(url: str, needle: str) -> list[str]:
    """Keys of our private Redis whose value holds `needle` (job documents inflated)."""
    r = redis.Redis.from_url(url, decode_responses=True)
    found = []
    for key in r.scan_iter(count=1000):
        t = r.type(key)
        vals: list[str] = []
        if t == "string":
            vals = [r.get(key) or ""]
        elif t == "hash":
            vals = [f"{k}={v}" for k, v in r.hgetall(key).items()]
            vals += [jobdoc.decode_json(v) for v in r.hvals(key) if v.startswith(jobdoc.PREFIX)]
        elif t == "list":
            vals = r.lrange(key, 0, -1)
        elif t == "set":
            vals = list(r.smembers(key))
        elif t == "zset":
            vals = list(r.zrange(key, 0, -1))
        elif t == "stream":
            vals = [json.dumps(f) for _, f in r.xrange(key)]
        if any(needle in v for v in vals):
            found.append(key)
    r.close()
    return found
