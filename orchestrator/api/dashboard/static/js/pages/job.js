/**
 * One job: its steps (state, attempts, timings, errors, progress), what caused it (the
 * event and hook that submitted it, the job that made it) and the jobs it made, its events,
 * and the actions the user may take. Kept current from the event stream: the job's own
 * events (its subject) show at once and have the job read again for its journal; the
 * events of its children update their rows.
 */

import { get, path, unless404 } from "../api.js";
import { facts, fill, h, json, link, liveTable, reconcile, section, table } from "../dom.js";
import { EventList, eventsSince } from "../eventlog.js";
import { ago, took, when } from "../format.js";
import { ACTIVE, applyEvent, jobActions, jobLink, jobOf, target } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { badge, progress } from "../ui.js";

const CHILDREN_SCAN = 500; // newest jobs looked through for children
const LOOKBACK_MS = 5000; // events of a job start at its creation (clocks differ a little)

const STEP_COLUMNS = ["#", "step", "state", "attempts", "started", "ended", "took", "progress", "error", ""];

function stepRow(s, i) {
  const shown = Object.keys(s.detail ?? {}).length || Object.keys(s.outputs ?? {}).length;
  return {
    cells: [
      String(i + 1),
      h("div", {}, h("strong", {}, s.name), s.description ? h("div", { class: "muted" }, s.description) : ""),
      badge(s.state),
      String(s.attempts),
      when(s.started_at),
      when(s.ended_at),
      s.ended_at ? took(s.started_at, s.ended_at) : s.started_at ? ago(s.started_at) : "",
      progress(s.progress ?? (s.state === "done" ? 1 : null)),
      h(
        "div",
        {},
        s.error ? h("div", { class: "err" }, `${s.error.code}: ${s.error.message}`) : "",
        s.retry_at ? h("div", { class: "muted" }, "retry ", ago(s.retry_at)) : "",
      ),
      shown ? json({ detail: s.detail, outputs: s.outputs }, "detail") : "",
    ],
    dataset: { step: s.name, state: s.state },
  };
}

function recovery(r) {
  return [`by ${r.by}, from ${r.from_state} to ${r.state}, `, when(r.at), `: ${r.reason}`];
}

function chainLink(label, ...content) {
  return h("li", {}, h("span", { class: "chain-label" }, label), ...content);
}

