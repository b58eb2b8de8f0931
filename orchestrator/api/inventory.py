"""The inventory over HTTP: VMs (with their operation queues), pools, servers, templates."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import (
    BadRequest,
    Conflict,
    LengthRequired,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from orchestrator.jobs.checks import assess
from schemas.api import (
    AntiAffinitySpec,
    CpuGroupSpec,
    FenceAck,
    FenceRecord,
    MigrationTarget,
    MigrationTargets,
    Page,
    PoolGroups,
    RepositorySpec,
    RepositoryView,
    ServerRegistered,
    ServerRegistration,
    ServerView,
    TemplateView,
    VmView,
)
from schemas.base import is_name, utcnow
from schemas.event_types import SOURCE_API
from schemas.inventory import (
    AntiAffinityGroup,
    CpuGroup,
    Repository,
    Server,
    ServerPool,
    Vm,
    VmState,
)
from schemas.requests import AssemblyImport, DiscoverServer, RepositoryImport


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


def _path_name(request: web.Request, param: str = "group", what: str = "group name") -> str:
    """A name from the path, checked like every name (422 naming the parameter)."""
    name = request.match_info[param]
    if not is_name(name):
        msg = f"a {what} is 1-63 letters, digits, '.', '_' or '-', starting alphanumeric"
        raise ValidationFailed(msg, details=[(["path", param], msg)])
    return name


def _anti_affinity_conflicts(pool: ServerPool, vms: list[Vm]) -> list[str]:
    """Members of one anti-affinity group on one server, now."""
    out = []
    for g in pool.anti_affinity_groups:
        by_server: dict[str, list[str]] = {}
        for vm in vms:
            if vm.name in g.vms and vm.server:
                by_server.setdefault(vm.server, []).append(vm.name)
        out += [
            f"anti-affinity group {g.name}: {', '.join(sorted(names))} on {server}"
            for server, names in sorted(by_server.items())
            if len(names) > 1
        ]
    return out


async def _pool_groups(
    request: web.Request, change: Callable[[ServerPool], ServerPool]
) -> web.Response:
    svc = services(request)
    pool = await svc.inventory.update_pool(request.match_info["pool"], change)
    vms = [v for s in pool.servers for v in await svc.inventory.vms_on(s)]
    return respond(PoolGroups(pool=pool, conflicts=_anti_affinity_conflicts(pool, vms)))


async def put_anti_affinity_group(request: web.Request) -> web.Response:
    """Create or replace a pool's anti-affinity group: placement never puts two of its VMs
    on one server from now on (creates, clones, HA relocation; migrations refuse it)."""
    group = _path_name(request)
    try:
        spec = AntiAffinitySpec.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("anti-affinity group", e) from None

    def change(p: ServerPool) -> ServerPool:
        others = [g for g in p.anti_affinity_groups if g.name != group]
        new = AntiAffinityGroup(name=group, vms=sorted(set(spec.vms)))
        return p.model_copy(update={"anti_affinity_groups": [*others, new]})

    return await _pool_groups(request, change)


async def delete_anti_affinity_group(request: web.Request) -> web.Response:
    group = _path_name(request)

    def change(p: ServerPool) -> ServerPool:
        if not any(g.name == group for g in p.anti_affinity_groups):
            raise NotFound(f"pool {p.name} has no anti-affinity group {group!r}")
        kept = [g for g in p.anti_affinity_groups if g.name != group]
        return p.model_copy(update={"anti_affinity_groups": kept})

    return await _pool_groups(request, change)


async def present_repository(request: web.Request) -> web.Response:
    """Present a repository to a pool: VMs of the pool may have disks there (vm.move, a
    disk's `repository` in a create or clone), imports into it run on the pool's servers."""
    name = _path_name(request, "repository", "repository name")
    try:
        spec = RepositorySpec.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("repository", e) from None

    def change(p: ServerPool) -> ServerPool:
        if p.repository.name == name:
            raise Conflict(f"{name} is pool {p.name}'s own repository")
        repo = Repository(name=name, path=spec.path, assume_shared=spec.assume_shared)
        kept = [r for r in p.repositories if r.name != name]
        return p.model_copy(update={"repositories": [*kept, repo]})

    return await _pool_groups(request, change)


async def withdraw_repository(request: web.Request) -> web.Response:
    """Stop presenting a repository to a pool: refused while a VM of the pool has a disk
    there."""
    svc = services(request)
    name = _path_name(request, "repository", "repository name")
    pool = await svc.inventory.pool(request.match_info["pool"])
    users: list[str] = []
    for s in pool.servers:
        users += [
            v.name
            for v in await svc.inventory.vms_on(s)
            if any(d.repository == name for d in v.disks)
        ]
    users.sort()
    if users:
        raise Conflict(f"VMs {', '.join(users)} have disks in {name}: move them first")

    def change(p: ServerPool) -> ServerPool:
        if not any(r.name == name for r in p.repositories):
            raise NotFound(f"pool {p.name} has no repository {name!r} presented")
        return p.model_copy(update={"repositories": [r for r in p.repositories if r.name != name]})

    return await _pool_groups(request, change)


async def put_cpu_group(request: web.Request) -> web.Response:
    """Create or replace a pool's CPU compatibility group: a running VM moves live only
    between servers of one group."""
    group = _path_name(request)
    try:
        spec = CpuGroupSpec.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("CPU compatibility group", e) from None

    def change(p: ServerPool) -> ServerPool:
        problems: list[tuple[list[str | int], str]] = []
        for i, s in enumerate(spec.servers):
            if s not in p.servers:
                problems.append((["body", "servers", i], f"{s} is not a server of pool {p.name}"))
            elif other := next(
                (g.name for g in p.cpu_groups if g.name != group and s in g.servers), None
            ):
                problems.append((["body", "servers", i], f"{s} is in CPU group {other} already"))
        if problems:
            raise ValidationFailed("the group does not fit the pool", details=problems)
        others = [g for g in p.cpu_groups if g.name != group]
        new = CpuGroup(name=group, servers=sorted(set(spec.servers)))
        return p.model_copy(update={"cpu_groups": [*others, new]})

    return await _pool_groups(request, change)


async def delete_cpu_group(request: web.Request) -> web.Response:
    group = _path_name(request)

    def change(p: ServerPool) -> ServerPool:
        if not any(g.name == group for g in p.cpu_groups):
            raise NotFound(f"pool {p.name} has no CPU group {group!r}")
        return p.model_copy(update={"cpu_groups": [g for g in p.cpu_groups if g.name != group]})

    return await _pool_groups(request, change)


async def _repository_views(request: web.Request, only: str | None = None) -> list[RepositoryView]:
    svc = services(request)
    pools = await svc.inventory.pools()
    templates = await svc.inventory.templates()
    names = sorted({r.name for p in pools for r in p.presented()})
    if only is not None:
        if only not in names:
            raise NotFound(f"repository {only!r} not found")
        names = [only]
    views = []
    for name in names:
        content = await svc.content.list(name)
        views.append(
            RepositoryView(
                name=name,
                path=next((r.path for p in pools for r in p.presented() if r.name == name), ""),
                pools=[p.name for p in pools if p.presents(name)],
                templates=[
                    TemplateView(
                        **t.model_dump(), size_bytes=sum(d.capacity_bytes for d in t.disks)
                    )
                    for t in templates
                    if t.repository == name
                ],
                isos=[c for c in content if c.kind == "iso"],
                virtual_disks=[c for c in content if c.kind == "virtual_disk"],
                assemblies=[c for c in content if c.kind == "assembly"],
            )
        )
    return views


async def list_repositories(request: web.Request) -> web.Response:
    return respond_list(await _repository_views(request))


async def get_repository(request: web.Request) -> web.Response:
    [view] = await _repository_views(request, request.match_info["repository"])
    return respond(view)


UPLOAD_CHUNK = 1024 * 1024


async def upload_content(request: web.Request) -> web.Response:
    """A file into a repository, uploaded as the request's body: streamed to the upload
    directory the api shares with the workers (never held in memory, at most
    `import_max_bytes`, its Content-Length required and held to), its SHA-256 checked when
    the query gives one, then imported by a `repository.import` job (202: the job), which
    checks its format like any import and deletes the staged file when it ends."""
    svc = services(request)
    q = params(request)
    repository = request.match_info["repository"]
    name = _path_name(request, "name", "file name")
    if not any(p.presents(repository) for p in await svc.inventory.pools()):
        raise NotFound(f"repository {repository!r} not found")
    if q["content"] == "assembly" and not name.lower().endswith(".ova"):
        msg = "an assembly is uploaded as an .ova file"
        raise ValidationFailed(msg, details=[(["path", "name"], msg)])
    if request.content_type != "application/octet-stream":
        raise UnsupportedMediaType(
            "an upload is sent as application/octet-stream",
            details=[(["header", "Content-Type"], "application/octet-stream")],
        )
    length, limit = request.content_length, svc.settings.import_max_bytes
    if length is None:
        raise LengthRequired(
            "an upload needs a Content-Length", details=[(["header", "Content-Length"], "required")]
        )
    if length > limit:
        raise PayloadTooLarge(
            f"{length} bytes is over the import limit of {limit}",
            details=[(["body"], f"at most {limit} bytes")],
        )
    if await svc.content.get(repository, name) is not None:
        raise Conflict(
            f"repository {repository} already holds {name!r}",
            details=[(["path", "name"], "a file of this name exists in the repository")],
        )
    upload_id = str(uuid.uuid4())
    folder = svc.settings.upload_dir
    await asyncio.to_thread(folder.mkdir, 0o700, True, True)
    part, done = folder / f"{upload_id}.part", folder / upload_id
    sha = hashlib.sha256()
    size = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
                size += len(chunk)
                if size > length:
                    raise BadRequest("the body is longer than its Content-Length")
                sha.update(chunk)
                await asyncio.to_thread(f.write, chunk)
        if size != length:
            raise BadRequest(f"the body ended after {size} of {length} bytes")
        digest = sha.hexdigest()
        if q["sha256"] and q["sha256"].lower() != digest:
            msg = f"the file's SHA-256 is {digest}"
            raise ValidationFailed("SHA-256 mismatch", details=[(["query", "sha256"], msg)])
        part.rename(done)
        req: RepositoryImport | AssemblyImport = (
            AssemblyImport(
                kind="assembly.import", repository=repository, upload=upload_id,
                name=name.rsplit(".", 1)[0][:40], sha256=digest,
            )
            if q["content"] == "assembly"
            else RepositoryImport(
                kind="repository.import", repository=repository, content=q["content"],
                upload=upload_id, name=name, sha256=digest,
            )
        )  # fmt: skip
        job, _ = await svc.submitter.submit(req, submitted_by=caller(request).name)
    except BaseException:
        part.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
        raise
    return respond(job, 202, Location=f"/v1/jobs/{job.id}")


async def list_templates(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.templates())
