/**
 * Alerts: what vmorch could not resolve by itself, until someone acknowledges it. Read
 * again whenever an event raises one (alert events carry `alert_id`).
 */

import { may } from "../access.js";
import { get, path, post } from "../api.js";
import { fill, h, link, route, table } from "../dom.js";
import { ago, when } from "../format.js";
import { jobLink } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { badge, button, notify } from "../ui.js";

export function isAlertEvent(event) {
  return Boolean(event.data?.alert_id);
}

export default async function alertsPage({ scope, main, query }) {
  const everything = query.get("all") === "1";
  const view = h("section", { class: "card" });
  const toggle = h("a", { href: everything ? route("alerts") : route("alerts", { all: "1" }) }, everything ? "Open alerts only" : "Show acknowledged too");
  fill(main, h("div", { class: "page-head" }, h("h1", {}, everything ? "All alerts" : "Open alerts"), h("div", { class: "tools" }, toggle)), view);

  async function ack(alert) {
    await post(path("/v1/alerts", alert.id, "ack"));
    notify(`Alert ${alert.type} acknowledged`);
    await reload();
  }

  async function reload() {
    const alerts = await get("/v1/alerts", { all: everything ? "true" : null }, { signal: scope.signal });
    fill(
      view,
      table(
        ["raised", "type", "subject", "message", "job", "acknowledged", ""],
        alerts
          .sort((a, b) => b.at.localeCompare(a.at))
          .map((a) => ({
            cells: [
              ago(a.at),
              h("code", {}, a.type),
              link(a.subject, "events", { subject: a.subject }),
              a.message,
              a.job_id ? jobLink(a.job_id) : "",
              a.acknowledged_at ? [badge("acknowledged"), ` by ${a.acknowledged_by} `, when(a.acknowledged_at)] : "",
              !a.acknowledged_at && may("ack") ? button("Acknowledge", () => ack(a), { name: "ack" }) : "",
            ],
            dataset: { alert: a.id },
          })),
        "no open alert",
      ),
    );
  }

  scope.live((event) => {
    if (event.type === GAP || event.type === RESYNC || isAlertEvent(event)) scope.later("reload", reload);
  });
  await connected();
  await reload();
}
