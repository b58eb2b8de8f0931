"""Logs (text and JSON lines, with context, secrets blanked) and metrics (what a job run
counts, and an exposition `promtool check metrics` accepts)."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from orchestrator import logs
from orchestrator.metrics import (
    JOB_TRANSITIONS,
    STEP_DURATION,
    FleetState,
    event_type_label,
    exposition,
)
from orchestrator.settings import Settings
from tasks.testing import Engine

TOKEN = "vmo_" + "x" * 43


@pytest.mark.parametrize(
    ("line", "kept", "gone"),
    [
        (f"token {TOKEN} used", "token", TOKEN),
        ("Authorization: Bearer abc.def.ghi", "Authorization", "abc.def.ghi"),
        ("redis://:pa55word@127.0.0.1:6379/0", "127.0.0.1:6379", "pa55word"),
        ('{"secret": "hunter2", "token_name": "ops"}', '"token_name": "ops"', "hunter2"),
        ("webhook_secret=s3cr3t job=abc", "job=abc", "s3cr3t"),
    ],
)
def test_credentials_are_blanked_and_the_rest_kept(line: str, kept: str, gone: str) -> None:
    out = logs.redact(line)
    assert gone not in out and kept in out and logs.MASK in out


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_bound_context_and_no_secret(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    logs.setup(Settings(redis_url="redis://unused", log_format="json"))
    log = logging.getLogger("vmorch.test")
    with logs.bound(job_id="j1", step="disks", server="srv-1"):
        log.info("created volume with token %s", TOKEN)
    log.warning("after the step")
    first, second = (json.loads(x) for x in capsys.readouterr().err.splitlines())
    assert (first["job_id"], first["step"], first["server"]) == ("j1", "disks", "srv-1")
    assert first["level"] == "info" and first["logger"] == "vmorch.test"
    assert TOKEN not in first["event"] and logs.MASK in first["event"]
    assert "job_id" not in second  # the context ended with the block


def test_text_lines_end_with_the_context(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    logs.setup(Settings(redis_url="redis://unused"))
    with logs.bound(job_id="j2", vm=None):
        logging.getLogger("vmorch.test").info("password=letmein")
    line = capsys.readouterr().err.strip()
    assert line.endswith("password=******** job_id=j2") and "vm=" not in line


def _sample(metric: object, **labels: str) -> float:
    for family in metric.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.labels == labels and not s.name.endswith("_created"):
                return float(s.value)
    return 0.0


def test_a_job_run_counts_its_transitions_and_step_durations(engine: Engine) -> None:
    succeeded = _sample(JOB_TRANSITIONS, kind="noop", state="succeeded")
    steps = _sample(STEP_DURATION, kind="noop", step="noop-2", outcome="done", le="+Inf")
    engine.submit({"kind": "noop", "steps": 2})
    engine.drain()
    assert _sample(JOB_TRANSITIONS, kind="noop", state="succeeded") == succeeded + 1
    assert (
        _sample(STEP_DURATION, kind="noop", step="noop-2", outcome="done", le="+Inf") == steps + 1
    )


def test_guests_cannot_make_event_labels_without_bound() -> None:
    assert event_type_label("guest.event.anything-a-guest-says") == "guest.event.*"
    assert event_type_label("vm.lifecycle.started") == "vm.lifecycle.started"


def test_the_exposition_passes_promtool() -> None:
    state = FleetState(
        jobs_by_state={"queued": 2, "waiting": 1},
        queue_depth={"vmorch.pool.a": 2},
        queue_oldest_age_s={"vmorch.pool.a": 3.5},
        queue_held={"vmorch.pool.a": 0},
        queue_mode={"vmorch.pool.a": "pause"},
        workers_seen=1,
        alerts_open=0,
        events_stream_length=10,
    )
    text = exposition(state)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert checked.returncode == 0, checked.stderr.decode()
    assert b'vmorch_queue_mode{mode="pause",queue="vmorch.pool.a"} 1.0' in text
    assert b"vmorch_waits_pending 1.0" in text


def test_libvirt_errors_are_counted_by_their_code(conn: object) -> None:
    from orchestrator.metrics import LIBVIRT_ERRORS
    from workers.hypervisor.adapter import Hypervisor

    before = _sample(LIBVIRT_ERRORS, code="no_domain")
    hv = Hypervisor("test:///default", retry_s=1)
    assert hv.domain_state("00000000-0000-0000-0000-00000000abcd") is None
    hv.close()
    assert _sample(LIBVIRT_ERRORS, code="no_domain") == before + 1
