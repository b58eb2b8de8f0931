/**
 * The audit log (admins): who did what through the API, newest first, a page at a time,
 * filtered by the API (action glob, token name, target).
 */

import { get } from "../api.js";
import { fill, h, table, tableRow } from "../dom.js";
import { when } from "../format.js";
import { button, filterForm } from "../ui.js";

const PAGE = 100;
const COLUMNS = ["at", "token", "role", "request", "action", "status", "target", "reason"];
const FILTERS = [
  { name: "action", placeholder: "jobs.*" },
  { name: "token_name", label: "token name" },
  { name: "target", placeholder: "a job id, hook id, queue" },
];

/** An HTTP status as a badge: green when the request did what it asked, red when not. */
function status(code) {
  return h("span", { class: `badge ${code < 400 ? "s-succeeded" : "s-failed"}` }, String(code));
}

function row(a) {
  return {
    cells: [when(a.at), a.token_name, a.role, h("code", {}, `${a.method} ${a.path}`), a.action, status(a.status), a.target, a.reason],
    dataset: { audit: a.id, action: a.action },
  };
}

export default async function auditPage({ scope, main, query }) {
  const filter = Object.fromEntries(FILTERS.map((f) => [f.name, query.get(f.name)]));
  const more = h("div", { class: "tools" });
  const read = (cursor) => get("/v1/audit", { ...filter, limit: PAGE, cursor }, { signal: scope.signal });
  const offerMore = (page) => fill(more, page.next_cursor ? button("Older entries", () => next(page.next_cursor), { name: "more" }) : "");
  const first = await read(null);
  const entries = table(COLUMNS, first.items.map(row), "no entry");
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Audit log")),
    filterForm("audit", FILTERS, query),
    h("section", { class: "card" }, entries, more),
  );
  offerMore(first);

  async function next(cursor) {
    const page = await read(cursor);
    entries.tBodies[0].append(...page.items.map((a) => tableRow(row(a))));
    offerMore(page);
  }
}
