"""The installed `vmorch` command against the real stack (redis-server, api, router, Celery
workers), as a person or a script runs it: flags for every kind, live progress, --json,
exit codes, followed streams, the least-privileged token per call, tokens and the lab."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.store import keys
from orchestrator.store.events import entry_fields, make_event
from schemas.api import Role
from tests.integration.conftest import Api, Proc, make_token, wait_until

pytestmark = pytest.mark.integration

VMORCH = str(Path(sys.executable).with_name("vmorch"))  # the installed entry point
CREATE = ["vm.create_from_template", "--pool", "pool-a", "--template", "tmpl-a"]
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(env: dict[str, str], api_url: str, tmp_path: Path, workdir: Path) -> dict[str, str]:
    """The environment of a user of this stack: its api, no token of their own yet, no lab
    details file (a private, empty lab directory), a private cache."""
    clean = {k: v for k, v in env.items() if not k.startswith("VMORCH_TOKEN")}
    return {
        **clean,
        "VMORCH_API_URL": api_url,
        "VMORCH_LAB_DIR": str(tmp_path / "lab"),
        "XDG_CACHE_HOME": str(workdir / "cli-cache"),
        "COLUMNS": "200",
    }


@pytest.fixture
def role_tokens(redis_url: str, fleet: Any) -> dict[str, str]:
    """A token of each role, named cli-<role>, as env vars the CLI reads."""
    return {
        f"VMORCH_TOKEN_{role.name}": make_token(redis_url, role, f"cli-{role.value}")
        for role in Role
    }


@pytest.fixture
def vmorch(cli_env: dict[str, str], role_tokens: dict[str, str]) -> Run:
    """Run `vmorch ARGS` (with every role's token known, unless `env` says otherwise)."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = {**cli_env, **role_tokens, **(env or {})}
        full = {k: v for k, v in full.items() if v is not None and v != "<unset>"}
        return subprocess.run(
            [VMORCH, *args], env=full, capture_output=True, text=True, timeout=timeout, input=stdin
        )

    return run


def emit(redis_url: str, type_: str, subject: str) -> None:
    """Append an event to the stream as an agent would."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        r.xadd(keys.EVENTS, entry_fields(make_event(type_, "test://cli", subject, {})))
    finally:
        r.close()


def test_submit_with_flags_waits_showing_progress_and_exits_0(
    vmorch: Run, api: Api, worker: Proc
) -> None:
    # when: a VM is created with flags (scalars, a bool, a repeated JSON list, a map) and --wait
    done = vmorch(
        "jobs",
        "submit",
        *CREATE,
        "--name",
        "cli1",
        "--vcpus",
        "1",
        "--memory-mib",
        "256",
        "--no-start",
        "--vnics",
        '{"network": "net-a"}',
        "--labels",
        "env=test",
        "--wait",
    )
    # then: it exits 0, having shown each step's progress as it went (a pipe: a line each)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "submitted (vm.create_from_template)" in out
    assert "running" in out and "define:" in out
    assert "succeeded" in out.splitlines()[-1]
    job_id = out.split()[1]
    job = api.job(job_id)
    assert job["state"] == "succeeded"
    assert job["request"]["labels"] == {"env": "test"}
    assert job["request"]["vnics"][0]["network"] == "net-a"
    vm = api.call("GET", "/v1/vms/cli1")
    assert (vm["vcpus"], vm["memory_mib"], vm["labels"]) == (1, 256, {"env": "test"})


def test_a_failing_job_exits_1_and_an_aborted_one_3(
    vmorch: Run, start_worker: Callable[..., Proc]
) -> None:
    # given: a worker on which the noop's second step fails for good
    start_worker(chaos_fail_steps='["noop:noop-2"]')
    # when / then: waiting for it exits with the failed code, and says why
    failed = vmorch("jobs", "submit", "noop", "--steps", "3", "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout.splitlines()[-1] and "noop-2" in failed.stdout
    # an aborted job: 3
    slow = json.loads(
        vmorch("jobs", "submit", "noop", "--steps", "5", "--step-delay-ms", "2000", "--json").stdout
    )
    aborted = vmorch("jobs", "abort", slow["id"], "--reason", "cli test", "--wait")
    assert aborted.returncode == 3, aborted.stdout + aborted.stderr


def test_wait_with_a_timeout_exits_4_and_the_job_goes_on(vmorch: Run, api: Api) -> None:
    # given: no worker, so the job stays queued
    started = time.monotonic()
    timed = vmorch("jobs", "submit", "noop", "--wait", "--timeout", "2s", "--json")
    assert timed.returncode == 4, timed.stderr
    assert 2 <= time.monotonic() - started < 20
    still = json.loads(timed.stdout)  # the job as it was, for scripts
    assert still["state"] == "queued" and api.job(still["id"])["state"] == "queued"
    assert json.loads(timed.stderr)["exit_code"] == 4


def test_refused_requests_exit_5_naming_the_field(vmorch: Run, api: Api) -> None:
    # a bad field, refused before sending
    bad = vmorch("jobs", "submit", *CREATE, "--name", "no spaces please")
    assert bad.returncode == 5
    assert "body.name" in bad.stderr and "(--name)" in bad.stderr
    # refused by the api: an unknown pool (422 naming it), an unknown job (404)
    unknown_pool = vmorch(
        "jobs",
        "submit",
        "vm.create_from_template",
        "--pool",
        "pool-zz",
        "--template",
        "tmpl-a",
        "--name",
        "x1",
        "--json",
    )
    assert unknown_pool.returncode == 5, unknown_pool.stderr
    doc = json.loads(unknown_pool.stderr)
    assert doc["status"] in (404, 409, 422) and doc["request_id"]
    missing = vmorch("jobs", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 5 and "refused (404" in missing.stderr
    # a usage error is argparse's 2; an api that does not answer is 6
    assert vmorch("jobs", "list", "--state", "sleeping").returncode == 2
    gone = vmorch("jobs", "list", env={"VMORCH_API_URL": "http://127.0.0.1:9"})
    assert gone.returncode == 6 and "cannot reach the api" in gone.stderr


def test_json_output_parses_for_scripts(vmorch: Run, api: Api, worker: Proc) -> None:
    done = vmorch("jobs", "submit", "noop", "--steps", "2", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)  # one document: the job at its end
    assert job["state"] == "succeeded" and len(job["steps"]) == 2
    listed = json.loads(vmorch("jobs", "list", "--kind", "noop", "--json").stdout)
    assert job["id"] in [j["id"] for j in listed["items"]]
    shown = json.loads(vmorch("jobs", "show", job["id"], "--json").stdout)
    assert shown["job"]["id"] == job["id"] and shown["children"] == []
    queue = json.loads(vmorch("--json", "queue").stdout)
    assert {"queues", "running", "waiting", "workers"} <= set(queue)
    pools = json.loads(vmorch("get", "pools", "--json").stdout)
    assert {p["name"] for p in pools} >= {"pool-a", "pool-b"}
    # the old form: the request as JSON, from the command line and from stdin
    legacy = vmorch("jobs", "submit", "--wait", '{"kind": "noop", "steps": 1}', "--json")
    assert legacy.returncode == 0 and json.loads(legacy.stdout)["state"] == "succeeded"
    piped = vmorch("jobs", "submit", "-", "--json", stdin='{"kind": "noop", "steps": 1}')
    assert piped.returncode == 0 and json.loads(piped.stdout)["kind"] == "noop"


class Lines:
    """The stdout of a running `vmorch` as JSON lines, read on a thread (a pipe's lines
    may sit in the reader's buffer, where select() does not see them)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def until(
        self, done: Callable[[dict[str, Any]], bool], timeout_s: float = 60
    ) -> Iterator[dict[str, Any]]:
        """The lines, decoded, up to the first for which `done` is true."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out reading JSON lines") from None
            err = self.proc.stderr.read() if not line and self.proc.stderr else ""
            assert line, f"the stream ended: {err}"
            doc = json.loads(line)
            yield doc
            if done(doc):
                return


@contextlib.contextmanager
def following(cli_env: dict[str, str], tokens: dict[str, str], *args: str) -> Iterator[Lines]:
    """`vmorch ARGS` running (a follow), its JSON lines; Ctrl-C at the end, as a user
    stops it (its exit code is then the process's returncode)."""
    with subprocess.Popen(
        [VMORCH, *args],
        env={**cli_env, **tokens},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield Lines(proc)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def test_events_follow_json_prints_a_job_s_events_as_json_lines(
    cli_env: dict[str, str], role_tokens: dict[str, str], api: Api, worker: Proc
) -> None:
    # given: a job, submitted before anyone follows (--after 0 reads from the start)
    job = api.submit({"kind": "noop", "steps": 2})
    args = ("events", "--follow", "--json", "--type", "job.*", "--subject", job["id"])
    with following(cli_env, role_tokens, *args, "--after", "0") as follow:
        # when: the command follows the stream
        got = list(follow.until(lambda e: e["type"] == "job.succeeded"))
    # then: one JSON event per line, in order, each resumable by its stream_id
    assert {e["subject"] for e in got} == {job["id"]}
    assert got[0]["type"] == "job.queued" and got[-1]["type"] == "job.succeeded"
    assert "job.running" in [e["type"] for e in got]
    assert all(e["stream_id"] for e in got)
    assert follow.proc.returncode == 130  # Ctrl-C


def test_jobs_watch_follows_one_job_and_the_queue_board(
    cli_env: dict[str, str], role_tokens: dict[str, str], vmorch: Run, api: Api, worker: Proc
) -> None:
    with following(cli_env, role_tokens, "jobs", "watch", "--json", "--duration", "60s") as board:
        snapshot = next(board.until(lambda _: True))
        assert snapshot["type"] == "queue.snapshot" and "queue" in snapshot["data"]
        job = api.submit({"kind": "noop", "steps": 2, "step_delay_ms": 200})

        def mine(e: dict[str, Any]) -> bool:
            return bool((e.get("data") or {}).get("job_id") == job["id"])

        ended = board.until(lambda e: mine(e) and e["type"] == "job.succeeded")
        seen = [e["type"] for e in ended if mine(e)]
        assert seen[-1] == "job.succeeded" and "job.running" in seen
    # one job's stream, as JSON lines: a snapshot first, its end last
    followed = vmorch("jobs", "watch", job["id"], "--json")
    assert followed.returncode == 0, followed.stderr
    lines = [json.loads(x) for x in followed.stdout.splitlines()]
    assert lines[0]["type"] == "job.snapshot" and lines[0]["data"]["state"] == "succeeded"
    # and for people, the job shown with its steps and its chain
    shown = vmorch("jobs", "show", job["id"])
    assert shown.returncode == 0 and "causal chain" in shown.stdout
    assert "noop-1" in shown.stdout and "noop-2" in shown.stdout


def test_show_tells_the_causal_chain_of_a_hook_s_job(
    vmorch: Run, api: Api, redis_url: str, worker: Proc
) -> None:
    status, made = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "cli-chain",
            "match": {"types": ["test.cli"], "unexpected_only": False},
            "action": {"kind": "submit_job", "request": {"kind": "noop", "steps": 1}},
        },
    )
    assert status == 201, made
    hook_id = made["hook"]["id"]
    emit(redis_url, "test.cli", "subject-1")
    runs = wait_until(lambda: api.call("GET", f"/v1/hooks/{hook_id}/runs"), 20)
    job_id = runs[0]["job_id"]
    api.wait(job_id)
    shown = vmorch("jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    chain = shown.stdout.split("causal chain")[1]
    assert chain.index("event test.cli") < chain.index("hook cli-chain") < chain.index(job_id)
    doc = json.loads(vmorch("jobs", "show", job_id, "--json").stdout)
    assert doc["caused_by"]["hook"]["name"] == "cli-chain"
    assert doc["caused_by"]["hook_run"]["event_type"] == "test.cli"
    runs_out = vmorch("hooks", "runs", hook_id)
    assert runs_out.returncode == 0 and job_id in runs_out.stdout
    # an admin runs the hook's action again with the run's event
    retried = vmorch("hooks", "retry", hook_id, runs[0]["id"])
    assert retried.returncode == 0, retried.stderr

    def two_runs() -> list[dict[str, Any]] | None:
        now = api.call("GET", f"/v1/hooks/{hook_id}/runs")
        return list(now) if len(now) > 1 else None

    assert wait_until(two_runs, 20)[0]["retry_of"] == runs[0]["id"]


def test_each_call_uses_the_least_token_its_route_needs(
    vmorch: Run, api: Api, redis_url: str, worker: Proc
) -> None:
    # given: a viewer's token that works, and an admin's that does not
    viewer = make_token(redis_url, Role.VIEWER, "only-viewer")
    tokens = {
        "VMORCH_TOKEN_VIEWER": viewer,
        "VMORCH_TOKEN_OPERATOR": "<unset>",
        "VMORCH_TOKEN_ADMIN": "vmo_not-a-token",
    }
    # then: reads go with the viewer's (the admin's would be refused: 401)
    assert vmorch("jobs", "list", env=tokens).returncode == 0
    me = json.loads(vmorch("whoami", "--json", env=tokens).stdout)
    assert (me["name"], me["role"]) == ("only-viewer", "viewer")
    # and a write, needing more, goes with the stronger one, here refused
    refused = vmorch("jobs", "submit", "noop", env=tokens)
    assert refused.returncode == 5 and "401" in refused.stderr

    # given: a viewer and an operator: reads and writes work, admin-only calls are refused
    operator = make_token(redis_url, Role.OPERATOR, "only-operator")
    two = {**tokens, "VMORCH_TOKEN_OPERATOR": operator, "VMORCH_TOKEN_ADMIN": "<unset>"}
    submitted = vmorch("jobs", "submit", "vm.start", "--vm", "nosuchvm", "--json", env=two)
    assert submitted.returncode == 5  # refused for the VM, not for the role:
    assert json.loads(submitted.stderr)["status"] == 404
    audit = vmorch("audit", env=two)
    assert audit.returncode == 5 and "needs admin" in audit.stderr
    records = api.audit(action="jobs.create")
    assert records[0]["token_name"] == "only-operator"

    # given: all three (the fixture's cli-viewer, cli-operator, cli-admin)
    done = vmorch("jobs", "submit", "noop", "--wait", "--json")  # noop: admins only
    assert done.returncode == 0, done.stderr
    writes = api.audit(action="jobs.create", target=json.loads(done.stdout)["id"])
    assert [(r["token_name"], r["status"]) for r in writes] == [("cli-admin", 202)]
    first_try = api.audit(action="jobs.create")[1]  # the route's role first: refused
    assert (first_try["token_name"], first_try["status"]) == ("cli-operator", 403)
    paused = vmorch("queue", "pause", "vmorch.noop", "--reason", "cli test")
    assert paused.returncode == 0, paused.stderr
    assert api.audit(action="queues.put")[0]["token_name"] == "cli-admin"
    assert vmorch("queue", "accept", "vmorch.noop", "--reason", "done").returncode == 0
    whoami = json.loads(vmorch("whoami", "--all", "--json").stdout)
    assert [(w["known_as"], w["name"]) for w in whoami] == [
        ("viewer", "cli-viewer"),
        ("operator", "cli-operator"),
        ("admin", "cli-admin"),
    ]


def test_tokens_with_an_expiry_on_redis_and_the_old_alias(
    vmorch: Run, cli_env: dict[str, str], api: Api
) -> None:
    made = vmorch(
        "tokens", "create", "--name", "ci", "--role", "viewer", "--expires-in", "12h", "--json"
    )
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    expires = datetime.fromisoformat(doc["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(hours=12)) < timedelta(minutes=1)
    only = {"VMORCH_TOKEN": doc["token"]}
    assert json.loads(vmorch("whoami", "--json", env=only).stdout)["name"] == "ci"
    listed = json.loads(vmorch("token", "list", "--json").stdout)  # the old name
    assert "ci" in [t["name"] for t in listed]
    assert vmorch("tokens", "create", "--name", "x", "--role", "root").returncode == 2
    assert (
        vmorch(
            "tokens", "create", "--name", "x", "--role", "viewer", "--expires-in", "soon"
        ).returncode
        == 2
    )
    assert vmorch("tokens", "revoke", doc["id"]).returncode == 0
    assert vmorch("whoami", env=only).returncode == 5
    assert vmorch("tokens", "revoke", doc["id"]).returncode == 5
    audited = api.audit(action="tokens.*")
    assert [(r["action"], r["status"], r["token_id"]) for r in audited[:3]] == [
        ("tokens.delete", 404, "local"),
        ("tokens.delete", 204, "local"),
        ("tokens.create", 201, "local"),
    ]


def test_lab_status_without_a_lab(vmorch: Run) -> None:
    status = vmorch("lab", "status")
    assert status.returncode == 1 and "vmorch is not running" in status.stdout
    assert json.loads(vmorch("lab", "status", "--json").stdout)["running"] is False


def test_up_quiet_writes_every_role_s_token_and_lab_status_reads_them(
    start_up: Any, cli_env: dict[str, str]
) -> None:
    # given: `vmorch up --quiet`
    up = start_up("--quiet")
    state = up.state()
    # then: no token printed, and one of each role in the details file
    assert state["admin_token"] not in up.stdout()
    assert "admin token: (in the details file)" in up.stdout()
    assert set(state["tokens"]) == {"viewer", "operator", "admin"}
    assert state["tokens"]["admin"] == state["admin_token"]
    # a user of the lab needs nothing but the lab directory
    env = {k: v for k, v in up.env.items() if not k.startswith("VMORCH_TOKEN")}
    env["XDG_CACHE_HOME"] = cli_env["XDG_CACHE_HOME"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VMORCH, *args], env=env, capture_output=True, text=True, timeout=120)

    status = run("lab", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    doc = json.loads(status.stdout)
    assert doc["healthy"] and doc["api_health"] == "ok" and doc["api_url"] == state["api_url"]
    assert {p["name"] for p in doc["processes"]} >= {"api", "router", "worker"}
    assert all(p["alive"] for p in doc["processes"])
    assert state["redis_url"] not in status.stdout  # its password is not shown
    human = run("lab", "status")
    assert "healthy" in human.stdout and "srv-a1" in human.stdout
    whoami = json.loads(run("whoami", "--all", "--json").stdout)
    assert [w["role"] for w in whoami] == ["viewer", "operator", "admin"]
    done = run("jobs", "submit", "noop", "--steps", "1", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert up.down().returncode == 0
    assert run("lab", "status").returncode == 1


def test_the_commands_for_hooks_alerts_and_queues_answer(vmorch: Run, api: Api) -> None:
    for args in (
        ("hooks", "list"),
        ("alerts", "list", "--all"),
        ("queue",),
        ("get", "servers"),
        ("get", "templates"),
        ("get", "vms"),
        ("events", "--limit", "5"),
        ("audit", "--limit", "5"),
    ):
        human, machine = vmorch(*args), vmorch(*args, "--json")
        assert human.returncode == machine.returncode == 0, (args, human.stderr)
        json.loads(machine.stdout)
    hooks = json.loads(vmorch("hooks", "list", "--json").stdout)
    builtin = next(h for h in hooks if h.get("builtin"))
    shown = vmorch("hooks", "show", builtin["id"])
    assert shown.returncode == 0 and builtin["name"] in shown.stdout


def test_retry_and_recover_from_the_command_line(
    vmorch: Run, api: Api, start_worker: Callable[..., Proc]
) -> None:
    # given: a job failed by a fault that then goes away
    faulty = start_worker(chaos_fail_steps='["noop:noop-2"]')
    failed = api.run({"kind": "noop", "steps": 2})
    assert failed["state"] == "failed"
    faulty.stop()
    start_worker()
    # when: it is retried, waiting for the new job
    retried = vmorch("jobs", "retry", failed["id"], "--reason", "fault gone", "--wait")
    # then: the retry succeeds, and show tells which job it retries
    assert retried.returncode == 0, retried.stdout + retried.stderr
    new_id = api.job(failed["id"])["retried_as"]
    chain = vmorch("jobs", "show", new_id).stdout.split("causal chain")[1]
    assert chain.index(f"retry of job {failed['id']}") < chain.index(f"this job {new_id}")
    # a stuck job is ended by hand: a reason is required, and an admin's token
    stuck = api.submit({"kind": "noop", "steps": 1, "wait_for": "test.never"})
    api.wait(stuck["id"], {"waiting"})
    assert vmorch("jobs", "recover", stuck["id"], "--state", "succeeded").returncode == 2
    no_admin = {"VMORCH_TOKEN_ADMIN": "<unset>"}
    denied = vmorch("jobs", "recover", stuck["id"], "--state", "succeeded", "--reason", "x",
                    env=no_admin)  # fmt: skip
    assert denied.returncode == 5 and "403" in denied.stderr
    done = vmorch("jobs", "recover", stuck["id"], "--state", "succeeded", "--reason", "by hand",
                  "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recovery"]["reason"] == "by hand"
    assert api.job(stuck["id"])["state"] == "succeeded"
