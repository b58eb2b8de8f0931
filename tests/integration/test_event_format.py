"""The events vmorch stores are CloudEvents 1.0: checked against the official JSON schema
(tests/data/cloudevents-1.0.schema.json, see tests/data/README.md), formats included, and
with no null attributes (the schema allows null for optional ones; the spec does not)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from jsonschema import Draft7Validator, FormatChecker

from orchestrator.store import keys
from tests.integration.conftest import Api, Proc

pytestmark = pytest.mark.integration
SCHEMA = json.loads(
    (Path(__file__).parents[1] / "data" / "cloudevents-1.0.schema.json").read_text()
)
# CloudEvents 1.0, "Attribute Naming Convention": lower-case ASCII letters and digits
ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")


def stored_events(redis_url: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [json.loads(fields["e"]) for _, fields in r.xrange(keys.EVENTS)]
    finally:
        r.close()


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    Draft7Validator.check_schema(SCHEMA)
    checker = FormatChecker()
    # formats are only checked when their packages are installed: make sure they are
    assert not checker.conforms("yesterday", "date-time")
    assert not checker.conforms("not a uri\\", "uri-reference")
    return Draft7Validator(SCHEMA, format_checker=checker)


def test_stored_events_are_cloudevents(
    api: Api, worker: Proc, redis_url: str, validator: Draft7Validator
) -> None:
    # given: jobs that succeed, fail and are aborted
    api.run({"kind": "noop", "steps": 2})
    api.run({"kind": "noop", "steps": 2, "fail_at": 1})
    queued = api.submit({"kind": "noop", "steps": 20, "step_delay_ms": 1000})
    api.request("POST", f"/v1/jobs/{queued['id']}/abort", {"reason": "enough"})
    api.wait(queued["id"])
    # when: the stream is read as a consumer would
    events = stored_events(redis_url)
    types = {e["type"] for e in events}
    assert {"job.succeeded", "job.failed", "job.aborted"} <= types, types
    # then: each is a valid CloudEvent with no null attribute
    for event in events:
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(event)]
        assert not errors, (event, errors)
        assert event["specversion"] == "1.0"
        nulls = [k for k, v in event.items() if v is None]
        assert not nulls, (event, nulls)
        bad_names = [k for k in event if not ATTRIBUTE_NAME.fullmatch(k)]
        assert not bad_names, (event, bad_names)


def test_the_schema_check_can_fail(validator: Draft7Validator) -> None:
    good = {"specversion": "1.0", "id": "1", "source": "vmorch://api", "type": "job.queued"}
    assert validator.is_valid(good)
    for bad in ({**good, "time": "yesterday"}, {**good, "id": ""}, {"id": "1", "type": "x"}):
        assert not validator.is_valid(bad), bad
