"""The fleet's MAC registry, on fakeredis and redis-server: every MAC handed out once."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from orchestrator.errors import Conflict
from orchestrator.settings import Settings
from orchestrator.store.macs import MacRange, MacRangeExhausted, MacStore
from tasks.testing import Engine
from tests.unit.conftest import MakeRedis

TINY = MacRange.parse("52:54:00:00:00:01-52:54:00:00:00:03")


def test_macs_come_from_the_range_in_turn_once_each_and_all_or_none(store_engine: Engine) -> None:
    macs = MacStore(store_engine.redis, TINY)
    run = store_engine.run
    assert run(macs.claim("vm-a", [None, None])) == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    # a MAC asked for is checked against all in use, inside the range or not
    with pytest.raises(Conflict) as e:
        run(macs.claim("vm-b", [None, "52:54:00:00:00:02"]))
    assert e.value.details == [(["body", "vnics", 1, "mac"], "in use by VM vm-a")]
    assert run(macs.claim("vm-b", ["0A:00:00:00:00:09"])) == ["0a:00:00:00:00:09"]
    # two more than the range has left: refused, and nothing of it kept
    with pytest.raises(MacRangeExhausted):
        run(macs.claim("vm-c", [None, None]))
    assert run(macs.holder("52:54:00:00:00:03")) is None
    assert run(macs.claim("vm-c", [None])) == ["52:54:00:00:00:03"]
    # claimed again by its holder: the same; released: handed out again
    assert run(macs.claim("vm-b", ["0a:00:00:00:00:09"])) == ["0a:00:00:00:00:09"]
    assert run(macs.release("vm-x", ["52:54:00:00:00:01"])) == 0  # not its MAC
    assert run(macs.release("vm-a", ["52:54:00:00:00:01", "52:54:00:00:00:02"])) == 2
    assert run(macs.claim("vm-d", [None])) == ["52:54:00:00:00:01"]  # the cursor wrapped
    assert run(macs.in_use()) == 3  # vm-b, vm-c, vm-d


def test_concurrent_claims_never_share_a_mac(backend: MakeRedis) -> None:
    async def go() -> list[str]:
        r = backend()
        try:
            macs = MacStore(r, MacRange.parse(Settings().mac_range))
            got = await asyncio.gather(*(macs.claim(f"vm-{i}", [None, None]) for i in range(50)))
            return [m for pair in got for m in pair]
        finally:
            await r.aclose()

    got = asyncio.run(go())
    assert len(got) == 100 and len(set(got)) == 100
    assert all(m.startswith("52:54:00:") for m in got)


@pytest.mark.parametrize(
    "bad",
    [
        "52:54:00:00:00:09-52:54:00:00:00:01",
        "52:54:00:00:00:01",
        "01:00:5e:00:00:00-01:00:5e:00:00:ff",
    ],
)
def test_a_bad_mac_range_setting_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="mac_range"):
        Settings(mac_range=bad)
