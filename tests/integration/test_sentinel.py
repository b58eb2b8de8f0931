"""Redis Sentinel: every process on one `redis+sentinel://` URL follows a switch of master,
and no job the api accepted is lost.

On loopback: a master (password, AOF), a replica, three Sentinels (their own password,
quorum 2). The api, a router, a worker (Celery's broker included), an agent and the CLI all
get the Sentinel URL. The switch is the coordinated one: Redis' own FAILOVER (writes paused
until the replica has caught up, then the roles swap), then SENTINEL FAILOVER so that the
Sentinels name the new master. A bare SENTINEL FAILOVER is not coordinated: the old master
takes writes until Sentinel demotes it about 10 s later, and they are lost (see
docs/deployment.md); that is not what this test claims.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis import exceptions as redis_errors

from orchestrator.lab.lab import Lab
from orchestrator.lab.redis_server import RedisSentinel, RedisServer, sentinels_url
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import keys
from schemas.events import Event
from schemas.inventory import Inventory
from tests.integration.conftest import ENGINE_ENV, Api, Proc, start_api, wait_until

pytestmark = pytest.mark.integration
SERVICE = "vmorch"
# a replica syncs at once, not after Redis' 5 s wait for more replicas to share the transfer
FAST_SYNC = ["repl-diskless-sync-delay 0"]
NOOP = {"kind": "noop", "steps": 3}


@dataclass
class Group:
    """A master, its replica and the Sentinels that watch them; `url` is what clients get."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisSentinel]
    url: str
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    def _client(self, port: int, password: str | None) -> redis.Redis:
        if port not in self._clients:
            self._clients[port] = redis.Redis(port=port, password=password, decode_responses=True)
        return self._clients[port]

    def sentinel(self, i: int = 0) -> redis.Redis:
        return self._client(self.sentinels[i].port, self.sentinels[i].password)

    def direct(self, server: RedisServer) -> redis.Redis:
        return self._client(server.port, server.password)

    def named_master(self, i: int) -> int:
        """The port of the master Sentinel `i` names."""
        return int(self.sentinel(i).sentinel_get_master_addr_by_name(SERVICE)[1])

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def ready(self) -> bool:
        """The replica is in sync and each Sentinel knows it and the two other Sentinels."""
        if self.direct(self.replica).info("replication").get("master_link_status") != "up":
            return False
        for i in range(len(self.sentinels)):
            state = self.sentinel(i).sentinel_master(SERVICE)
            if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
                return False
        return True

    def switch(self) -> None:
        """The coordinated switch: FAILOVER swaps the roles once the replica has every
        write (clients' writes wait meanwhile), then the Sentinels are told."""
        self.direct(self.master).execute_command("FAILOVER", "TIMEOUT", "10000")
        wait_until(lambda: self.role(self.master) == "slave", 15, "FAILOVER to swap the roles")
        self.sentinel(0).sentinel_failover(SERVICE)
        every = range(len(self.sentinels))
        wait_until(
            lambda: all(self.named_master(i) == self.replica.port for i in every),
            30,
            "every Sentinel to name the new master",
        )

    def role(self, server: RedisServer) -> str:
        return str(self.direct(server).role()[0])


@pytest.fixture
def group(workdir: Path) -> Iterator[Group]:
    base = workdir / f"sentinel-{time.time_ns()}"
    master = RedisServer(base / "master", require_password=True, config=FAST_SYNC)
    replica = RedisServer(base / "replica", replica_of=master, config=FAST_SYNC)
    first = RedisSentinel(base / "sentinel-0", master, SERVICE, quorum=2)
    sentinels = [first] + [
        RedisSentinel(base / f"sentinel-{i}", master, SERVICE, quorum=2, password=first.password)
        for i in (1, 2)
    ]
    parts: list[RedisServer | RedisSentinel] = [master, replica, *sentinels]
    started: list[RedisServer | RedisSentinel] = []
    try:
        for part in parts:
            part.start()
            started.append(part)
        g = Group(master, replica, sentinels, sentinels_url(sentinels, master))
        try:
            wait_until(g.ready, 30, "the replica in sync and the Sentinels to know each other")
            yield g
        finally:
            g.close()
    finally:
        for part in reversed(started):
            part.stop()


def test_a_client_never_stays_on_a_server_that_is_not_the_master(group: Group) -> None:
    """`connect` on the Sentinel URL: it reaches the master; a demoted master the Sentinels
    still name is refused (ROLE), and so is a master that refuses writes (NOREPLICAS)."""

    async def attempt(command: Callable[[aredis.Redis], Any]) -> Any:
        r = connect(Settings(redis_url=group.url))
        try:
            return await command(r)
        finally:
            await r.aclose()

    assert asyncio.run(attempt(lambda r: r.set("k", "v")))
    assert group.direct(group.master).get("k") == "v"
    # a master short of the replicas it must write to: a ConnectionError (retry, or 503)
    group.direct(group.master).config_set("min-replicas-to-write", 2)
    with pytest.raises(redis_errors.ConnectionError, match="refuses writes"):
        asyncio.run(attempt(lambda r: r.set("k", "w")))
    group.direct(group.master).config_set("min-replicas-to-write", 0)
    # the roles swapped, and the Sentinels not told yet: the old master is not used, even
    # to read (reads would work on a replica, unnoticed)
    group.direct(group.master).execute_command("FAILOVER", "TIMEOUT", "10000")
    wait_until(lambda: group.role(group.master) == "slave", 15, "FAILOVER to swap the roles")
    with pytest.raises(redis_errors.ConnectionError, match="not the master"):
        asyncio.run(attempt(lambda r: r.get("k")))


