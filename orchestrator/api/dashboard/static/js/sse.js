/**
 * Server-Sent Events read with fetch(): the browser's EventSource cannot send an
 * Authorization header, and the API wants a Bearer token on its streams.
 *
 * SseParser follows the WHATWG event-stream format (lines ending in CR, LF or CRLF,
 * `field: value`, comments, the last event id kept across events; `retry:` is ignored, the
 * backoff here is ours). EventStream keeps one
 * stream open: it resumes after the last id it got with Last-Event-ID (the API resumes
 * there, and says `events.gap` when entries in between were trimmed), backs off on errors
 * (Retry-After on a 429), and reconnects when the server goes quiet for longer than its
 * keep-alive comments allow.
 */

export class SseParser {
  constructor() {
    this.buffer = "";
    this.lastId = null;
    this.type = "";
    this.data = [];
  }

  /** The events completed by `chunk`: {id, type, data}. */
  push(chunk) {
    let text = this.buffer + chunk;
    let held = "";
    if (text.endsWith("\r")) {
      // a CR at the end may be the first half of a CRLF
      held = "\r";
      text = text.slice(0, -1);
    }
    const lines = text.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + held;
    const events = [];
    for (const line of lines) this.line(line, events);
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data.length > 0) {
        events.push({ id: this.lastId, type: this.type || "message", data: this.data.join("\n") });
      }
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: keep-alives
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.type = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id" && !value.includes("\0")) this.lastId = value;
  }
}

const QUIET_MS = 45_000; // the API sends a keep-alive every 15 s
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

export class HttpStatus extends Error {
  constructor(status, retryAfterS) {
    super(`HTTP ${status}`);
    this.status = status;
    this.retryAfterMs = retryAfterS ? Number(retryAfterS) * 1000 : null;
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * One event stream, kept open until stop(). `onEvent({id, type, data})` for each event,
 * `onStatus("connecting"|"live"|"retrying"|"stopped")`, `onDenied(status)` when the token
 * is refused (401, 403: no retry).
 */
export class EventStream {
  constructor(url, { token, after = null, onEvent, onStatus = () => {}, onDenied = () => {} }) {
    this.url = new URL(url, location.origin);
    if (after) this.url.searchParams.set("after", after);
    this.token = token;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.onDenied = onDenied;
    this.lastId = null;
    this.stopper = new AbortController();
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopper.abort();
    this.onStatus("stopped");
  }

  async run() {
    let backoff = BACKOFF_MIN_MS;
    const stopped = this.stopper.signal;
    while (!stopped.aborted) {
      this.onStatus("connecting");
      let wait = backoff;
      try {
        await this.connect();
        backoff = BACKOFF_MIN_MS; // it was up: the next try comes soon
        wait = backoff;
      } catch (e) {
        if (stopped.aborted) return;
        if (e instanceof HttpStatus && (e.status === 401 || e.status === 403)) {
          this.onStatus("stopped");
          this.onDenied(e.status);
          return;
        }
        if (e instanceof HttpStatus && e.retryAfterMs) wait = e.retryAfterMs;
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
      if (stopped.aborted) return;
      this.onStatus("retrying");
      await pause(wait * (0.75 + Math.random() / 2), stopped);
    }
  }

  /** One connection, until the server ends it, it goes quiet, or stop(). */
  async connect() {
    const connection = new AbortController();
    const stop = () => connection.abort();
    this.stopper.signal.addEventListener("abort", stop);
    let quiet = setTimeout(stop, QUIET_MS);
    try {
      const headers = { Authorization: `Bearer ${this.token}`, Accept: "text/event-stream" };
      if (this.lastId) headers["Last-Event-ID"] = this.lastId;
      const res = await fetch(this.url, {
        headers,
        signal: connection.signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (!res.ok) throw new HttpStatus(res.status, res.headers.get("Retry-After"));
      this.onStatus("live");
      const parser = new SseParser();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(quiet);
        quiet = setTimeout(stop, QUIET_MS);
        for (const ev of parser.push(value)) {
          if (ev.id) this.lastId = ev.id;
          this.onEvent(ev);
        }
      }
    } finally {
      clearTimeout(quiet);
      this.stopper.signal.removeEventListener("abort", stop);
    }
  }
}