export default async function jobPage({ scope, main, args: [id] }) {
  const opts = { signal: scope.signal };
  let job = null;
  let cause = { hook: null, run: null, parent: null };
  const children = new Map();
  const checked = new Set(); // jobs looked at as possible children
  const events = new EventList({ showSubject: false });
  const top = h("div");
  const steps = { title: h("h2"), rows: liveTable(STEP_COLUMNS, "no step has started") };
  steps.node = h("section", { class: "card" }, steps.title, steps.rows.node);
  fill(main, top, section("Events", events.node));

  async function readJob() {
    job = await get(path("/v1/jobs", id), undefined, opts);
    render();
  }

  async function readCause() {
    const links = job.links ?? {};
    let hook = null;
    let run = null;
    if (links.hook_id) {
      hook = await unless404(get(path("/v1/hooks", links.hook_id), undefined, opts));
      const runs = await unless404(get(path("/v1/hooks", links.hook_id, "runs"), { limit: 1000 }, opts), []);
      run = runs.find((r) => r.job_id === id) ?? runs.find((r) => r.event_id === links.event_id) ?? null;
    }
    const parent = links.parent_job ? await unless404(get(path("/v1/jobs", links.parent_job), undefined, opts)) : null;
    cause = { hook, run, parent };
  }

  async function readChild(childId) {
    checked.add(childId);
    const child = await unless404(get(path("/v1/jobs", childId), undefined, opts));
    if (child?.links?.parent_job === id) children.set(child.id, child);
  }

  async function readChildren() {
    const since = Date.parse(job.created_at) - LOOKBACK_MS;
    const [recent, ended] = await Promise.all([
      get("/v1/jobs", { limit: CHILDREN_SCAN }, opts),
      eventsSince({ subject: id, type: "job.child_ended" }, since, { signal: scope.signal }),
    ]);
    for (const j of recent.items) {
      checked.add(j.id);
      if (j.links?.parent_job === id) children.set(j.id, j);
    }
    const missing = ended.items.map((e) => e.data?.job_id).filter((c) => c && !children.has(c));
    await Promise.all([...new Set(missing)].slice(0, 50).map(readChild));
  }

  async function readEvents() {
    const got = await eventsSince({ subject: id }, Date.parse(job.created_at) - LOOKBACK_MS, { signal: scope.signal });
    events.add(got.items);
  }

  async function reload() {
    await readJob();
    await Promise.all([readCause(), readChildren(), readEvents()]);
    render();
  }

  function chain() {
    const links = job.links ?? {};
    const { hook, run, parent } = cause;
    const items = [];
    if (links.event_id) {
      const about = run ? [h("code", {}, run.event_type), " about ", link(run.subject ?? "", "events", { subject: run.subject })] : [];
      const seen = run?.event ? [" from ", run.event.source, ", ", when(run.event.time)] : "";
      items.push(chainLink("event", ...about, h("div", { class: "muted" }, links.event_id, seen)));
    }
    if (links.hook_id) {
      items.push(chainLink("hook", link(hook?.name ?? links.hook_id, "hooks", links.hook_id), run ? [" ", badge(run.outcome)] : ""));
    }
    if (links.parent_job) {
      items.push(chainLink("parent job", jobLink(links.parent_job, parent ? `${parent.kind} ${links.parent_job.slice(0, 8)}` : null), parent ? [" ", badge(parent.state)] : ""));
    }
    if (links.retry_of) items.push(chainLink("retry of", jobLink(links.retry_of)));
    items.push(chainLink("this job", h("strong", {}, job.kind), " ", badge(job.state)));
    if (job.retried_as) items.push(chainLink("retried as", jobLink(job.retried_as)));
    const kids = [...children.values()].sort((a, b) => a.created_at.localeCompare(b.created_at));
    return section(
      "Causal chain",
      h("ol", { class: "chain" }, items),
      !links.event_id && !links.parent_job && !links.retry_of ? h("p", { class: "muted" }, `Submitted by ${job.submitted_by}.`) : "",
      h("h3", {}, `Child jobs (${kids.length})`),
      table(
        ["job", "kind", "target", "state", "progress", "ended"],
        kids.map((c) => ({ cells: [jobLink(c.id), c.kind, target(c), badge(c.state), progress(c.progress), ago(c.ended_at)], dataset: { job: c.id } })),
        "none",
      ),
    );
  }

  function head() {
    return h(
      "div",
      { class: "page-head" },
      h("h1", {}, job.kind, " ", h("small", { class: "muted" }, job.id)),
      h("div", { class: "tools" }, jobActions(job)),
    );
  }

  function summary() {
    const wait = job.wait;
    return h(
      "section",
      { class: "card summary" },
      h("div", { class: "headline", dataset: { state: job.state } }, badge(job.state), progress(job.progress)),
      facts([
        ["target", target(job)],
        ["pool", job.links?.pool],
        ["queue", job.queue],
        ["submitted by", job.submitted_by],
        ["created", when(job.created_at)],
        ["started", when(job.started_at)],
        ["ended", when(job.ended_at)],
        ["took", took(job.started_at, job.ended_at)],
        ["behind job", job.waiting_for_job ? jobLink(job.waiting_for_job) : null],
        ["place in VM queue", job.vm_queue_position ?? null],
        ["abort requested", job.abort_requested ? "yes" : null],
        ["retried as", job.retried_as ? jobLink(job.retried_as) : null],
        ["recovered", job.recovery ? recovery(job.recovery) : null],
        ["undone steps", job.undone_steps?.length ? job.undone_steps.join(", ") : null],
        ["idempotency key", job.idempotency_key],
        ["error", job.error ? h("span", { class: "err" }, `${job.error.code}: ${job.error.message}`) : null],
      ]),
      wait
        ? h(
            "div",
            { class: "wait" },
            h("strong", {}, "Waiting for "),
            h("code", {}, wait.types.join(" | ")),
            ` about ${wait.subject}, until `,
            when(wait.deadline),
            " (",
            ago(wait.deadline),
            `, then ${wait.on_timeout})`,
          )
        : "",
    );
  }

  function render() {
    if (!job) return;
    const io = () =>
      section("Request and result", json(job.request, "request"), Object.keys(job.result ?? {}).length ? json(job.result, "result") : "");
    reconcile(top, [
      { key: "head", sig: JSON.stringify([job.kind, job.state, job.retried_as]), build: head },
      { key: "summary", sig: JSON.stringify({ ...job, steps: null }), build: summary },
      { key: "steps", sig: "", build: () => steps.node },
      { key: "chain", sig: JSON.stringify([job.links, job.state, cause, [...children.values()]]), build: chain },
      { key: "io", sig: JSON.stringify([job.request, job.result]), build: io },
    ]);
    steps.title.textContent = `Steps (${job.steps.length})`;
    steps.rows.update(job.steps.map((s, i) => ({ key: s.name, sig: JSON.stringify(s), row: () => stepRow(s, i) })));
  }

  scope.live((event) => {
    if (event.type === GAP || event.type === RESYNC) {
      scope.later("reload", reload);
      return;
    }
    if (event.subject === id) {
      events.add([event]);
      scope.later("job", readJob, 150);
      if (event.type === "job.child_ended" && event.data?.job_id) scope.later(`child:${event.data.job_id}`, () => readChild(event.data.job_id).then(render));
      return;
    }
    const other = jobOf(event);
    if (other === null) return;
    if (children.has(other)) {
      children.set(other, applyEvent(children.get(other), event));
      scope.later("render", render, 50);
    } else if (job && ACTIVE.has(job.state) && !checked.has(other)) {
      // a new job may be this one's child: only the job itself says whose
      scope.later(`child:${other}`, () => readChild(other).then(render));
    }
  });
  await connected();
  await reload();
}
