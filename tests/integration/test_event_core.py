"""The event core under load and faults: slow webhooks, trimming, a stalled router."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.lab.redis_server import RedisServer
from orchestrator.store import keys
from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, find_domains, wait_until

pytestmark = pytest.mark.integration

CREATE = {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a"}


class BlackHole:
    """A webhook receiver that accepts connections, reads the request and never answers.
    It records which delivery id came on which connection and when."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(200)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[float, str]] = []  # (time, delivery id), one per connection
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        for line in data.decode(errors="replace").split("\r\n"):
            if line.lower().startswith("x-vmorch-delivery:"):
                self.seen.append((time.monotonic(), line.split(":", 1)[1].strip()))

    def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def ha_runs(api: Api, vm_id: str) -> list[dict[str, Any]]:
    status, body = api.request("GET", "/v1/hooks/builtin-ha/runs")
    assert status == 200, body
    return [r for r in body if r["subject"] == vm_id and r["outcome"] == "submitted"]


def test_a_black_holed_webhook_never_delays_ha(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    black_hole: BlackHole,
    env: dict[str, str],
    workdir: Path,
) -> None:
    # given a second router that gives a firing up after 1.5 s (were its lease not renewed,
    # it would take over the first router's deliveries and send them again concurrently)
    eager = Proc(
        ["router"],
        {**env, "VMORCH_HOOK_LEASE_MS": "1500", "VMORCH_CLAIM_IDLE_MS": "1000"},
        workdir / f"router-eager-{time.time_ns()}.log",
    )
    try:
        # and hooks on every job and lifecycle event to a receiver that never answers, with
        # the longest timeout and the most retries allowed
        for name, types in (("slow-jobs", ["job.*"]), ("slow-vms", ["vm.lifecycle.*"])):
            status, body = api.request(
                "POST",
                "/v1/hooks",
                {
                    "name": name,
                    "match": {"types": types, "unexpected_only": False},
                    "window_s": 0,
                    "action": {
                        "kind": "webhook",
                        "url": f"http://127.0.0.1:{black_hole.port}/hook",
                        "timeout_s": 60,
                        "retries": 10,
                    },
                },
            )
            assert status == 201, body
        job = api.run({**CREATE, "name": "slowha", "ha": True})
        assert job["state"] == "succeeded", job
        wait_until(lambda: len(black_hole.seen) >= 3, 15, "deliveries to hang")
        # when an HA VM is destroyed outside vmorch
        [(_, dom)] = find_domains(fleet, "slowha")
        dom.destroy()
        # then HA submits its restart while every delivery still hangs (none can finish
        # before its 60 s timeout), and the restart runs
        fired = wait_until(lambda: ha_runs(api, job["links"]["vm_id"]), 15, "HA to fire")
        restart = api.wait(fired[0]["job_id"])
        assert restart["state"] == "succeeded", restart
        # and no delivery id was ever sent on two connections (one attempt at a time; the
        # next attempt would come only after 60 s)
        ids = [d for _, d in black_hole.seen]
        assert len(ids) == len(set(ids)), sorted(ids)
    finally:
        eager.stop()


def test_trimming_never_drops_what_a_stopped_router_has_not_handled(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    router: Proc,
    env: dict[str, str],
    workdir: Path,
    redis_url: str,
) -> None:
    # given a router that keeps the stream to about 100 entries, beside the session's
    tiny = Proc(
        ["router"],
        {**env, "VMORCH_EVENT_STREAM_MAXLEN": "100"},
        workdir / f"router-tiny-{time.time_ns()}.log",
    )
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        job = api.run({**CREATE, "name": "trimha", "ha": True})
        assert job["state"] == "succeeded", job
        vm_id = job["links"]["vm_id"]
        # when every router is stopped, an HA VM crashes, and many events follow it
        for p in (router, tiny):
            p.kill(signal.SIGSTOP)
        try:
            [(_, dom)] = find_domains(fleet, "trimha")
            dom.destroy()
            noops = [api.submit({"kind": "noop", "steps": 3}) for _ in range(60)]
            for j in noops:
                assert api.wait(j["id"])["state"] == "succeeded"
            assert r.xlen(keys.EVENTS) > 300  # far past the 100 the router keeps
        finally:
            for p in (router, tiny):
                p.kill(signal.SIGCONT)
        # then the crash is still handled once the routers run again
        fired = wait_until(lambda: ha_runs(api, vm_id), 20, "HA to handle the old crash")
        assert api.wait(fired[0]["job_id"])["state"] == "succeeded"
        # and the stream is trimmed again, with nothing lost on the way
        wait_until(lambda: r.xlen(keys.EVENTS) < 300, 15, "the stream to be trimmed")
        assert int(r.get(keys.EVENTS_LOST) or 0) == 0
    finally:
        tiny.stop()
        r.close()


def test_a_stalled_redis_hangs_nothing_and_loses_no_accepted_job(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    redis_server: RedisServer,
) -> None:
    # given a steady stream of submissions
    accepted: list[str] = []
    answered: list[tuple[int, float]] = []  # (status, seconds it took) of each submission
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            status, body = api.request("POST", "/v1/jobs", {"kind": "noop", "steps": 2})
            answered.append((status, time.monotonic() - t0))
            if status == 202:
                accepted.append(body["id"])
            stop.wait(0.05)

    submitter = threading.Thread(target=load, daemon=True)
    submitter.start()
    try:
        wait_until(lambda: len(accepted) >= 5, 20, "submissions to flow")
        # when Redis stops answering for 10 s (a fault of that length, not a wait)
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            during = len(answered)
            threading.Event().wait(10)
            # then the api kept answering (refusing) instead of hanging on Redis
            refused = answered[during:]
            assert refused and all(status >= 500 for status, _ in refused[1:]), refused
            assert all(took < 9 for _, took in refused), refused
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        # and once it is back everything recovers by itself
        wait_until(lambda: api.request("GET", "/healthz", token="")[0] == 200, 15, "health")
        wait_until(lambda: answered and answered[-1][0] == 202, 15, "submissions again")
    finally:
        stop.set()
        submitter.join(30)
    # and no job that was accepted is lost: each one ends, and succeeds
    for job_id in accepted:
        assert api.wait(job_id, timeout_s=90)["state"] == "succeeded"
    # nor is any process stuck: a VM is created, started and seen by its agent
    vm = api.run({**CREATE, "name": "afterstall"}, timeout_s=60)
    assert vm["state"] == "succeeded", vm
