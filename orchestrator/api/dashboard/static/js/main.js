/**
 * The dashboard's entry point: sign-in, the page chrome (navigation, who is signed in, the
 * live stream's state) and the hash router that shows one page at a time, each in a Scope
 * that ends when another page is shown.
 */

import { loadRoutes, may } from "./access.js";
import { UNAUTHORIZED, get } from "./api.js";
import { fill, h, route } from "./dom.js";
import { ago, startTicker } from "./format.js";
import { GAP, RESYNC, startLive, stopLive, subscribe, watchStatus } from "./live.js";
import alertsPage, { isAlertEvent } from "./pages/alerts.js";
import auditPage from "./pages/audit.js";
import eventsPage from "./pages/events.js";
import fleetPage from "./pages/fleet.js";
import hooksPage from "./pages/hooks.js";
import jobPage from "./pages/job.js";
import loginPage from "./pages/login.js";
import queuePage from "./pages/queue.js";
import vmPage from "./pages/vm.js";
import { Scope } from "./scope.js";
import { session, signOut } from "./session.js";
import { badge, button, errorBox } from "./ui.js";

/** Route name -> page; those with a title are in the navigation. */
const PAGES = {
  queue: { page: queuePage, title: "Queue" },
  fleet: { page: fleetPage, title: "Servers & pools" },
  events: { page: eventsPage, title: "Events" },
  alerts: { page: alertsPage, title: "Alerts" },
  hooks: { page: hooksPage, title: "Hooks" },
  audit: { page: auditPage, title: "Audit", allowed: () => may("audit") },
  jobs: { page: jobPage },
  vms: { page: vmPage },
};
const HOME = "queue";

const main = document.getElementById("page");
const nav = document.getElementById("nav");
const whoami = document.getElementById("whoami");
let pageScope = null;
let appScope = null;
let alertCount = null;

/** {name, args, query} of the location's hash (#/jobs/<id>?x=1). */
function where() {
  const [pathPart, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  const known = PAGES[name] && (PAGES[name].allowed?.() ?? true);
  return { name: known ? name : HOME, args: known ? args : [], query: new URLSearchParams(search) };
}

function renderNav(current) {
  fill(
    nav,
    Object.entries(PAGES)
      .filter(([, p]) => p.title && (p.allowed?.() ?? true))
      .map(([name, p]) =>
        h(
          "a",
          { href: route(name), class: name === current ? "current" : "", dataset: { page: name } },
          p.title,
          name === "alerts" && alertCount ? h("span", { class: "count" }, String(alertCount)) : "",
        ),
      ),
  );
}

async function show() {
  if (!session()) return;
  pageScope?.dispose();
  const scope = new Scope();
  pageScope = scope;
  const { name, args, query } = where();
  renderNav(name);
  // each page renders into a node of its own: one left behind writes to nothing shown
  const root = h("div", { class: "page", dataset: { page: name } }, h("p", { class: "muted" }, "Loading…"));
  main.replaceChildren(root);
  try {
    await PAGES[name].page({ scope, main: root, args, query });
  } catch (e) {
    if (!scope.ended && e.name !== "AbortError") fill(root, errorBox(e));
  }
}

async function countAlerts() {
  alertCount = (await get("/v1/alerts")).length;
  renderNav(where().name);
}

function enter() {
  const who = session();
  appScope = new Scope();
  const state = h("span", { class: "live-state", title: "the event stream" });
  appScope.add(watchStatus((s) => fill(state, badge(s === "live" ? "live" : s))));
  fill(
    whoami,
    h("span", { class: "who" }, who.name || "signed in", " ", badge(who.role)),
    who.expires_at ? h("span", { class: "expires" }, "token expires ", ago(who.expires_at)) : "",
    state,
    button("Sign out", () => leave(""), { name: "sign-out" }),
  );
  startLive(who.token, () => leave("The API refused the token (revoked or expired)."));
  appScope.add(
    subscribe((event) => {
      if (isAlertEvent(event) || event.type === GAP || event.type === RESYNC) appScope.later("alerts", countAlerts, 500);
    }),
  );
  countAlerts().catch(() => {});
  show();
}

function leave(message) {
  stopLive();
  pageScope?.dispose();
  appScope?.dispose();
  pageScope = appScope = null;
  alertCount = null;
  signOut();
  nav.replaceChildren();
  whoami.replaceChildren();
  loginPage({ main, message, onSignedIn: enter });
}

async function boot() {
  startTicker();
  try {
    await loadRoutes();
  } catch (e) {
    fill(main, errorBox(new Error(`The API does not answer: ${e.message}`)));
    return;
  }
  window.addEventListener(UNAUTHORIZED, () => session() && leave("The API refused the token (revoked or expired)."));
  window.addEventListener("hashchange", show);
  if (session()) enter();
  else leave("");
}

boot();
