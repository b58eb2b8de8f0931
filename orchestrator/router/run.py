"""`vmorch router`: the timers and the event consumer, side by side in one process."""

from __future__ import annotations

import asyncio

from orchestrator import metrics
from orchestrator.router.consumer import EventConsumer
from orchestrator.router.timers import Timers
from orchestrator.services import Services, connect
from orchestrator.settings import Settings


async def run_router(settings: Settings, stop: asyncio.Event) -> None:
    metrics.serve(settings.metrics_host, settings.metrics_port)
    redis = connect(settings)
    services = Services.build(settings, redis)
    try:
        await asyncio.gather(Timers(services).run(stop), EventConsumer(services).run(stop))
    finally:
        await redis.aclose()
