"""The one wiring module: every process builds its Redis client and stores here, from Settings.

The api, workers, routers, agents, the lab and the tests all call `connect` and
`Services.build`, so a setting reaches every process that needs it (before this module,
six hand-made copies took different subsets, and jobs submitted by hooks ignored the stream
length and idempotency TTL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.utils import str_if_bytes

from orchestrator.jobs.dispatch import Dispatcher, TaskMessages, producer_app
from orchestrator.jobs.recovery import JobRecovery
from orchestrator.jobs.submit import Submitter
from orchestrator.redisurl import SentinelUrl, sentinel_url
from orchestrator.secrets import Sealer
from orchestrator.settings import Settings
from orchestrator.store.alerts import AlertStore
from orchestrator.store.audit import AuditStore
from orchestrator.store.content import ContentStore
from orchestrator.store.events import EventLog
from orchestrator.store.expectations import Expectations
from orchestrator.store.fleet import FleetStore
from orchestrator.store.guest import GuestStore
from orchestrator.store.ha import HaStore
from orchestrator.store.hooks import HookStore
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.leases import Leases
from orchestrator.store.macs import MacRange, MacStore
from orchestrator.store.queues import QueueControls
from orchestrator.store.retention import JobRetention, RetentionPolicy
from orchestrator.store.servers import ServerStates
from orchestrator.store.tokens import TokenStore
from orchestrator.store.waits import Waits
from orchestrator.targets import ImportAllowList

NO_REPLICAS = "NOREPLICAS"  # the error of a master short of the replicas it must write to


def connect(settings: Settings, *, socket_timeout_s: float | None = None) -> Redis:
    """A Redis client with timeouts, TCP keepalive and health checks: a stalled Redis makes
    calls fail with a RedisError within the timeout, never hang (no connection is opened
    until the first command). A `redis+sentinel://` URL (`orchestrator.redisurl`) gives a
    client of the master the Sentinels name, found again after a failover."""
    timeout_s = socket_timeout_s or settings.redis_socket_timeout_s
    options: dict[str, Any] = {
        # a pool that makes a caller wait (up to the socket timeout) for a free connection
        # past redis_max_connections, rather than failing at once (redis-py's default: 100,
        # then "Too many connections"; an agent serving many guest channels reached it)
        "max_connections": settings.redis_max_connections,
        "timeout": timeout_s,
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": int(settings.redis_health_check_s),
    }
    sentinels = sentinel_url(settings.redis_url)
    if sentinels is None:
        pool = aredis.BlockingConnectionPool.from_url(settings.redis_url, **options)
    else:
        pool = BlockingSentinelPool.of(sentinels, **options)
    return aredis.Redis.from_pool(pool)  # (closing the client closes its pool)


class MasterConnection(SentinelManagedConnection):  # type: ignore[misc]  # (Any to mypy)
    """A connection to the master the Sentinels name, that never stays on a server which
    is not, or may no longer be, the master.

    - Connecting checks ROLE: while a switch is under way the Sentinels may still name the
      old master, already a replica, where reads would go on working unnoticed.
    - redis-py already drops a connection that meets READONLY (the master was demoted). A
      master that has lost its replicas refuses writes with NOREPLICAS instead, once
      `min-replicas-to-write` is set: that is what fences an old master during a failover
      (the promoted replica leaves it at once, while Sentinel demotes it only about 10 s
      later, and every write it took meanwhile would be lost). It is treated the same way.

    Either way the connection is closed and the call fails with a ConnectionError, as on a
    Redis that is down (the api answers 503; workers, routers and agents retry), and the
    next connection asks the Sentinels again. (The api's event hub copies this connection
    class for its own reader: the same holds there.)"""

    async def connect_to(self, address: tuple[str, int]) -> None:
        await super().connect_to(address)
        await self.send_command("ROLE")
        role = str_if_bytes((await self.read_response())[0])
        if role != "master":
            await self.disconnect()
            raise redis_errors.ConnectionError(
                f"{address[0]}:{address[1]} is a {role}, not the master (yet): a failover is "
                "under way"
            )

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis_errors.ResponseError as e:
            if not str(e).startswith(NO_REPLICAS):
                raise
            await self.disconnect()
            raise redis_errors.ConnectionError(
                f"the master refuses writes ({e}); asking the Sentinels again"
            ) from e


class BlockingSentinelPool(
    SentinelConnectionPool,  # type: ignore[misc]  # (Any to mypy)
    aredis.BlockingConnectionPool,  # type: ignore[misc]
):
    """redis-py's pool of a Sentinel-named master, bounded as `connect`'s other pool is: a
    caller waits for a free connection rather than failing past max_connections.

    Each new connection asks the Sentinels for the master (`MasterConnection` says what it
    leaves); when the master's address changes, idle connections are closed."""

    @classmethod
    def of(cls, url: SentinelUrl, **options: Any) -> BlockingSentinelPool:
        """The pool of `url`'s master; the Sentinels are asked with the same timeouts and
        keepalive, and no retries of their own (discovery moves on to the next one)."""
        sentinel_options = {
            k: v
            for k, v in options.items()
            if k in ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
        }
        manager = Sentinel(
            url.sentinels, sentinel_kwargs={**sentinel_options, **url.sentinel_auth()}
        )
        return cls(
            url.service,
            manager,
            connection_class=MasterConnection,
            db=url.db,
            **url.master_auth(),
            **options,
        )

    async def aclose(self) -> None:
        """Close the pool and the Sentinel clients it asks (the client owns both)."""
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sealer_of(settings: Settings) -> Sealer | None:
    """The sealer of secret values for guests, when a key is set."""
    key = settings.guest_secret_key
    return Sealer(key.get_secret_value()) if key is not None else None


