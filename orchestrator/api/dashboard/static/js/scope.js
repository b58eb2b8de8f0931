/**
 * The lifetime of one page view: what it subscribed to, the timers it set and the requests
 * it started all end when the user goes to another page, so a page left behind never
 * renders into the next one or keeps a stream open.
 */

import { subscribe } from "./live.js";

export class Scope {
  constructor() {
    this.controller = new AbortController();
    this.cleanups = [];
    this.timers = new Map();
  }

  get signal() {
    return this.controller.signal;
  }

  get ended() {
    return this.controller.signal.aborted;
  }

  /** Run `cleanup` when the page goes (at once if it has gone already). */
  add(cleanup) {
    if (this.ended) cleanup();
    else this.cleanups.push(cleanup);
  }

  /** `fn(event)` for every event of the app's stream while the page is shown. */
  live(fn) {
    this.add(subscribe((event) => this.ended || fn(event)));
  }

  /**
   * Run `fn` once, `ms` after the first of any number of calls with the same `key`: a
   * burst of events costs one read or render, and the last event of a burst is never left
   * unapplied. A failure is logged: the next event tries again.
   */
  later(key, fn, ms = 250) {
    if (this.timers.has(key) || this.ended) return;
    const run = () => {
      this.timers.delete(key);
      if (this.ended) return;
      Promise.resolve()
        .then(fn)
        .catch((e) => this.ended || console.warn(`${key} failed`, e));
    };
    this.timers.set(key, setTimeout(run, ms));
  }

  dispose() {
    this.controller.abort();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }
}
