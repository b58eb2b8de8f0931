/**
 * The job queue, live: jobs running, waiting (for what, until when), queued and recently
 * finished; each queue's depth, oldest job and mode; the workers seen. Read once, then
 * kept current from the event stream: a job's transition moves its row, and a job the
 * page has not seen (or one that starts to wait, or ends) is read again for what the
 * event does not carry.
 */

import { may } from "../access.js";
import { get, path, put, unless404 } from "../api.js";
import { fill, h, liveTable, reconcile, route } from "../dom.js";
import { ago, shortId } from "../format.js";
import { TERMINAL, abortAction, applyEvent, currentStep, jobLink, jobOf, submitJob, target } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { ask, badge, button, notify, progress } from "../ui.js";

const ACTIVE_LIMIT = 100; // per state
const RECENT = 25; // finished jobs shown

function byTime(field, newestFirst = false) {
  return (a, b) => (newestFirst ? -1 : 1) * String(a[field] ?? "").localeCompare(String(b[field] ?? ""));
}

function jobRow(job, cells) {
  return { cells: [jobLink(job.id), job.kind, target(job), ...cells], dataset: { job: job.id, state: job.state } };
}

async function askForJob() {
  const answer = await ask({
    title: "Submit a job",
    text: "The job request as JSON (the kinds and their fields: see the README).",
    fields: [
      { name: "body", label: "Request", type: "textarea", required: true, value: '{\n  "kind": "vm.start",\n  "vm": ""\n}' },
      { name: "key", label: "Idempotency-Key (optional)" },
    ],
    submit: "Submit",
  });
  if (answer === null) return;
  let body;
  try {
    body = JSON.parse(answer.body);
  } catch (e) {
    throw new Error(`not JSON: ${e.message}`);
  }
  const job = await submitJob(body, answer.key ? { "Idempotency-Key": answer.key } : {});
  location.hash = route("jobs", job.id);
}

async function controlQueue(q, reload) {
  const answer = await ask({
    title: `Queue ${q.queue}`,
    fields: [
      {
        name: "mode",
        label: "Mode",
        type: "select",
        value: q.mode ?? "accept",
        options: [
          ["accept", "accept: take jobs and start them"],
          ["pause", "pause: take jobs, start none (running ones go on)"],
          ["drain", "drain: refuse new jobs, finish the others"],
        ],
      },
      { name: "rate", label: "Jobs started per minute (empty: no limit)", type: "number", min: "1", value: q.rate_limit_per_minute ?? "" },
      { name: "reason", label: "Reason", required: true },
    ],
    submit: "Apply",
  });
  if (answer === null) return;
  const rate = answer.rate === "" ? null : Number(answer.rate);
  await put(path("/v1/queues", q.queue), { mode: answer.mode, rate_limit_per_minute: rate, reason: answer.reason });
  notify(`Queue ${q.queue}: ${answer.mode}`);
  await reload();
}

/** A section of job rows, kept on the page and updated in place. */
function jobSection(columns, empty, cells) {
  const title = h("h2");
  const rows = liveTable(["job", "kind", "target", ...columns], empty);
  const node = h("section", { class: "card" }, title, rows.node);
  const update = (heading, jobs) => {
    title.textContent = heading;
    rows.update(jobs.map((j) => ({ key: j.id, sig: JSON.stringify(j), row: () => jobRow(j, cells(j)) })));
  };
  return { node, update };
}

