"""Redis faults seen from the API (M8): a stalled or gone Redis gives a quick 503 with the
error shape and Retry-After, not a 500 or a hang, and the api recovers by itself."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until
from tests.integration.standalone import Reply, Standalone, standalone_api

pytestmark = pytest.mark.integration
TIMEOUT_S = 1.0  # the api's Redis socket timeouts: a stall shows within about this


@pytest.fixture
def own(workdir: Path) -> Iterator[Standalone]:
    with standalone_api(
        workdir,
        f"faults-{time.time_ns()}",
        redis_socket_timeout_s=str(TIMEOUT_S),
        redis_connect_timeout_s=str(TIMEOUT_S),
    ) as s:
        yield s


def assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503, reply
    assert set(reply.body) == {"error"}, reply.body
    assert set(reply.body["error"]) == {"code", "message", "details"}, reply.body
    assert reply.body["error"]["code"] == "redis_unavailable", reply.body
    assert int(reply.headers["Retry-After"]) >= 1, reply.headers


def timed(own: Standalone, method: str, path: str, body: object = None) -> tuple[Reply, float]:
    t0 = time.monotonic()
    reply = own.call(method, path, body, timeout_s=30)
    return reply, time.monotonic() - t0


def test_a_stalled_redis_gives_503_then_the_api_recovers(own: Standalone) -> None:
    # given: a working api
    assert own.call("GET", "/v1/jobs").status == 200
    request = {"kind": "noop"}
    # when: Redis stops answering (its socket stays open: only the timeouts notice)
    os.kill(own.redis.pid, signal.SIGSTOP)
    try:
        for method, path, body in (
            ("GET", "/v1/jobs", None),
            ("GET", "/healthz", None),
            ("POST", "/v1/jobs", request),
        ):
            reply, took_s = timed(own, method, path, body)
            # then: a 503 within a few timeouts, not a 500 and not a hang
            assert_unavailable(reply)
            assert took_s < 10 * TIMEOUT_S, f"{method} {path} took {took_s:.1f}s"
    finally:
        os.kill(own.redis.pid, signal.SIGCONT)
    # then: the api recovers by itself once Redis answers again
    wait_until(lambda: own.call("GET", "/healthz").status == 200, 30, "api to recover")
    listed = own.call("GET", "/v1/jobs")
    assert listed.status == 200
    assert listed.body["items"] == []  # the refused submission left nothing behind
    assert own.call("POST", "/v1/jobs", request).status == 202
    assert "Traceback" not in own.api.output()


def test_a_refused_connection_gives_503(own: Standalone) -> None:
    assert own.call("GET", "/v1/jobs").status == 200
    own.redis.stop()  # nothing listens on its port now: connection refused
    for path in ("/v1/jobs", "/healthz", "/v1/queue"):
        reply, took_s = timed(own, "GET", path)
        assert_unavailable(reply)
        assert took_s < 10 * TIMEOUT_S
    # nothing logged a traceback: these are expected, not internal errors
    assert "Traceback" not in own.api.output()
