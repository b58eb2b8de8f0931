/**
 * What the signed-in user may do here: their role allows it and the API offers it. The
 * API's routes are read from its public OpenAPI document, so a button for an endpoint this
 * API does not have (an older release) is never offered, rather than failing with a 404.
 */

import { get } from "./api.js";
import { session } from "./session.js";

const RANK = { viewer: 0, operator: 1, admin: 2 };

/** Each action: the least role that may, and the route it calls. */
const ACTIONS = {
  submit: ["operator", "POST", "/v1/jobs"],
  abort: ["operator", "POST", "/v1/jobs/{job_id}/abort"],
  retry: ["operator", "POST", "/v1/jobs/{job_id}/retry"],
  ack: ["operator", "POST", "/v1/alerts/{alert_id}/ack"],
  message: ["operator", "POST", "/v1/vms/{vm}/messages"],
  recover: ["admin", "POST", "/v1/jobs/{job_id}/recover"],
  createHook: ["admin", "POST", "/v1/hooks"],
  editHook: ["admin", "PATCH", "/v1/hooks/{hook_id}"],
  deleteHook: ["admin", "DELETE", "/v1/hooks/{hook_id}"],
  retryHookRun: ["admin", "POST", "/v1/hooks/{hook_id}/runs/{run_id}/retry"],
  readQueueModes: ["viewer", "GET", "/v1/queues"],
  controlQueue: ["admin", "PUT", "/v1/queues/{queue}"],
  audit: ["admin", "GET", "/v1/audit"],
};

let offered = new Set();

/** Learn the API's routes (call once, before anything asks `may`). */
export async function loadRoutes() {
  const res = await fetch("/openapi.json", { cache: "no-store", credentials: "omit" });
  const doc = await res.json();
  offered = new Set();
  for (const [p, ops] of Object.entries(doc.paths ?? {})) {
    for (const method of Object.keys(ops)) offered.add(`${method.toUpperCase()} ${p}`);
  }
}

export function offers(method, route) {
  return offered.has(`${method} ${route}`);
}

export function roleAllows(role, needed) {
  return (RANK[role] ?? -1) >= RANK[needed];
}

export function may(action) {
  const [needed, method, route] = ACTIONS[action];
  return roleAllows(session()?.role, needed) && offers(method, route);
}

/**
 * {id, name, role, expires_at} of `token` from /v1/whoami, or ApiError (401) when it is
 * not valid. An API without /v1/whoami (older) is only asked whether the token reads: the
 * user is then taken for a viewer, and offered nothing that changes anything.
 */
export async function identify(token) {
  if (offers("GET", "/v1/whoami")) return get("/v1/whoami", undefined, { token });
  await get("/v1/queue", undefined, { token }); // 401 for a bad token
  return { id: null, name: "", role: "viewer", expires_at: null };
}
