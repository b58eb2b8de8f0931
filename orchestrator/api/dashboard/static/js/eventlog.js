/**
 * Events as the pages show them: read from a point in time through the paged listing
 * (which goes oldest first and reads at most a few thousand entries a call), and a table
 * that takes events from the listing and the live stream alike, once each, newest first.
 */

import { get } from "./api.js";
import { h, json, link } from "./dom.js";
import { when } from "./format.js";

const PAGE = 1000;

/**
 * The last `keep` events matching `filter` ({type, subject, source}) since `sinceMs`, and
 * the position to follow on from (a stream_id, or the start when nothing matched).
 * Stream entry ids begin with the milliseconds they were added at, so a time is a place
 * to start reading from.
 */
export async function eventsSince(filter, sinceMs, { keep = 500, maxPages = 40, signal } = {}) {
  const start = String(Math.max(0, Math.floor(sinceMs)));
  let after = start;
  let items = [];
  for (let page = 0; page < maxPages; page++) {
    const got = await get("/v1/events", { ...filter, after, limit: PAGE }, { signal });
    items = items.concat(got.items).slice(-keep);
    if (!got.next_after) return { items, position: items.at(-1)?.stream_id ?? start };
    after = got.next_after;
  }
  return { items, position: after };
}

/** The event envelope an SSE event carries, with its stream position; null if it is not
 * one. */
export function envelope(sse) {
  let event;
  try {
    event = JSON.parse(sse.data);
  } catch {
    return null;
  }
  if (event === null || typeof event !== "object") return null;
  if (sse.id) event.stream_id = sse.id;
  return event;
}

function scalar(v) {
  return v === null || ["string", "number", "boolean"].includes(typeof v);
}

/** A line of what an event says: its data's first plain values. */
export function summary(data) {
  const parts = Object.entries(data ?? {})
    .filter(([k, v]) => scalar(v) && k !== "observed_at")
    .slice(0, 6)
    .map(([k, v]) => `${k}=${v}`);
  const text = parts.join("  ");
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

/** A table of events, newest first, each shown once (by stream_id, else by id). */
export class EventList {
  constructor({ keep = 500, showSubject = true } = {}) {
    this.keep = keep;
    this.showSubject = showSubject;
    this.seen = new Set();
    this.body = h("tbody");
    const heads = ["time", "type", showSubject ? "subject" : null, "source", "data"].filter(Boolean);
    this.node = h("table", { class: "events" }, h("thead", {}, h("tr", {}, heads.map((c) => h("th", {}, c)))), this.body);
  }

  row(ev, key) {
    const subject = ev.subject ? link(ev.subject, "events", { subject: ev.subject }) : "";
    return h(
      "tr",
      { dataset: { type: ev.type ?? "", key } },
      h("td", { class: "nowrap" }, when(ev.time)),
      h("td", {}, h("code", {}, ev.type ?? "")),
      this.showSubject ? h("td", { class: "subject" }, subject) : null,
      h("td", { class: "source" }, ev.source ?? ""),
      h("td", {}, json(ev.data ?? {}, summary(ev.data) || "{}")),
    );
  }

  /** Add events given oldest first; returns how many were new. */
  add(events) {
    let added = 0;
    for (const ev of events) {
      const key = ev.stream_id ?? ev.id;
      if (!key || this.seen.has(key)) continue;
      this.seen.add(key);
      this.body.prepend(this.row(ev, key));
      added += 1;
    }
    while (this.body.rows.length > this.keep) this.body.lastElementChild.remove();
    if (this.seen.size > 2 * this.keep) {
      // forget what has scrolled off: old events do not come again, from either source
      this.seen = new Set([...this.body.rows].map((tr) => tr.dataset.key));
    }
    return added;
  }

  clear() {
    this.seen.clear();
    this.body.replaceChildren();
  }
}