@dataclass
class Submissions:
    """Jobs submitted without pause from a thread, before, during and after the switch."""

    api: Api
    accepted: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = self.api.request("POST", "/v1/jobs", NOOP, timeout_s=30)
            self.answers[status] += 1
            if status == 202:
                self.accepted.append(body["id"])
            else:
                self.refusals[body.get("error", {}).get("code", repr(body))] += 1
            time.sleep(0.03)

    def accepted_after(self, count: int, timeout_s: float, what: str) -> None:
        start = len(self.accepted)
        wait_until(lambda: len(self.accepted) >= start + count, timeout_s, what)


def cli(env: dict[str, str], *args: str) -> Any:
    """`vmorch --json ARGS` on the Sentinel URL (the CLI's direct Redis commands)."""
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout) if out.stdout.strip() else None


def start_worker(env: dict[str, str], log: Path) -> Proc:
    proc = Proc(["worker", "-c", "2", "--noop", "also"], env, log)

    def ready() -> bool:
        assert proc.p.poll() is None, proc.output()
        return " ready." in proc.output()

    wait_until(ready, 60, "celery worker")
    return proc


def publish(url: str, type_: str, subject: str) -> None:
    """An event on the stream, written through the Sentinel URL (as an agent would)."""

    async def main() -> None:
        settings = Settings(redis_url=url)
        r = connect(settings)
        try:
            event = Event(
                id=f"drill-{time.time_ns()}",
                source="vmorch://test",
                type=type_,
                subject=subject,
                time=datetime.now(UTC),
            )
            await Services.build(settings, r).events.publish(event)
        finally:
            await r.aclose()

    asyncio.run(main())


def test_every_process_follows_a_switch_of_master_and_no_accepted_job_is_lost(
    group: Group, lab: tuple[Lab, Inventory], workdir: Path
) -> None:
    base = workdir / f"sentinel-stack-{time.time_ns()}"
    base.mkdir()
    env = {**os.environ, "VMORCH_REDIS_URL": group.url, **ENGINE_ENV}
    inventory = base / "inventory.json"
    inventory.write_text(lab[1].model_dump_json())
    cli(env, "inventory", "load", str(inventory))
    token = cli(env, "tokens", "create", "--name", "drill", "--role", "admin")["token"]
    server = lab[1].servers[0].name
    procs: list[Proc] = []
    try:
        procs.append(Proc(["router"], env, base / "router.log"))
        procs.append(Proc(["agent", "--server", server], env, base / "agent.log"))
        procs.append(start_worker(env, base / "worker.log"))
        api_url, api_proc = start_api(env, base / "api.log")
        procs.append(api_proc)
        api = Api(api_url, token)
        # given: jobs flowing, and one waiting for an event that comes only after the switch
        waiter = api.submit({"kind": "noop", "steps": 1, "wait_for": "drill.go"})
        api.wait(waiter["id"], {"waiting"}, timeout_s=30)
        submissions = Submissions(api)
        thread = threading.Thread(target=submissions.run, daemon=True)
        thread.start()
        try:
            submissions.accepted_after(20, 30, "jobs accepted before the switch")
            # when: the master switches while jobs are submitted
            group.switch()
            # then: the api accepts jobs again, on the new master
            submissions.accepted_after(20, 30, "jobs accepted after the switch")
        finally:
            submissions.stop.set()
            thread.join(60)
        assert group.role(group.replica) == "master" and group.role(group.master) == "slave"
        # every accepted job runs to the end (the worker reconnected, its broker too)
        for job_id in submissions.accepted:
            assert api.wait(job_id, timeout_s=60)["state"] == "succeeded", job_id
        # the api answered 202, or 503 (Redis unavailable) during the switch: nothing else
        assert set(submissions.answers) <= {202, 503}, submissions.answers
        assert set(submissions.refusals) <= {"redis_unavailable"}, submissions.refusals
        # the router's consumer resumes a wait with an event written after the switch...
        publish(group.url, "drill.go", waiter["id"])
        assert api.wait(waiter["id"], timeout_s=30)["state"] == "succeeded"
        # ...and its timers dispatch a retry (a transient failure, retried by the timer)
        retried = api.run({"kind": "noop", "steps": 1, "transient_failures": 1}, timeout_s=30)
        assert retried["state"] == "succeeded", retried
        # the agent writes its server's facts on the new master again
        new_master = group.direct(group.replica)
        new_master.delete(keys.server_facts(server))
        wait_until(lambda: new_master.exists(keys.server_facts(server)), 30, "agent facts")
        # the CLI reads through the Sentinels too
        assert any(t["name"] == "drill" for t in cli(env, "tokens", "list"))
        for proc in procs:
            assert proc.p.poll() is None, proc.output()
    finally:
        for proc in procs:
            proc.stop()
