/**
 * Jobs as the pages show them: applying a job's events to what was read, what a job works
 * on, and the actions a user may take on it (abort, retry, recover).
 */

import { may } from "./access.js";
import { path, post } from "./api.js";
import { link, route } from "./dom.js";
import { shortId } from "./format.js";
import { ask, button, notify } from "./ui.js";

export const TERMINAL = new Set(["succeeded", "failed", "aborted"]);
export const ACTIVE = new Set(["queued", "running", "waiting", "aborting"]);
const CHILD_ENDED = "job.child_ended"; // about the parent: its subject is not the job that ended

/** The id of the job an event is a transition or step of, or null. */
export function jobOf(event) {
  if (!event.type?.startsWith("job.") || event.type === CHILD_ENDED) return null;
  return event.data?.job_id ?? event.subject ?? null;
}

/** `job` with what the event says of it: state, progress, the step running. The event
 * carries no step journal; pages read the job again for that when they show it. */
export function applyEvent(job, event) {
  const d = event.data ?? {};
  const next = { ...job, state: d.state ?? job.state, progress: d.progress ?? job.progress, updated_at: event.time };
  if (next.state === "running" && !next.started_at) next.started_at = event.time;
  if (TERMINAL.has(next.state) && !job.ended_at) next.ended_at = event.time;
  if (d.running_step) next.step_now = d.running_step;
  else if (d.step && ["running", "waiting"].includes(d.step_state)) next.step_now = d.step;
  else if (d.step) next.step_now = null;
  return next;
}

export function currentStep(job) {
  if (job.step_now !== undefined) return job.step_now ?? "";
  return (job.steps ?? []).find((s) => s.state === "running" || s.state === "waiting")?.name ?? "";
}

/** What the job works on: its VM, else the server or pool its request names. */
export function target(job) {
  const links = job.links ?? {};
  if (links.vm_id) return link(links.vm_name || shortId(links.vm_id), "vms", links.vm_id);
  return job.request?.server ?? links.pool ?? job.request?.pool ?? "";
}

export function jobLink(id, text = null) {
  return link(text ?? shortId(id), "jobs", id);
}

async function abort(job) {
  const answer = await ask({
    title: `Abort ${job.kind} ${shortId(job.id)}?`,
    text: "Its done steps are undone in reverse order.",
    fields: [{ name: "reason", label: "Reason (optional)" }],
    submit: "Abort",
    kind: "danger",
  });
  if (answer === null) return;
  await post(path("/v1/jobs", job.id, "abort"), { reason: answer.reason });
  notify(`Abort of ${shortId(job.id)} requested`);
}

async function retry(job) {
  const answer = await ask({
    title: `Retry ${job.kind} ${shortId(job.id)}?`,
    text: "A new job, linked to this one, runs it again from its failed step.",
    fields: [{ name: "reason", label: "Reason" }],
    submit: "Retry",
  });
  if (answer === null) return;
  const retry = await post(path("/v1/jobs", job.id, "retry"), { reason: answer.reason });
  notify(`${shortId(job.id)} retried as ${shortId(retry.id)}`);
  location.hash = route("jobs", retry.id);
}

async function recover(job) {
  const answer = await ask({
    title: `Recover ${job.kind} ${shortId(job.id)}`,
    text: "Ends the job in the state you choose: nothing is undone or run, a worker still on it is stopped. Say what you did by hand.",
    fields: [
      { name: "state", label: "End it as", type: "select", options: [["failed", "failed"], ["succeeded", "succeeded"]], value: "failed" },
      { name: "reason", label: "Reason", required: true },
    ],
    submit: "Recover",
    kind: "danger",
  });
  if (answer === null) return;
  await post(path("/v1/jobs", job.id, "recover"), { state: answer.state, reason: answer.reason });
  notify(`${shortId(job.id)} recovered as ${answer.state}`);
}

/** Submit a job request; the notice links to the job. */
export async function submitJob(body, headers = {}) {
  const job = await post("/v1/jobs", body, { headers });
  notify([`${job.kind} submitted: `, jobLink(job.id)]);
  return job;
}

/** The abort button, when this user may abort `job` in its state (lists of jobs). */
export function abortAction(job) {
  if (!ACTIVE.has(job.state) || job.state === "aborting" || !may("abort")) return "";
  return button("Abort", () => abort(job), { kind: "danger", name: "abort" });
}

/** Every button this user may use on `job` in its state (the job's page). */
export function jobActions(job) {
  const out = [abortAction(job)];
  if ((job.state === "failed" || job.state === "aborted") && !job.retried_as && may("retry")) {
    out.push(button("Retry", () => retry(job), { name: "retry" }));
  }
  // a stuck job (any not ended) or a failed one whose effect was put in place by hand
  if ((ACTIVE.has(job.state) || job.state === "failed") && may("recover")) {
    out.push(button("Recover…", () => recover(job), { name: "recover" }));
  }
  return out;
}
