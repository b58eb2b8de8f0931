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
PURGE_BATCHES = 10  # job batches deleted per round at most (2000 jobs a second)


class Housekeeping:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self._next_trim = 0.0

    async def run_due(self) -> None:
        """Do the rounds whose time has come (called at every sweep)."""
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_S
            await self.trim()

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
