/**
 * Calls to the vmorch API with the session's token as a Bearer header. A refused token
 * (401) signs the user out, wherever it happens; every other error is an ApiError carrying
 * the API's own message, for the page to show.
 */

import { session } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? "http_error";
    this.details = error.details ?? [];
  }
}

export const UNAUTHORIZED = "vmorch:unauthorized";

/** "/v1/jobs/{id}/abort" from path("/v1/jobs", id, "abort"), each part URL-encoded. */
export function path(base, ...parts) {
  return [base, ...parts.map((p) => encodeURIComponent(String(p)))].join("/");
}

function url(target, query) {
  const u = new URL(target, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

/** The answer's JSON (null for 204); ApiError for any status but 2xx. */
export async function request(method, target, { query, body, headers, token, signal } = {}) {
  const auth = token ?? session()?.token;
  const init = {
    method,
    signal,
    cache: "no-store",
    credentials: "omit",
    headers: { Accept: "application/json", Authorization: `Bearer ${auth}`, ...headers },
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url(target, query), init);
  const text = await res.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  if (res.status === 401 && token === undefined) window.dispatchEvent(new Event(UNAUTHORIZED));
  if (!res.ok) throw new ApiError(res.status, doc);
  return doc;
}

export const get = (target, query, opts) => request("GET", target, { ...opts, query });
export const post = (target, body, opts) => request("POST", target, { ...opts, body });
export const put = (target, body, opts) => request("PUT", target, { ...opts, body });
export const patch = (target, body, opts) => request("PATCH", target, { ...opts, body });
export const del = (target, opts) => request("DELETE", target, opts);

/** `promise`'s value, or `fallback` when the API answers 404 (gone, or not offered). */
export async function unless404(promise, fallback = null) {
  try {
    return await promise;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return fallback;
    throw e;
  }
}
