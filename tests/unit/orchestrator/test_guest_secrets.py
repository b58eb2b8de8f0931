"""Secret values for guests at submission: sealed before anything is stored, redacted in
every view, fingerprinted with a keyed digest; refused without a key. And the agent's rate
bucket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from pydantic import SecretStr

from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.secrets import Sealer, Unsealable
from orchestrator.settings import Settings
from orchestrator.store import jobdoc, keys
from schemas.requests import SendMessages
from tasks.testing import Engine
from tests.unit.conftest import importing_engine
from workers.agent.channels import Bucket

SECRET = "hunter2-Zr9"


@pytest.fixture
def key() -> str:
    return Sealer.new_key()


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect, key: str) -> Iterator[Engine]:
    e = importing_engine(settings, guest_secret_key=SecretStr(key))
    job = e.submit({"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                    "name": "v1", "start": False})  # fmt: skip
    e.drain()
    assert e.get(job.id).state.value == "succeeded"
    yield e
    e.close()


def msg(value: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "vm.message", "vms": ["v1"],
            "messages": [{"key": "hostname", "value": "h1"},
                         {"key": "pw", "value": value, "secret": True}], **kw}  # fmt: skip


def test_a_secret_is_stored_sealed_and_shown_redacted(fleet: Engine, key: str) -> None:
    job = fleet.submit(msg(SECRET), idem_key="k1")
    stored = jobdoc.decode_json(fleet.run(fleet.redis.hget(keys.job(job.id), "doc")))
    assert SECRET not in stored and "sealed:v1:" in stored
    req = fleet.get(job.id).request
    assert isinstance(req, SendMessages)
    pw = req.messages[1]
    assert pw.value == "" and Sealer(key).unseal(pw.sealed or "") == SECRET
    shown = fleet.get(job.id).model_dump_json()
    assert SECRET not in shown and "sealed" not in shown and '"value":"********"' in shown
    # the idempotency record holds a keyed digest's fingerprint: the same body replays,
    # another secret under the same key is another body
    again, replayed = fleet.run(
        fleet.submitter.submit(
            fleet.get(job.id).request.model_validate(msg(SECRET)),
            submitted_by="test", idem_key="k1",
        )
    )  # fmt: skip
    assert replayed and again.id == job.id
    with pytest.raises(Conflict):
        fleet.submit(msg("another"), idem_key="k1")
    # another key cannot open it
    with pytest.raises(Unsealable):
        Sealer(Sealer.new_key()).unseal(pw.sealed or "")


def test_secrets_are_refused_without_a_key_and_sealed_values_from_clients(
    settings: Settings, conn: libvirt.virConnect
) -> None:
    e = importing_engine(settings)
    try:
        e.submit({"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                  "name": "v1", "start": False})  # fmt: skip
        e.drain()
        with pytest.raises(ValidationFailed) as no_key:
            e.submit(msg(SECRET))
        assert no_key.value.details[0][0] == ["body", "messages", 1, "secret"]
        with pytest.raises(ValidationFailed) as forged:
            e.submit({"kind": "vm.message", "vms": ["v1"],
                      "messages": [{"key": "a", "value": "", "sealed": "x"}]})  # fmt: skip
        assert forged.value.details[0][0] == ["body", "messages", 0, "sealed"]
        with pytest.raises(ValidationFailed) as nobody:
            e.submit({"kind": "vm.message", "vms": ["nope"],
                      "messages": [{"key": "a", "value": "b"}]})  # fmt: skip
        assert nobody.value.details == [(["body", "vms", 0], "no VM 'nope'")]
    finally:
        e.close()


def test_the_rate_bucket_takes_a_burst_then_the_rate() -> None:
    now = [0.0]
    b = Bucket(rate=10, burst=5, clock=lambda: now[0])
    assert [b.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.25  # 2.5 tokens
    assert [b.take() for _ in range(3)] == [True, True, False]
    now[0] += 100  # never more than the burst
    assert sum(b.take() for _ in range(10)) == 5


def test_a_hook_cannot_carry_a_secret() -> None:
    from pydantic import ValidationError

    from schemas.hooks import HookSpec

    with pytest.raises(ValidationError, match="cannot carry secret values"):
        HookSpec.model_validate(
            {"name": "h", "match": {"types": ["guest.event.*"]},
             "action": {"kind": "submit_job", "request": {
                 "kind": "vm.message", "vms": ["{vm_id}"],
                 "messages": [{"key": "pw", "value": "x", "secret": True}]}}}
        )  # fmt: skip
