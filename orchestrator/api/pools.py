"""A pool's groups over HTTP: anti-affinity and CPU compatibility groups, and the
repositories presented to it."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import (
    invalid,
    json_body,
    path_name,
    respond,
    services,
)
from orchestrator.errors import (
    Conflict,
    NotFound,
    ValidationFailed,
)
from schemas.api import (
    AntiAffinitySpec,
    CpuGroupSpec,
    PoolGroups,
    RepositorySpec,
)
from schemas.inventory import (
    AntiAffinityGroup,
    CpuGroup,
    Repository,
    ServerPool,
    Vm,
)


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
    group = path_name(request)
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
    group = path_name(request)

    def change(p: ServerPool) -> ServerPool:
        if not any(g.name == group for g in p.anti_affinity_groups):
            raise NotFound(f"pool {p.name} has no anti-affinity group {group!r}")
        kept = [g for g in p.anti_affinity_groups if g.name != group]
        return p.model_copy(update={"anti_affinity_groups": kept})

    return await _pool_groups(request, change)


async def present_repository(request: web.Request) -> web.Response:
    """Present a repository to a pool: VMs of the pool may have disks there (vm.move, a
    disk's `repository` in a create or clone), imports into it run on the pool's servers."""
    name = path_name(request, "repository", "repository name")
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
    name = path_name(request, "repository", "repository name")
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
    group = path_name(request)
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
    group = path_name(request)

    def change(p: ServerPool) -> ServerPool:
        if not any(g.name == group for g in p.cpu_groups):
            raise NotFound(f"pool {p.name} has no CPU group {group!r}")
        return p.model_copy(update={"cpu_groups": [g for g in p.cpu_groups if g.name != group]})

    return await _pool_groups(request, change)
