/**
 * Times, durations and sizes as people read them. Relative times ("12 s ago") are marked
 * with the instant they count from and kept current by one ticker for the whole page: the
 * page changes with time without asking the API anything.
 */

import { h } from "./dom.js";

export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "";
  const abs = Math.abs(s);
  if (abs < 1) return `${Math.round(abs * 1000)} ms`;
  if (abs < 10) return `${abs.toFixed(1)} s`;
  const whole = Math.round(abs);
  if (whole < 90) return `${whole} s`;
  if (whole < 5400) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  const minutes = Math.round(whole / 60);
  if (minutes < 2880) return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  return `${Math.round(minutes / 1440)} d`;
}

/** Seconds between two ISO times (the second defaults to now). */
export function between(fromIso, toIso = null) {
  if (!fromIso) return null;
  const to = toIso ? Date.parse(toIso) : Date.now();
  return (to - Date.parse(fromIso)) / 1000;
}

function relative(ms) {
  const s = (Date.now() - ms) / 1000;
  return s >= 0 ? `${seconds(s)} ago` : `in ${seconds(-s)}`;
}

/** "12 s ago" (or "in 4 s"), kept current; the exact time is its tooltip. */
export function ago(iso) {
  if (!iso) return "";
  const ms = Date.parse(iso);
  return h("time", { class: "ago", datetime: iso, title: new Date(ms).toLocaleString(), dataset: { at: String(ms) } }, relative(ms));
}

/** The local time of day (the date too when it is not today), exact time as tooltip. */
export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = d.toDateString() === new Date().toDateString();
  const text = today ? d.toLocaleTimeString() : d.toLocaleString();
  return h("time", { datetime: iso, title: iso }, text);
}

export function took(startIso, endIso) {
  return startIso && endIso ? seconds(between(startIso, endIso)) : "";
}

export function mib(n) {
  if (n === null || n === undefined) return "";
  return n >= 10240 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

let ticker = null;

/** Keep every relative time on the page current, once a second. */
export function startTicker() {
  ticker ??= setInterval(() => {
    for (const node of document.querySelectorAll("time.ago[data-at]")) {
      node.textContent = relative(Number(node.dataset.at));
    }
  }, 1000);
}