@dataclass(frozen=True)
class Services:
    """Every store of one process, on one Redis client, configured from one Settings."""

    settings: Settings
    redis: Redis
    jobs: JobStore
    retention: JobRetention
    leases: Leases
    inventory: InventoryStore
    events: EventLog
    waits: Waits
    expectations: Expectations
    hooks: HookStore
    alerts: AlertStore
    audit: AuditStore
    tokens: TokenStore
    fleet: FleetStore
    ha: HaStore
    servers: ServerStates
    macs: MacStore
    content: ContentStore
    guests: GuestStore
    queues: QueueControls
    dispatcher: Dispatcher
    submitter: Submitter
    recovery: JobRecovery

    @classmethod
    def build(cls, settings: Settings, redis: Redis) -> Services:
        jobs = JobStore(
            redis,
            idem_ttl_s=settings.idempotency_ttl_s,
            redispatch_after_s=settings.redispatch_after_s,
        )
        inventory = InventoryStore(redis)
        macs = MacStore(redis, MacRange.parse(settings.mac_range))
        dispatcher = Dispatcher(redis, TaskMessages(producer_app()))
        events = EventLog(redis)
        content = ContentStore(redis)
        queues = QueueControls(redis)
        submitter = Submitter(
            jobs,
            inventory,
            dispatcher,
            macs,
            content,
            ImportAllowList(settings.import_allowed_hosts, settings.import_allowed_paths),
            sealer_of(settings),
            queues,
        )
        leases = Leases(redis, settings.lease_ms)
        waits = Waits(redis)
        return cls(
            settings=settings,
            redis=redis,
            jobs=jobs,
            retention=JobRetention(
                redis, RetentionPolicy(settings.job_retention_s, settings.job_retention_max)
            ),
            leases=leases,
            inventory=inventory,
            events=events,
            waits=waits,
            expectations=Expectations(redis),
            hooks=HookStore(redis, firing_ttl_s=settings.hook_firing_ttl_s),
            alerts=AlertStore(redis, events),
            audit=AuditStore(
                redis,
                retention_s=settings.job_retention_s,
                max_kept=settings.job_retention_max,
            ),
            tokens=TokenStore(redis),
            fleet=FleetStore(redis),
            ha=HaStore(redis, max_restarts=settings.ha_max_restarts, window_s=settings.ha_window_s),
            servers=ServerStates(redis),
            macs=macs,
            content=content,
            guests=GuestStore(redis, settings.job_retention_s),
            queues=queues,
            dispatcher=dispatcher,
            submitter=submitter,
            recovery=JobRecovery(submitter, leases, waits),
        )
