/**
 * Hooks (rules that match events and take an action) and each hook's runs: which event
 * fired it and what came of it (the job it submitted, the webhook delivery). Admins change
 * them here; a hook's runs are read again when a job it submitted moves.
 */

import { may } from "../access.js";
import { del, get, patch, path, post } from "../api.js";
import { facts, fill, h, json, link, section, table } from "../dom.js";
import { ago, when } from "../format.js";
import { jobLink } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { ask, badge, button, notify } from "../ui.js";

const RUNS = 200;
const RETRIABLE = new Set(["failed", "refused", "suppressed", "skipped"]); // runs that did nothing

/** What a hook does, in a few words. */
function actionText(action) {
  if (action.kind === "submit_job") return `submit ${action.request?.kind ?? "a job"}`;
  if (action.kind === "webhook") return `POST ${action.url}`;
  if (action.kind === "guest_message") return `message ${action.key}`;
  return action.kind;
}

async function createHook(reload) {
  const answer = await ask({
    title: "New hook",
    text: "The hook as JSON: name, match, action, window_s, enabled.",
    fields: [
      {
        name: "spec",
        label: "Hook",
        type: "textarea",
        rows: 12,
        required: true,
        value: JSON.stringify({ name: "", match: { types: ["vm.lifecycle.crashed"] }, action: { kind: "submit_job", request: { kind: "vm.start", vm: "{vm_id}" } } }, null, 2),
      },
    ],
    submit: "Create",
  });
  if (answer === null) return;
  const created = await post("/v1/hooks", JSON.parse(answer.spec));
  notify(created.secret ? `Hook created. Its webhook secret, shown this once: ${created.secret}` : "Hook created", "info");
  await reload();
}

function hookActions(hook, reload) {
  const out = [];
  if (may("editHook")) {
    const label = hook.enabled ? "Disable" : "Enable";
    const toggle = async () => {
      await patch(path("/v1/hooks", hook.id), { enabled: !hook.enabled });
      await reload();
    };
    out.push(button(label, toggle, { name: label.toLowerCase() }));
  }
  if (may("deleteHook") && !hook.builtin) {
    const remove = async () => {
      if ((await ask({ title: `Delete hook ${hook.name}?`, submit: "Delete", kind: "danger" })) === null) return;
      await del(path("/v1/hooks", hook.id));
      location.hash = "#/hooks";
      await reload();
    };
    out.push(button("Delete", remove, { kind: "danger", name: "delete" }));
  }
  return out;
}

async function hookList({ scope, main }) {
  const view = h("section", { class: "card" });
  const tools = h("div", { class: "tools" });
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Hooks"), tools), view);
  async function reload() {
    const hooks = await get("/v1/hooks", undefined, { signal: scope.signal });
    fill(tools, may("createHook") ? button("New hook…", () => createHook(reload), { kind: "primary", name: "new-hook" }) : "");
    fill(
      view,
      table(
        ["hook", "state", "matches", "does", "window", "suppressed", ""],
        hooks.map((k) => ({
          cells: [link(k.name, "hooks", k.id), [badge(k.enabled ? "enabled" : "disabled"), k.builtin ? " built-in" : ""], k.match.types.join(", "), actionText(k.action), `${k.window_s} s`, String(k.suppressed), hookActions(k, reload)],
          dataset: { hook: k.id },
        })),
        "no hook",
      ),
    );
  }
  await reload();
}

async function hookRuns({ scope, main, args: [id] }) {
  const opts = { signal: scope.signal };
  const top = h("div");
  const runsView = h("div");
  fill(main, top, section(`Runs (newest ${RUNS})`, runsView));

  async function retryRun(run) {
    await post(path("/v1/hooks", id, "runs", run.id, "retry"));
    notify(`The ${run.event_type} event goes to the hook again`);
    scope.later("runs", readRuns, 1000); // the routers record the new run
  }

  async function readHook() {
    const hook = await get(path("/v1/hooks", id), undefined, opts);
    fill(
      top,
      h("div", { class: "page-head" }, h("h1", {}, "Hook ", hook.name), h("div", { class: "tools" }, hookActions(hook, readHook))),
      h(
        "section",
        { class: "card summary" },
        facts([
          ["state", badge(hook.enabled ? "enabled" : "disabled")],
          ["built-in", hook.builtin ? "yes" : null],
          ["does", actionText(hook.action)],
          ["at most once per subject in", `${hook.window_s} s`],
          ["suppressed by flood control", String(hook.suppressed)],
          ["created", when(hook.created_at)],
        ]),
        json(hook.match, "match"),
        json(hook.action, "action"),
      ),
    );
  }

  async function readRuns() {
    const runs = await get(path("/v1/hooks", id, "runs"), { limit: RUNS }, opts);
    fill(
      runsView,
      table(
        ["fired", "event", "subject", "action", "outcome", "detail", "job", ""],
        runs.map((r) => ({
          cells: [
            ago(r.at),
            h("code", {}, r.event_type),
            r.subject ? link(r.subject, "events", { subject: r.subject }) : "",
            r.action,
            badge(r.outcome),
            [r.detail, r.retry_of ? h("div", { class: "muted" }, `retry of run ${r.retry_of}, asked by ${r.retried_by ?? "?"}`) : ""],
            r.job_id ? jobLink(r.job_id) : "",
            RETRIABLE.has(r.outcome) && r.id && r.event && may("retryHookRun") ? button("Retry", () => retryRun(r), { name: "retry-run" }) : "",
          ],
          dataset: { run: r.id, event: r.event_id, outcome: r.outcome },
        })),
        "it has not fired",
      ),
    );
  }

  scope.live((event) => {
    if (event.type === GAP || event.type === RESYNC || (event.type?.startsWith("job.") && event.data?.hook_id === id)) {
      scope.later("runs", readRuns, 300);
    }
  });
  await connected();
  await Promise.all([readHook(), readRuns()]);
}

export default function hooksPage(ctx) {
  return ctx.args.length ? hookRuns(ctx) : hookList(ctx);
}
