/**
 * Sign in with an API token. The token is checked with the API (and its role learnt)
 * before it is kept, in this tab's sessionStorage only.
 */

import { identify } from "../access.js";
import { fill, h } from "../dom.js";
import { signIn } from "../session.js";

export default function loginPage({ main, message = "", onSignedIn }) {
  const token = h("input", { name: "token", id: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const problem = h("p", { class: "err", role: "alert" }, message);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card login" },
    h("h1", {}, "Sign in to vmorch"),
    h("label", {}, h("span", {}, "API token"), token),
    h("p", { class: "muted" }, "scripts/up prints an admin token; vmorch token create --name <name> --role viewer|operator|admin makes others. The token is kept in this tab only, until you sign out or close it."),
    problem,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      const value = token.value.trim();
      const who = await identify(value);
      signIn({ token: value, id: who.id, name: who.name, role: who.role, expires_at: who.expires_at ?? null });
      onSignedIn();
    } catch (err) {
      problem.textContent = err.status === 401 ? "This token is not valid (unknown, revoked or expired)." : err.message;
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  token.focus();
}