export default async function queuePage({ scope, main }) {
  const jobs = new Map();
  let status = { queues: [], running: [], waiting: [], workers: [] };
  let statusAt = Date.now();
  let modes = new Map();
  const opts = { signal: scope.signal };
  const stats = h("div", { class: "stats" });
  const running = jobSection(["state", "step", "progress", "started", "by", ""], "no job runs", (j) => [
    badge(j.state),
    currentStep(j),
    progress(j.progress),
    ago(j.started_at),
    j.submitted_by,
    abortAction(j),
  ]);
  const waiting = jobSection(["waits for", "about", "deadline", "step", ""], "no job waits", (j) => [
    j.wait ? j.wait.types.join(", ") : "",
    j.wait ? shortId(j.wait.subject) : "",
    j.wait ? ago(j.wait.deadline) : "",
    currentStep(j),
    abortAction(j),
  ]);
  const queued = jobSection(["queue", "submitted", "behind", "by", ""], "the queue is empty", (j) => [
    j.queue,
    ago(j.created_at),
    j.waiting_for_job ? jobLink(j.waiting_for_job) : "",
    j.submitted_by,
    abortAction(j),
  ]);
  const finished = jobSection(["state", "ended", "by", "error"], "nothing finished lately", (j) => [
    badge(j.state),
    ago(j.ended_at),
    j.submitted_by,
    j.error ? `${j.error.code}: ${j.error.message}` : "",
  ]);
  const workersTitle = h("h2");
  const workers = liveTable(["worker", "queues", "last seen"], "no worker seen: queued jobs wait");
  const tools = h("div", { class: "tools" }, may("submit") ? button("Submit job…", askForJob, { kind: "primary", name: "submit" }) : "");
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Queue"), tools),
    stats,
    running.node,
    waiting.node,
    queued.node,
    finished.node,
    h("section", { class: "card" }, workersTitle, workers.node),
  );

  async function loadStatus() {
    const [st, qs] = await Promise.all([
      get("/v1/queue", undefined, opts),
      may("readQueueModes") ? unless404(get("/v1/queues", undefined, opts), []) : [],
    ]);
    status = st;
    statusAt = Date.now();
    modes = new Map(qs.map((q) => [q.queue, q]));
  }

  async function loadJobs() {
    const states = ["queued", "running", "waiting", "aborting", "succeeded", "failed", "aborted"];
    const pages = await Promise.all(
      states.map((state) => get("/v1/jobs", { state, limit: TERMINAL.has(state) ? RECENT : ACTIVE_LIMIT }, opts)),
    );
    jobs.clear();
    for (const page of pages) for (const job of page.items) jobs.set(job.id, job);
  }

  async function reload() {
    await Promise.all([loadJobs(), loadStatus()]);
    render();
  }

  async function readJob(id) {
    try {
      jobs.set(id, await get(path("/v1/jobs", id), undefined, opts));
    } catch (e) {
      if (e.status === 404) jobs.delete(id);
      else throw e;
    }
    render();
  }

  /** An instant `secondsAgo` before the last status read, as ISO (for `ago`). */
  const before = (secondsAgo) => new Date(statusAt - secondsAgo * 1000).toISOString();

  function queueCard(q) {
    const mode = modes.get(q.queue);
    return h(
      "div",
      { class: "stat", dataset: { queue: q.queue } },
      h("div", { class: "stat-title" }, q.queue, mode ? badge(mode.mode) : ""),
      h("div", { class: "stat-value" }, String(q.depth)),
      h("div", { class: "stat-note" }, q.depth ? ["oldest ", ago(before(q.oldest_job_age_s ?? 0))] : "empty"),
      mode?.held ? h("div", { class: "stat-note" }, `${mode.held} held by the pause`) : "",
      mode?.rate_limit_per_minute ? h("div", { class: "stat-note" }, `at most ${mode.rate_limit_per_minute} starts/min`) : "",
      mode?.changed_by ? h("div", { class: "stat-note" }, `${mode.reason} (${mode.changed_by}, `, ago(mode.changed_at), ")") : "",
      mode && may("controlQueue") ? button("Control…", () => controlQueue(mode, reload), { name: "control-queue" }) : "",
    );
  }

  function render() {
    const all = [...jobs.values()];
    const inState = (...states) => all.filter((j) => states.includes(j.state));
    const done = all.filter((j) => TERMINAL.has(j.state)).sort(byTime("ended_at", true));
    for (const old of done.splice(RECENT)) jobs.delete(old.id);
    const run = inState("running", "aborting").sort(byTime("started_at", true));
    const wait = inState("waiting").sort((a, b) => String(a.wait?.deadline).localeCompare(String(b.wait?.deadline)));
    const queue = inState("queued").sort(byTime("created_at"));
    running.update(`Running (${run.length})`, run);
    waiting.update(`Waiting (${wait.length})`, wait);
    queued.update(`Queued (${queue.length})`, queue);
    finished.update("Recently finished", done);
    reconcile(
      stats,
      status.queues.map((q) => ({ key: q.queue, sig: JSON.stringify([q, modes.get(q.queue), statusAt]), build: () => queueCard(q) })),
    );
    workersTitle.textContent = `Workers seen (${status.workers.length})`;
    workers.update(
      status.workers.map((w) => ({
        key: w.name,
        sig: JSON.stringify([w.queues, statusAt]),
        row: () => [w.name, w.queues.join(", "), ago(before(w.last_seen_s_ago))],
      })),
    );
  }

  scope.live((event) => {
    if (event.type === GAP || event.type === RESYNC) {
      scope.later("reload", reload);
      return;
    }
    const id = jobOf(event);
    if (id === null) return;
    const known = jobs.get(id);
    if (known) jobs.set(id, applyEvent(known, event));
    const state = event.data?.state;
    if (!known || state === "waiting" || TERMINAL.has(state)) scope.later(`job:${id}`, () => readJob(id), 100);
    if (event.type !== "job.step") scope.later("status", () => loadStatus().then(render), 500);
    scope.later("render", render, 50);
  });
  await connected();
  await reload();
}
