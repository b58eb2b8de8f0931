/**
 * Who is signed in: the token and what /v1/whoami said of it, kept in sessionStorage only
 * (gone with the tab, never in localStorage or a cookie, so no other site's request can
 * carry it).
 */

const KEY = "vmorch.session";
let current;

/** {token, id, name, role, expires_at} or null. */
export function session() {
  if (current === undefined) {
    try {
      current = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
    } catch {
      current = null;
    }
  }
  return current;
}

export function signIn(value) {
  sessionStorage.setItem(KEY, JSON.stringify(value));
  current = value;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  current = null;
}
