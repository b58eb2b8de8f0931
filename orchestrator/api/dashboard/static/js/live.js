/**
 * The one event stream the dashboard keeps open while someone is signed in: every event,
 * unfiltered, fanned out to the pages here. A tab costs the API one stream slot (it allows
 * `sse_max_per_token` per token), whichever pages are open; only the events page, whose
 * filters the API applies, opens a second one.
 *
 * Pages load what they show after the stream is connected (`connected()`): the API
 * registers a stream before it answers, so every change after a page's reads reaches it as
 * an event. Pages apply events idempotently, so one that their reads already show does no
 * harm. When events may have been missed (the API trimmed them: `events.gap`, or the
 * stream came up only after a page had loaded), listeners get RESYNC and read again.
 */

import { envelope } from "./eventlog.js";
import { EventStream } from "./sse.js";

export const GAP = "events.gap";
export const RESYNC = "dashboard.resync";

const listeners = new Set();
const statusListeners = new Set();
let stream = null;
let status = "stopped";
let missed = false; // a page may have loaded before the stream was up
let waiters = [];

function dispatch(event) {
  for (const fn of [...listeners]) {
    try {
      fn(event);
    } catch (e) {
      console.error("event listener failed", e);
    }
  }
}

function received(sse) {
  const event = envelope(sse);
  if (event !== null) dispatch(event);
}

function setStatus(value) {
  const fresh = value === "live" && stream?.lastId === null;
  status = value;
  for (const fn of statusListeners) fn(value);
  // a stream that drops before its first event cannot resume where it was
  if (value === "retrying" && stream?.lastId === null) missed = true;
  if (value !== "live") return;
  for (const resolve of waiters) resolve(true);
  waiters = [];
  if (fresh && missed) dispatch({ type: RESYNC });
  missed = false;
}

/** Open the stream for `token`; `onDenied` when the API refuses it. */
export function startLive(token, onDenied) {
  stopLive();
  stream = new EventStream("/v1/events/stream", {
    token,
    onEvent: received,
    onStatus: setStatus,
    onDenied,
  }).start();
}

export function stopLive() {
  stream?.stop();
  stream = null;
}

/** Call `fn(event)` for every event (and RESYNC); returns the unsubscribe function. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function watchStatus(fn) {
  statusListeners.add(fn);
  fn(status);
  return () => statusListeners.delete(fn);
}

/** Resolves once the stream is connected, or after `timeoutMs` (then a RESYNC follows
 * the connection). */
export function connected(timeoutMs = 5000) {
  if (status === "live") return Promise.resolve(true);
  return new Promise((resolve) => {
    waiters.push(resolve);
    setTimeout(() => {
      if (status !== "live") missed = true;
      resolve(false);
    }, timeoutMs);
  });
}
