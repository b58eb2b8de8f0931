"""The router's housekeeping: everything that would otherwise grow without bound in Redis.

Each round is cheap when there is nothing to do, so every router runs it; two routers doing
the same round at once delete nothing twice (each step skips what is already gone).
"""

from __future__ import annotations

import logging
import time

from orchestrator.services import Services

log = logging.getLogger("vmorch.router")
TRIM_EVERY_S = 1.0  # the event stream, and finished jobs past the retention
PRUNE_EVERY_S = 60.0  # acknowledged alerts, stale workers and idle router consumers
PURGE_BATCHES = 10  # job batches deleted per round at most (2000 jobs a second)


class Housekeeping:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self._next_trim = 0.0
        self._next_prune = 0.0

    async def run_due(self) -> None:
        """Do the rounds whose time has come (called at every sweep)."""
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_S
            await self.trim()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            await self.prune()

    async def trim(self) -> None:
        """Trim the event stream (never below what the routers' group still owes) and
        delete finished jobs past the retention or beyond the cap."""
        s = self.settings
        removed = await self.services.events.trim(s.router_group, s.event_stream_maxlen)
        if removed:
            log.debug("trimmed %d event(s)", removed)
        purged = await self.services.retention.purge(PURGE_BATCHES)
        if purged:
            log.info("retention: deleted %d finished job(s)", purged)

    async def prune(self) -> None:
        """Free the placements and migration slots of ended jobs; delete alerts
        acknowledged longer ago than the job retention, workers not seen for
        worker_forget_after_s, and consumers idle router_consumer_idle_s; cap the audit
        trail at the job cap."""
        s, svc = self.settings, self.services
        inv = svc.inventory
        await svc.servers.sweep(
            [x.name for x in await inv.servers()], [p.name for p in await inv.pools()]
        )
        alerts = await svc.alerts.prune_acknowledged(s.job_retention_s)
        workers = await svc.fleet.forget_stale(s.worker_forget_after_s)
        consumers = await svc.events.forget_idle_consumers(
            s.router_group, int(s.router_consumer_idle_s * 1000)
        )
        await svc.audit.cap()
        if alerts or workers or consumers:
            log.info(
                "pruned %d acknowledged alert(s), %d stale worker(s), idle consumers: %s",
                alerts,
                workers,
                " ".join(consumers) or "none",
            )
