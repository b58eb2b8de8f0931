"""Unit fixtures: fakeredis (with Lua) and the hand-driven engine (tasks.testing), no Celery."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from orchestrator.settings import Settings
from tasks.testing import Engine


@pytest.fixture
def settings() -> Settings:
    return Settings(
        redis_url="redis://unused",
        lease_ms=1000,
        retry_base_s=0,
        retry_max_s=0,
        redispatch_after_s=0.001,
        step_max_attempts=3,
        step_slice_ms=0,  # one step per message, so tests can stop between steps
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = Engine(settings, lambda: fakeredis.FakeAsyncRedis(decode_responses=True))
    yield e
    e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
