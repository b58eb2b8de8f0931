/**
 * The dashboard's small components: state badges, progress bars, buttons that run an API
 * call and say how it went, notices, and a dialog that asks for a few values.
 */

import { h, route } from "./dom.js";

/** A class-safe word made of `value` (states come from the API, but are still data). */
function word(value) {
  return String(value ?? "").toLowerCase().replace(/[^a-z0-9_-]/g, "") || "unknown";
}

export function badge(state) {
  return h("span", { class: `badge s-${word(state)}` }, String(state ?? "unknown"));
}

/** A bar for a fraction 0-1, with its percentage; nothing for null. */
export function progress(fraction) {
  if (fraction === null || fraction === undefined) return "";
  const pct = `${Math.round(fraction * 100)} %`;
  return h("span", { class: "progress" }, h("progress", { max: "1", value: String(fraction), title: pct }), h("span", { class: "pct" }, pct));
}

/** A notice at the bottom right for a few seconds: `content` is text or nodes. */
export function notify(content, kind = "info") {
  let box = document.getElementById("notices");
  if (!box) {
    box = h("div", { id: "notices", role: "status" });
    document.body.append(box);
  }
  const note = h("div", { class: `notice ${word(kind)}` }, content);
  box.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 10_000 : 5000);
}

/** A button running `action()`; disabled while it runs, its error shown as a notice. */
export function button(label, action, { kind = "", title = "", name = "" } = {}) {
  const node = h("button", { type: "button", class: kind, title, dataset: { action: name || word(label) } }, label);
  node.addEventListener("click", async () => {
    node.disabled = true;
    try {
      await action();
    } catch (e) {
      notify(`${label}: ${e.message}`, "error");
    } finally {
      node.disabled = false;
    }
  });
  return node;
}

export function errorBox(e) {
  return h("div", { class: "error-box" }, e?.message ?? String(e));
}

function input(field) {
  const attrs = { name: field.name, id: `f-${field.name}`, required: field.required, placeholder: field.placeholder };
  if (field.type === "textarea") return h("textarea", { ...attrs, rows: field.rows ?? 8, value: field.value ?? "" });
  if (field.type === "select") {
    return h("select", attrs, field.options.map(([value, text]) => h("option", { value, selected: value === field.value }, text)));
  }
  if (field.type === "checkbox") return h("input", { ...attrs, type: "checkbox", checked: Boolean(field.value) });
  return h("input", { ...attrs, type: field.type ?? "text", value: field.value ?? "", min: field.min, max: field.max, step: field.step });
}

/**
 * Ask for values in the page's <dialog>: `fields` as [{name, label, type, required,
 * options, value, help}]. Resolves to {name: value} (checkboxes as booleans), or null
 * when cancelled.
 */
export function ask({ title, text = "", fields = [], submit = "OK", kind = "primary" }) {
  const dialog = document.getElementById("dialog");
  const form = h(
    "form",
    { class: "ask" },
    h("h2", {}, title),
    text ? h("p", {}, text) : "",
    fields.map((f) =>
      h("label", { class: f.type === "checkbox" ? "check" : "" }, h("span", {}, f.label), input(f), f.help ? h("small", {}, f.help) : ""),
    ),
    h("div", { class: "buttons" }, h("button", { type: "button", value: "cancel", dataset: { action: "cancel" } }, "Cancel"), h("button", { type: "submit", class: kind, dataset: { action: "confirm" } }, submit)),
  );
  dialog.replaceChildren(form);
  return new Promise((resolve) => {
    const listening = new AbortController(); // the dialog outlives this question
    const done = (value) => {
      listening.abort();
      dialog.close();
      dialog.replaceChildren();
      resolve(value);
    };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const values = {};
      for (const f of fields) {
        const el = form.elements.namedItem(f.name);
        values[f.name] = f.type === "checkbox" ? el.checked : el.value;
      }
      done(values);
    });
    form.querySelector("[data-action=cancel]").addEventListener("click", () => done(null));
    dialog.addEventListener("cancel", () => done(null), { signal: listening.signal });
    dialog.showModal();
    form.querySelector("input, textarea, select, button[type=submit]")?.focus();
  });
}

/**
 * A row of filters for a page whose filters are its route's query (`#/events?type=vm.*`):
 * `fields` are [{name, label, placeholder, options, value}] (options: a select), shown
 * with the values of `query`; Apply goes to the page with the new query.
 */
export function filterForm(page, fields, query) {
  const control = (f) =>
    f.options
      ? h("select", { name: f.name }, f.options.map(([v, t]) => h("option", { value: v, selected: v === (query.get(f.name) ?? f.value) }, t)))
      : h("input", { name: f.name, value: query.get(f.name) ?? "", placeholder: f.placeholder ?? "" });
  const form = h(
    "form",
    { class: "filters" },
    fields.map((f) => h("label", {}, h("span", {}, f.label ?? f.name), control(f))),
    h("button", { type: "submit", class: "primary" }, "Apply"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const values = Object.fromEntries(fields.map((f) => [f.name, form.elements.namedItem(f.name).value.trim()]));
    location.hash = route(page, values);
  });
  return form;
}
