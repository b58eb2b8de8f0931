"""The inventory over HTTP: VMs (with their operation queues), pools, servers, templates."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import (
    Conflict,
    NotFound,
    ValidationFailed,
)
from orchestrator.jobs.checks import assess
from schemas.api import (
    FenceAck,
    FenceRecord,
    MigrationTarget,
    MigrationTargets,
    Page,
    ServerRegistered,
    ServerRegistration,
    ServerView,
    VmView,
)
from schemas.base import utcnow
from schemas.event_types import SOURCE_API
from schemas.inventory import (
    Server,
    Vm,
    VmState,
)
from schemas.requests import DiscoverServer


async def list_vms(request: web.Request) -> web.Response:
    q = params(request)
    try:
        vms, nxt = await services(request).inventory.vms(
            limit=q["limit"], after=q["cursor"] or None
        )
    except NotFound as e:
        raise ValidationFailed(e.message, details=[(["query", "cursor"], e.message)]) from None
    return respond(Page[Vm](items=vms, next_cursor=nxt))


async def get_vm(request: web.Request) -> web.Response:
    svc = services(request)
    vm = await svc.inventory.vm(request.match_info["vm"])
    ops = await svc.jobs.vm_queue(vm.id)
    return respond(VmView(**vm.model_dump(), operations=ops))


async def list_pools(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.pools())


async def _views(request: web.Request, servers: list[Server]) -> list[ServerView]:
    svc = services(request)
    names = [s.name for s in servers]
    facts = await svc.servers.facts(names)
    out = []
    for s in servers:
        out.append(
            ServerView(
                **s.model_dump(),
                maintenance=await svc.servers.maintenance(s.name),
                down_for_s=round(await svc.ha.server_down_for_s(s.name), 1),
                facts=facts.get(s.name),
            )
        )
    return out


async def list_servers(request: web.Request) -> web.Response:
    return respond_list(await _views(request, await services(request).inventory.servers()))


async def get_server(request: web.Request) -> web.Response:
    server = await services(request).inventory.server(request.match_info["server"])
    [view] = await _views(request, [server])
    return respond(view)


async def migration_targets(request: web.Request) -> web.Response:
    """Every server of the VM's pool with why it can or cannot take the VM, judged by the
    migration's own checks on the facts the agents recorded. `live` defaults to whether
    the VM runs; a pinned VM is judged as a request without a pinning would be."""
    svc = services(request)
    vm = await svc.inventory.vm(request.match_info["vm"])
    pool = await svc.inventory.pool(vm.pool)
    q = params(request)
    live = q["live"] if q["live"] is not None else vm.state in (VmState.RUNNING, VmState.SUSPENDED)
    facts = await svc.servers.facts(pool.servers)
    maintenance = await svc.servers.in_maintenance(pool.servers)
    now = utcnow()
    targets = []
    for name in pool.servers:
        f = facts.get(name)
        down = await svc.ha.server_down_for_s(name)
        unreachable = f"its agent finds it unreachable for {down:.0f} s" if down else None
        if f is None and unreachable is None:
            unreachable = "no facts recorded (no agent watches it)"
        there: set[str] = set()
        if any(vm.name in g.vms for g in pool.anti_affinity_groups):
            there = {v.name for v in await svc.inventory.vms_on(name)}
        v = assess(
            vm, pool, name, f, live=live, maintenance=name in maintenance,
            unreachable=unreachable, vms_there=there,
        )  # fmt: skip
        age = (now - f.observed_at).total_seconds() if f and f.observed_at else None
        targets.append(
            MigrationTarget(
                server=name, ok=v.ok, reason=v.reason,
                facts_age_s=None if age is None else round(age, 1),
            )
        )  # fmt: skip
    return respond(MigrationTargets(vm=vm.id, server=vm.server, live=live, targets=targets))


LIBVIRT_DRIVERS = {"qemu", "test", "xen", "lxc", "ch"}
LIBVIRT_TRANSPORTS = {"", "ssh", "libssh", "libssh2", "tls", "tcp", "unix"}
# URI parameters a server may carry; others (`command`, `netcat`: programs to run) are
# refused, so a registration cannot make workers run something of its choosing
LIBVIRT_PARAMS = {"socket", "no_verify", "pkipath", "known_hosts", "known_hosts_verify",
                  "sshauth", "mode", "name", "keyfile", "no_tty"}  # fmt: skip


def _uri_problem(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as e:
        return f"not a URI ({e})"
    driver, _, transport = parts.scheme.partition("+")
    if driver not in LIBVIRT_DRIVERS or transport not in LIBVIRT_TRANSPORTS:
        return f"{parts.scheme!r} is not a libvirt driver[+transport] vmorch uses"
    if driver == "test" and parts.path != "/default":
        # the test driver reads the file its path names, on the worker
        return "a test-driver server is test[+unix]:///default"
    bad = sorted({k for k, _ in query} - LIBVIRT_PARAMS)
    if bad:
        return f"URI parameter(s) {', '.join(bad)} are not allowed"
    return None


async def register_server(request: web.Request) -> web.Response:
    """Record a server and submit its discovery: it joins its pool when that succeeds."""
    svc = services(request)
    try:
        reg = ServerRegistration.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("server registration", e) from None
    if why := _uri_problem(reg.uri):
        raise ValidationFailed(why, details=[(["body", "uri"], why)])
    try:
        await svc.inventory.pool(reg.pool)
    except NotFound as e:
        raise ValidationFailed(e.message, details=[(["body", "pool"], e.message)]) from None
    server = Server(name=reg.name, pool=reg.pool, uri=reg.uri, migration_host=reg.migration_host)
    if not await svc.inventory.add_server(server):
        raise Conflict(
            f"a server named {reg.name!r} exists", details=[(["body", "name"], "name is taken")]
        )
    job, _ = await svc.submitter.submit(
        DiscoverServer(kind="server.discover", server=reg.name), submitted_by=caller(request).name
    )
    return respond(ServerRegistered(server=server, job=job.id), 202, Location=f"/v1/jobs/{job.id}")


async def delete_server(request: web.Request) -> web.Response:
    """Remove a server that holds no VM (and no VM being placed on it)."""
    svc = services(request)
    name = request.match_info["server"]
    server = await svc.inventory.server(name)  # 404 for an unknown server
    vms = [v.name for v in await svc.inventory.vms_on(name)]
    held = await svc.servers.placed(name, set())
    if vms or held:
        what = f"VMs {', '.join(sorted(vms))}" if vms else "a VM being placed there"
        raise Conflict(f"server {name} holds {what}: move or delete them first")
    await svc.inventory.remove_server(name)
    return respond(server)


async def fence_server(request: web.Request) -> web.Response:
    """An operator acknowledges that a down server's guests are off. Refused (409) while
    the server is not down: a proof kept from then would let HA start copies elsewhere
    the next time the server stops answering, with its guests still running."""
    svc = services(request)
    name = request.match_info["server"]
    await svc.inventory.server(name)  # 404 for an unknown server
    body = await json_body(request)
    try:
        ack = FenceAck.model_validate(body, strict=True)
    except ValidationError as e:
        raise invalid("fence acknowledgement", e) from None
    if await svc.ha.server_down_for_s(name) <= 0:
        raise Conflict(f"server {name} is not down (its agent reaches it): nothing to fence")
    by = f"operator:{caller(request).name}"
    await svc.ha.mark_fenced(name, {"by": by, "reason": ack.reason}, SOURCE_API)
    return respond(FenceRecord(server=name, by=by, reason=ack.reason), 202)


async def list_templates(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.templates())
