/**
 * The event feed with the API's own filters (type glob, subject, source): read from a
 * chosen time through the listing, then followed on a stream of its own with the same
 * filters, starting where the listing ended (so nothing falls between them).
 */

import { fill, h } from "../dom.js";
import { EventList, envelope, eventsSince } from "../eventlog.js";
import { GAP } from "../live.js";
import { session } from "../session.js";
import { EventStream } from "../sse.js";
import { badge, filterForm } from "../ui.js";

const SINCE = [
  ["5", "5 min"],
  ["15", "15 min"],
  ["60", "1 h"],
  ["360", "6 h"],
  ["1440", "24 h"],
];
const FILTERS = ["type", "subject", "source"];

const FORM = [
  { name: "type", placeholder: "vm.lifecycle.*" },
  { name: "subject", placeholder: "a job or VM id, a server" },
  { name: "source", placeholder: "libvirt://srv-a1" },
  { name: "since", options: SINCE, value: "15" },
];

export default async function eventsPage({ scope, main, query }) {
  const filter = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) ?? ""]).filter(([, v]) => v));
  const minutes = Number(query.get("since") ?? "15") || 15;
  const list = new EventList({ keep: 500 });
  const state = h("span", { class: "stream-state" }, badge("connecting"));
  const note = h("p", { class: "muted" });
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Events"), state),
    filterForm("events", FORM, query),
    note,
    h("section", { class: "card" }, list.node),
  );
  const got = await eventsSince(filter, Date.now() - minutes * 60_000, { signal: scope.signal });
  list.add(got.items);
  const count = got.items.length === 1 ? "1 event" : `${got.items.length} events`;
  const span = SINCE.find(([v]) => Number(v) === minutes)?.[1] ?? `${minutes} min`;
  note.textContent = `${count} in the last ${span}; new ones appear at the top as they happen.`;
  const stream = new EventStream(`/v1/events/stream?${new URLSearchParams(filter)}`, {
    token: session().token,
    after: got.position,
    onEvent: (sse) => {
      const event = envelope(sse);
      if (event === null) return;
      if (event.type === GAP) note.textContent = "Some events were trimmed from the stream before they could be read.";
      list.add([event]);
    },
    onStatus: (s) => fill(state, badge(s)),
  }).start();
  scope.add(() => stream.stop());
}
