"""Unit fixtures: fakeredis (with Lua) and the hand-driven engine (tasks.testing), no Celery.

Store tests that depend on what Redis does (ordering of ties, Lua, stream commands) use
`backend`, which runs them twice: on fakeredis and on a private redis-server started for
the session (never a Redis this run did not start)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import libvirt
import pytest
import redis
import redis.asyncio as aredis

from orchestrator.lab.redis_server import RedisServer
from orchestrator.settings import Settings
from schemas.inventory import (
    Inventory,
    Network,
    Repository,
    Server,
    ServerPool,
    Template,
    TemplateDisk,
)
from tasks.testing import Engine

MakeRedis = Callable[[], Any]
URI = "test:///default"
# one pool of one server on the in-process libvirt test driver (fixture `conn`)
FLEET = Inventory(
    pools=[
        ServerPool(
            name="pool-u",
            repository=Repository(name="repo-u"),
            networks=[Network(name="default")],
            servers=["srv-u"],
        )
    ],
    servers=[Server(name="srv-u", pool="pool-u", uri=URI)],
    templates=[
        Template(name="t1", repository="repo-u", disks=[TemplateDisk(volume="base.img")]),
        Template(
            name="broken",
            repository="repo-u",
            disks=[TemplateDisk(volume="base.img"), TemplateDisk(volume="missing.img")],
        ),
    ],
)


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


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    """The in-process libvirt test driver, emptied, with the pool's repository and its
    template volume (the driver keeps its state while a connection is open)."""
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    c = libvirt.open(URI)
    for d in c.listAllDomains():
        if d.isActive():
            d.destroy()
        d.undefine()
    if "repo-u" not in c.listStoragePools():
        sp = c.storagePoolDefineXML(
            "<pool type='dir'><name>repo-u</name><target><path>/repo-u</path></target></pool>"
        )
        sp.create()
    sp = c.storagePoolLookupByName("repo-u")
    for v in sp.listVolumes():
        sp.storageVolLookupByName(v).delete(0)
    sp.createXML("<volume><name>base.img</name><capacity>1048576</capacity></volume>", 0)
    yield c
    c.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session (a free port, stopped by its PID)."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["fakeredis", "redis-server"])
def backend(request: pytest.FixtureRequest) -> MakeRedis:
    """How to make the test's Redis client: fakeredis, or the session's redis-server
    (emptied first: it is ours alone)."""
    if request.param == "fakeredis":
        return lambda: fakeredis.FakeAsyncRedis(decode_responses=True)
    server: RedisServer = request.getfixturevalue("redis_server")
    sync = redis.Redis.from_url(server.url)
    try:
        sync.flushdb()
    finally:
        sync.close()
    return lambda: aredis.Redis.from_url(server.url, decode_responses=True)


@pytest.fixture
def make_engine(backend: MakeRedis) -> Iterator[Callable[[Settings], Engine]]:
    """Engines on the test's backend, with the settings a test gives; closed at the end."""
    made: list[Engine] = []

    def make(settings: Settings) -> Engine:
        e = Engine(settings, backend)
        made.append(e)
        return e

    yield make
    for e in made:
        e.run(e.redis.aclose())
        e.close()


@pytest.fixture
def store_engine(make_engine: Callable[[Settings], Engine], settings: Settings) -> Engine:
    return make_engine(settings)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def importing_engine(settings: Settings, **update: Any) -> Engine:
    """A hand-driven engine over fakeredis with FLEET loaded, whose imports may fetch from
    loopback (the tests serve their sources there); `update`: more settings."""
    e = Engine(
        settings.model_copy(update={"import_allowed_hosts": ["127.0.0.1"], **update}),
        lambda: fakeredis.FakeAsyncRedis(decode_responses=True),
    )
    e.run(e.inventory.load(FLEET))
    return e
