"""The web dashboard in a real headless Chromium on the real stack: it follows jobs, VMs and
events live (no reload), offers each role only what it may do, and shows untrusted text as
text under a strict Content-Security-Policy.

Screenshots of the main pages are saved to $VMORCH_SCREENSHOTS (scripts/screenshots sets
it to docs/screenshots), else to the session's work directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.lab.process import free_port
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import entry_fields, make_event
from schemas.api import Role
from schemas.inventory import Inventory
from tests.integration.browser import Browser, have_chromium
from tests.integration.conftest import Api, Proc, WebhookReceiver, make_token, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_chromium(), reason="needs chromium and chromium-driver"),
]

LONG_NOOP = {"kind": "noop", "steps": 10, "step_delay_ms": 1500}
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@pytest.fixture(scope="module")
def browser(api_url: str, workdir: Path) -> Iterator[Browser]:
    shots = Path(os.environ.get("VMORCH_SCREENSHOTS") or workdir / "screenshots")
    b = Browser(api_url, shots)
    yield b
    b.close()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def emit(redis_url: str, type_: str, subject: str | None, data: dict[str, Any]) -> str:
    """Append an event to the stream as an agent would; its stream id."""
    event = make_event(type_, "test://dashboard", subject, data)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return str(r.xadd(keys.EVENTS, entry_fields(event)))
    finally:
        r.close()


def raise_alert(redis_url: str, subject: str, message: str) -> str:
    async def run() -> str:
        settings = Settings(redis_url=redis_url)
        client = connect(settings)
        alert = await Services.build(settings, client).alerts.raise_alert(
            "vm.ha.exhausted", subject, message
        )
        await client.aclose()
        return alert.id

    return asyncio.run(run())


def job_state_on_page(b: Browser, job_id: str) -> str | None:
    return b.attribute(f'tr[data-job="{job_id}"]', "data-state")


# --- served pages -------------------------------------------------------------------------


def test_the_pages_are_public_and_sent_with_strict_headers(api_url: str) -> None:
    status, headers, body = fetch(api_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/ui/js/main.js"' in body
    csp = headers["Content-Security-Policy"]
    for rule in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                 "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'",
                 "require-trusted-types-for 'script'"):  # fmt: skip
        assert rule in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    # scripts and styles: public, typed, with the same headers, and revalidated by ETag
    status, headers, _ = fetch(api_url + "/ui/js/main.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert headers["Content-Security-Policy"] == csp
    assert fetch(api_url + "/ui/js/main.js", {"If-None-Match": headers["ETag"]})[0] == 304
    assert fetch(api_url + "/ui/css/dashboard.css")[1]["Content-Type"].startswith("text/css")
    # only the files shipped: nothing else of the file system, however the path is written
    for path in ("/ui/nothing.js", "/ui/../__init__.py", "/ui/%2e%2e/__init__.py",
                 "/ui/js/../../__init__.py", "/ui/"):  # fmt: skip
        assert fetch(api_url + path)[0] == 404, path
    # the data stays behind the token; the dashboard is not part of the API's document
    assert fetch(api_url + "/v1/jobs")[0] == 401
    _, _, doc = fetch(api_url + "/openapi.json")
    paths = json.loads(doc)["paths"]
    assert all(p.startswith("/v1/") or p == "/healthz" for p in paths), sorted(paths)


# --- the event stream reader -------------------------------------------------------------

PARSE_CASES = r"""
const { SseParser } = await import("/ui/js/sse.js");
const run = (chunks) => { const p = new SseParser(); return chunks.flatMap((c) => p.push(c)); };
return [
  // a CRLF split across chunks is one line end; data lines join with LF; comments skipped
  run([": connected\r", "\nid: 1-0\r\nevent: a\r\ndata: x\r", "\ndata: y\r\n\r\n"]),
  // the id carries on to events without one; no data, no event; CR alone ends lines (a
  // last CR waits for the next chunk: it may be half of a CRLF)
  run(["id: 7-1\nevent: first\ndata: {}\n\nevent: gap\ndata: g\n\nevent: nodata\n\n",
       "data\rdata:  two spaces\r\r", ": keep-alive\n"]),
];
"""


def test_the_event_stream_reader_parses_and_resumes_where_it_was(
    api: Api, redis_url: str, browser: Browser
) -> None:
    browser.sign_in(make_token(redis_url, Role.VIEWER, "vic"))
    parsed = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"(async () => {{ {PARSE_CASES} }})().then(done, (e) => done(String(e)));"
    )
    assert parsed == [
        [{"id": "1-0", "type": "a", "data": "x\ny"}],
        [
            {"id": "7-1", "type": "first", "data": "{}"},
            {"id": "7-1", "type": "gap", "data": "g"},
            {"id": "7-1", "type": "message", "data": "\n two spaces"},
        ],
    ]
    # a stream whose connection drops resumes after the last id it got (Last-Event-ID):
    # what came meanwhile arrives once, nothing twice
    browser.script(
        r"""
        const s = (window.__sse = { seen: [], calls: [], live: 0 });
        const real = window.fetch;
        window.fetch = async (url, init) => {
          s.calls.push(init.headers["Last-Event-ID"] ?? null);
          const res = await real(url, init);
          if (s.calls.length > 1) return res;
          const reader = res.body.getReader();  // the first connection drops after an event
          let text = "";
          const body = new ReadableStream({ async pull(c) {
            const { value, done } = await reader.read();
            if (done) return c.close();
            c.enqueue(value);
            text += new TextDecoder().decode(value);
            if (/^id: /m.test(text) && text.endsWith("\n\n")) { reader.cancel(); c.close(); }
          } });
          return new Response(body, { status: res.status, headers: res.headers });
        };
        import("/ui/js/sse.js").then(({ EventStream }) => new EventStream(
          "/v1/events/stream?type=dash.*",
          { token: arguments[0], onEvent: (e) => s.seen.push([e.id, e.type]),
            onStatus: (st) => { if (st === "live") s.live += 1; } }).start());
        """,
        browser.script("return JSON.parse(sessionStorage.getItem('vmorch.session')).token"),
    )
    wait_until(lambda: browser.script("return window.__sse.live") == 1, 10, "the stream")
    first = emit(redis_url, "dash.one", None, {})
    wait_until(lambda: browser.script("return window.__sse.seen.length") == 1, 10, "dash.one")
    second = emit(redis_url, "dash.two", None, {})
    wait_until(lambda: browser.script("return window.__sse.seen.length") >= 2, 10, "dash.two")
    assert browser.script("return window.__sse.calls") == [None, first]
    assert browser.script("return window.__sse.seen") == [[first, "dash.one"], [second, "dash.two"]]


# --- the queue and a job ------------------------------------------------------------------


def test_a_submitted_job_shows_up_live_and_succeeds_without_a_reload(
    api: Api, redis_url: str, browser: Browser, start_worker: Callable[..., Proc]
) -> None:
    start_worker()
    browser.sign_in(make_token(redis_url, Role.ADMIN, "ada"))
    browser.wait_for("#whoami", text="ada")
    browser.wait_for(".live-state .badge", text="live")
    browser.mark()
    # beside it: one that fails, one that waits for an event, and more than the worker runs
    failed = api.submit({"kind": "noop", "steps": 2, "fail_at": 2})
    waiter = api.submit({"kind": "noop", "steps": 1, "wait_for": "dash.go", "wait_timeout_s": 600})
    job = api.submit({"kind": "noop", "steps": 4, "step_delay_ms": 600})
    for _ in range(3):
        api.submit({"kind": "noop", "steps": 2, "step_delay_ms": 1000})
    # it appears, runs (a progress bar and its step) and succeeds, from events alone
    seen: set[str] = set()

    def reached(state: str) -> bool:
        seen.add(job_state_on_page(browser, job["id"]) or "")
        return state in seen

    wait_until(lambda: reached("running"), 20, "the job running on the page")
    browser.wait_for(f'tr[data-job="{job["id"]}"] progress')
    browser.wait_for("section.card", text="Workers seen (1)")
    browser.wait_for(
        f'tr[data-job="{failed["id"]}"][data-state=failed]', text="simulated permanent failure"
    )
    waiting = browser.text(f'tr[data-job="{waiter["id"]}"][data-state=waiting]')
    assert "dash.go" in waiting and re.search("in (9|10) min", waiting)  # what for, until when
    browser.shot("queue")
    wait_until(lambda: reached("succeeded"), 30, "the job succeeded on the page")
    assert browser.still_marked(), "the page was reloaded"
    assert api.job(job["id"])["state"] == "succeeded"
    # its page: four steps done, with attempts and timings, and its events
    browser.click(f'tr[data-job="{job["id"]}"] a')
    browser.wait_for(".headline[data-state=succeeded]")
    assert browser.attributes("tr[data-step]", "data-state") == ["done"] * 4
    browser.wait_for("table.events tr[data-type='job.succeeded']")
    assert browser.text(".headline .pct") == "100 %"
    assert browser.still_marked() and not browser.errors()


def test_abort_from_the_page_and_only_what_each_role_may_do_is_offered(
    api: Api, redis_url: str, browser: Browser, start_worker: Callable[..., Proc]
) -> None:
    start_worker()
    job = api.submit(LONG_NOOP)
    api.wait(job["id"], {"running"})
    page = f"#/jobs/{job['id']}"
    # a viewer reads, and is offered nothing that changes anything
    browser.sign_in(make_token(redis_url, Role.VIEWER, "vic"))
    assert not browser.all("[data-action=submit]")
    browser.wait_for(f'tr[data-job="{job["id"]}"][data-state=running]')
    browser.go(page)
    browser.wait_for(".headline[data-state=running]")
    browser.wait_for("tr[data-step]")
    assert not browser.all("[data-action=abort]") and not browser.all("[data-action=recover]")
    assert not browser.all("#nav a[data-page=audit]")
    # an operator is offered the abort (not an admin's recover), and it works from the page
    browser.sign_in(make_token(redis_url, Role.OPERATOR, "olga"))
    browser.wait_for("[data-action=submit]")
    browser.go(page)
    browser.wait_for(".headline[data-state=running]")
    browser.mark()
    assert not browser.all("[data-action=recover]")
    browser.shot("job")
    browser.click("[data-action=abort]")
    browser.answer({"reason": "changed my mind"})
    browser.wait_for(".headline[data-state=aborted]", 30)
    assert browser.still_marked()
    final = api.job(job["id"])
    assert final["state"] == "aborted"
    # the undone and skipped steps are shown as the journal has them
    on_page = browser.attributes("tr[data-step]", "data-state")
    assert on_page == [s["state"] for s in final["steps"]]
    assert not browser.errors()


def test_retry_recover_and_queue_controls_from_the_pages_are_audited(
    api: Api, redis_url: str, browser: Browser, start_worker: Callable[..., Proc]
) -> None:
    start_worker()
    failed = api.submit({"kind": "noop", "steps": 2, "fail_at": 2})
    stuck = api.submit({"kind": "noop", "steps": 1, "wait_for": "dash.never"})
    api.wait(failed["id"])
    api.wait(stuck["id"], {"waiting"})
    # the failed job is retried: a new job, linked both ways, shown at once (an admin: the
    # retry of a noop job is a noop job, for admins only)
    browser.sign_in(make_token(redis_url, Role.ADMIN, "ada"))
    browser.go(f"#/jobs/{failed['id']}")
    browser.wait_for(".headline[data-state=failed]")
    browser.click("[data-action=retry]")
    browser.answer({"reason": "the disk is back"})
    wait_until(lambda: failed["id"] not in browser.route(), 10, "the retry's own page")
    retry_id = browser.route().removeprefix("#/jobs/")
    assert api.job(failed["id"])["retried_as"] == retry_id
    assert "retry of" in browser.text("ol.chain", text=failed["id"][:8]).lower()
    # the stuck job is ended by hand
    browser.go(f"#/jobs/{stuck['id']}")
    browser.wait_for(".headline[data-state=waiting]")
    browser.click("[data-action=recover]")
    browser.answer({"state": "succeeded", "reason": "the event came by another way"})
    browser.wait_for(".headline[data-state=succeeded]", 20)
    browser.wait_for(".facts", text="the event came by another way")
    # and pauses a queue
    browser.go("#/queue")
    card = '.stat[data-queue="vmorch.noop"]'
    browser.click(f"{card} [data-action=control-queue]")
    browser.answer({"mode": "pause", "rate": "", "reason": "maintenance window"})
    browser.wait_for(card, text="maintenance window")
    assert "pause" in browser.text(card)
    modes = {q["queue"]: q["mode"] for q in api.request("GET", "/v1/queues")[1]}
    assert modes["vmorch.noop"] == "pause"
    # all three are in the audit log, with who and why
    browser.go("#/audit")
    for action in ("jobs.retry", "jobs.recover", "queues.put"):
        assert "ada" in browser.text(f'tr[data-action="{action}"]')
    browser.shot("audit")
    assert not browser.errors()


# --- servers, pools and a VM --------------------------------------------------------------


def test_servers_pools_and_a_vm_follow_the_fleet_live(
    api: Api,
    redis_url: str,
    browser: Browser,
    start_worker: Callable[..., Proc],
    agents: dict[str, Proc],
    fleet: Inventory,
) -> None:
    start_worker()
    made = api.run({"kind": "vm.create_from_template", "pool": "pool-a",
                    "template": "tmpl-a", "name": "dash1", "labels": {"tier": "web"}})  # fmt: skip
    assert made["state"] == "succeeded", made
    browser.sign_in(make_token(redis_url, Role.OPERATOR, "olga"))
    browser.go("#/fleet")
    row = 'tr[data-name="dash1"]'
    browser.wait_for(f"{row}[data-state=running]")
    for server in fleet.servers:
        browser.wait_for(f'.server[data-server="{server.name}"]')
    browser.mark()
    # a stop made elsewhere shows at once: the agents' vm.lifecycle events
    stopped = api.submit({"kind": "vm.stop", "vm": "dash1", "timeout_s": 5})
    browser.wait_for(f"{row}[data-state=stopped]", 30)
    api.wait(stopped["id"])
    browser.shot("servers")
    # the VM's page: its jobs, its events, its pinning and guest; start it from there
    browser.click(f"{row} a")
    browser.wait_for(".headline[data-state=stopped]")
    browser.wait_for(f'tr[data-job="{stopped["id"]}"][data-state=succeeded]')
    browser.wait_for("table.events tr[data-type='vm.lifecycle.stopped']")
    browser.wait_for("section.card", text="Not pinned")
    # pinned elsewhere: the page shows it as it happens
    pinned = api.run({"kind": "vm.pin_vcpus", "vm": "dash1", "pinning": {"0": [1, 2]}})
    assert pinned["state"] == "succeeded", pinned
    assert browser.text("section.card", text="vCPU 0").endswith("vCPU 0 1, 2")
    browser.wait_for("section.card", text="No guest program has been seen")
    browser.click("[data-action='vm.start']")
    browser.wait_for(".headline[data-state=running]", 30)
    browser.wait_for("tr[data-job][data-state=succeeded]", 30, text="vm.start")
    browser.wait_for("table.events tr[data-type='vm.lifecycle.started']")
    assert browser.still_marked()
    started = api.request("GET", "/v1/jobs?vm=dash1&kind=vm.start")[1]
    assert [j["submitted_by"] for j in started["items"]] == ["olga"]
    # what was asked and what is are the same again
    wait_until(lambda: "asked" not in browser.text(".headline"), 10, "the desired state")
    browser.shot("vm")
    # its server goes into maintenance from the page: the VM moves (a child job of the
    # maintenance job, in its causal chain), the server says why, and is activated again
    server = api.request("GET", "/v1/vms/dash1")[1]["server"]
    card = f'.server[data-server="{server}"]'
    browser.go("#/fleet")
    browser.click(f"{card} [data-action='server.maintenance']")
    browser.answer({"strategy": "restart_elsewhere", "reason": "firmware"})
    browser.wait_for(f"{card}[data-state=maintenance]", 30, text="firmware")
    browser.wait_for(f'.server:not([data-server="{server}"]) {row}[data-state=running]', 60)
    browser.click(f"{card} a[href^='#/jobs/']")
    browser.wait_for(".headline[data-state=succeeded]", 60)
    child = browser.text("h3 + table tr[data-job]", text="dash1")
    assert "vm." in child and "succeeded" in child
    browser.go("#/fleet")
    browser.click(f"{card} [data-action='server.activate']")
    browser.wait_for(f"{card}[data-state=up]", 30)
    assert browser.still_marked()
    assert not browser.errors()


# --- events, alerts, hooks ----------------------------------------------------------------


def test_the_events_feed_filters_live_and_shows_untrusted_text_as_text(
    api: Api, redis_url: str, browser: Browser
) -> None:
    emit(redis_url, "dash.evil", XSS, {"message": XSS, "vm_name": XSS})
    emit(redis_url, "other.kind", "s1", {"n": 1})
    browser.sign_in(make_token(redis_url, Role.VIEWER, "vic"))
    browser.go("#/events?type=dash.*")
    browser.wait_for("table.events tr[data-type='dash.evil']")
    assert not browser.all("table.events tr[data-type='other.kind']")
    browser.wait_for(".stream-state .badge", text="live")
    browser.mark()
    # new events come on the page's own filtered stream
    emit(redis_url, "other.kind", "s2", {"n": 2})
    emit(redis_url, "dash.later", "s3", {"said": "hello"})
    browser.wait_for("table.events tr[data-type='dash.later']")
    assert not browser.all("table.events tr[data-type='other.kind']")
    # the untrusted text is shown as text: no element made of it, nothing of it ran
    assert XSS in browser.text("table.events tr[data-type='dash.evil']")
    assert not browser.all("main img, main script")
    assert browser.script("return window.__pwned") is None
    # and a string never becomes markup here: Trusted Types with no policy refuse it
    refused = browser.script(
        "try { document.body.innerHTML = '<b>x</b>'; return 'assigned' }"
        " catch (e) { return e.name }"
    )
    assert refused == "TypeError"
    browser.shot("events")
    assert browser.still_marked()


def test_alerts_are_acknowledged_from_the_page(api: Api, redis_url: str, browser: Browser) -> None:
    raise_alert(redis_url, "web1", "HA gave up restarting web1 after 3 restarts in 10 min")
    browser.sign_in(make_token(redis_url, Role.VIEWER, "vic"))
    browser.go("#/alerts")
    browser.wait_for("tr[data-alert]", text="HA gave up")
    assert not browser.all("[data-action=ack]")
    browser.sign_in(make_token(redis_url, Role.OPERATOR, "olga"))
    browser.go("#/alerts")
    browser.wait_for("#nav a[data-page=alerts] .count", text="1")
    browser.mark()
    # one raised while the page is open shows up, and the count with it
    second = raise_alert(redis_url, "srv-a1", f"no proof that srv-a1's guests are off {XSS}")
    browser.wait_for(f'tr[data-alert="{second}"]')
    browser.wait_for("#nav a[data-page=alerts] .count", text="2")
    browser.shot("alerts")
    browser.click(f'tr[data-alert="{second}"] [data-action=ack]')
    browser.wait_gone(f'tr[data-alert="{second}"]')
    acked = [a for a in api.request("GET", "/v1/alerts?all=true")[1] if a["id"] == second]
    assert acked[0]["acknowledged_by"] == "olga"
    assert browser.still_marked() and browser.script("return window.__pwned") is None


def test_a_hook_shows_its_runs_and_its_job_the_causal_chain(
    api: Api, redis_url: str, browser: Browser, start_worker: Callable[..., Proc]
) -> None:
    start_worker()
    receiver = WebhookReceiver()
    nobody = free_port("127.0.0.1")  # a receiver that is down
    hooks = {
        "dash-job": {"kind": "submit_job", "request": {"kind": "noop", "steps": 2}},
        "dash-webhook": {"kind": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook"},
        "dash-down": {"kind": "webhook", "url": f"http://127.0.0.1:{nobody}/", "retries": 0},
    }
    ids = {}
    for name, action in hooks.items():
        status, made = api.request(
            "POST", "/v1/hooks", {"name": name, "match": {"types": ["dash.ping"]}, "action": action}
        )
        assert status == 201, made
        ids[name] = made["hook"]["id"]
    emit(redis_url, "dash.ping", "thing-1", {"why": "a test"})
    wait_until(lambda: receiver.got, 20, "the webhook delivery")
    browser.sign_in(make_token(redis_url, Role.ADMIN, "ada"))
    browser.go("#/hooks")
    browser.wait_for(f'tr[data-hook="{ids["dash-webhook"]}"]')
    browser.shot("hooks")
    browser.click(f'tr[data-hook="{ids["dash-job"]}"] a')
    browser.wait_for("tr[data-outcome=submitted]")
    # from the run to the job it submitted: event -> hook -> job
    browser.click("tr[data-outcome=submitted] a[href^='#/jobs/']")
    browser.wait_for(".headline[data-state=succeeded]", 30)
    chain = browser.text("ol.chain", text="dash.ping")
    assert "thing-1" in chain and "dash-job" in chain and "noop" in chain
    browser.shot("job-chain")
    browser.go(f"#/hooks/{ids['dash-webhook']}")
    browser.wait_for("tr[data-outcome=delivered]")
    # a failed delivery is retried from the page, with the original event
    browser.go(f"#/hooks/{ids['dash-down']}")
    browser.wait_for("tr[data-outcome=failed]")
    first = browser.attribute("tr[data-outcome=failed]", "data-run")
    browser.click(f'tr[data-run="{first}"] [data-action=retry-run]')
    browser.wait_for("tr[data-outcome=failed]", 30, text=f"retry of run {first}, asked by ada")
    browser.shot("hook-runs")
    assert not browser.errors()
