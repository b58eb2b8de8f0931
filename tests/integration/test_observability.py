"""Metrics and logs of a whole `vmorch up` (api, router, workers, agents), as an operator
scrapes and reads them: every process's /metrics passes `promtool check metrics` and
counts what happened; JSON log lines carry their job, step, VM and server; no secret the
run used appears in any log."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.upkit import Up


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def _value(text: str, prefix: str) -> float:
    """The sum of the samples whose line starts with `prefix` (name{labels...)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_metrics_of_every_process_and_json_logs_without_secrets(start_up: Any) -> None:
    up: Up = start_up(env={"VMORCH_LOG_FORMAT": "json"})
    state, api = up.state(), up.api
    # secrets this run uses: tokens, the lab Redis' password, a webhook's, a guest secret
    status, hook = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "to-nowhere",
            "match": {"types": ["vm.lifecycle.*"]},
            "action": {"kind": "webhook", "url": "http://127.0.0.1:9/hook", "retries": 0},
        },
    )
    assert status == 201
    status, made = api.request("POST", "/v1/tokens", {"name": "scraper", "role": "viewer"})
    assert status == 201
    created = api.run(
        {
            "kind": "vm.create_from_template",
            "pool": state["pools"][0],
            "template": "tmpl-a",
            "name": "web1",
            "vcpus": 1,
            "memory_mib": 256,
        }
    )
    assert created["state"] == "succeeded", created
    guest_secret = "guest-s3cret-value-123"
    status, message = api.request(
        "POST",
        "/v1/vms/web1/messages",
        {"messages": [{"key": "db.password", "value": guest_secret, "secret": True}]},
    )
    assert status == 202, message
    api.request("POST", f"/v1/jobs/{message['id']}/abort", {"reason": "no guest here"})
    api.wait(message["id"])
    redis_password = state["redis_url"].split("://:", 1)[1].split("@", 1)[0]
    secrets = [
        *state["tokens"].values(),
        made["token"],
        hook["secret"],
        guest_secret,
        redis_password,
    ]

    # metrics: one URL per process, each accepted by promtool
    urls: dict[str, str] = state["metrics"]
    assert {"api", "router", "worker", "worker-noop"} <= set(urls)
    assert any(name.startswith("agent-") for name in urls)
    scraped = {name: _scrape(url) for name, url in urls.items()}
    for name, text in scraped.items():
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text.encode(), capture_output=True
        )
        assert checked.returncode == 0, (name, checked.stderr.decode())
    api_text, worker = scraped["api"], scraped["worker"]
    assert _value(api_text, 'vmorch_jobs{state="succeeded"}') >= 1
    assert 'vmorch_queue_depth{queue="vmorch.pool.' in api_text
    assert "vmorch_workers_seen" in api_text and "vmorch_waits_pending" in api_text
    kind = 'kind="vm.create_from_template"'
    assert _value(worker, f'vmorch_job_transitions_total{{{kind},state="succeeded"}}') == 1
    assert _value(worker, f"vmorch_step_duration_seconds_count{{{kind}") >= 3
    assert _value(scraped["router"], 'vmorch_events_total{type="job.succeeded"}') >= 1
    agent = next(text for name, text in scraped.items() if name.startswith("agent-"))
    assert "# TYPE vmorch_agent_reconnects_total counter" in agent

    # logs: JSON lines with their context, and none of the secrets anywhere
    logs = {
        p.name: p.read_text(errors="replace")
        for p in (Path(state["lab_dir"]) / "logs").glob("*.log")
    }
    assert {"api.log", "worker.log", "router.log"} <= set(logs)
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {name}"
    records = [json.loads(line) for line in logs["worker.log"].splitlines() if line.startswith("{")]
    steps = [r for r in records if r.get("job_id") == created["id"] and r.get("step")]
    assert steps, "no worker line names the job and its step"
    assert any(r.get("server") for r in steps) and all(r.get("vm") == "web1" for r in steps)
    agent_log = next(text for name, text in logs.items() if name.startswith("agent-"))
    agent_lines = [json.loads(x) for x in agent_log.splitlines() if x.startswith("{")]
    assert agent_lines and all(r.get("server") for r in agent_lines)
    api_lines = [json.loads(x) for x in logs["api.log"].splitlines() if x.startswith("{")]
    assert all("level" in r and "timestamp" in r for r in api_lines)
