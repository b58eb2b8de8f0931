"""`server.discover`: read what a server is and has, and make it a member of its pool.

`POST /v1/servers` records a server and submits this job; submitted again, it refreshes
what is recorded. The server must answer, and must see its pool's repository (a libvirt
storage pool of that name, active) and every network of the pool: otherwise the job fails
saying what is missing, and the server does not join (placement never sees it).
"""

from __future__ import annotations

from typing import cast

from orchestrator.errors import Permanent
from schemas.inventory import Discovery, ServerPool
from schemas.requests import DiscoverServer
from tasks.step import Outputs, Step, StepContext

PROBE_S = 10.0


class DiscoveryRefused(Permanent):
    code = "discovery_refused"


def _req(ctx: StepContext) -> DiscoverServer:
    return cast(DiscoverServer, ctx.request)


def discover_run(ctx: StepContext) -> Outputs:
    """Read the server through libvirt, and check it against its pool."""
    server = ctx.run(ctx.runtime.inventory.server(_req(ctx).server))
    pool = ctx.run(ctx.runtime.inventory.pool(server.pool))
    found = ctx.hypervisor(server.name, probe_s=PROBE_S).discover()
    missing = []
    if pool.repository.name not in found.storage_pools:
        missing.append(f"the repository {pool.repository.name} (an active storage pool)")
    missing += [f"the network {n.name}" for n in pool.networks if n.name not in found.networks]
    if missing:
        raise DiscoveryRefused(
            f"server {server.name} does not see {', '.join(missing)} of pool {pool.name}"
        )
    return {"discovery": found.model_dump(mode="json")}


def join_run(ctx: StepContext) -> Outputs:
    """Record the discovery and make the server a member of its pool (converges)."""
    server = ctx.run(ctx.runtime.inventory.server(_req(ctx).server))
    found = Discovery.model_validate(ctx.outputs["discovery"])
    record = server.model_copy(
        update={"discovery": found, "memory_mib": found.memory_mib, "cpus": found.cpus}
    )
    ctx.run(ctx.runtime.inventory.save_server(record, fence=ctx.fence))

    def join(p: ServerPool) -> ServerPool:
        if server.name in p.servers:
            return p
        return p.model_copy(update={"servers": [*p.servers, server.name]})

    ctx.run(ctx.runtime.inventory.update_pool(server.pool, join))
    return {"server": server.name, "pool": server.pool}


def steps(_req: DiscoverServer) -> list[Step]:
    return [
        Step("discover", discover_run, None, "read the server, check it against its pool"),
        Step("join", join_run, None, "record it and make it a member of its pool"),
    ]
