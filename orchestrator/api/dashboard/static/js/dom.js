/**
 * Building the DOM from data without ever parsing data as markup.
 *
 * Everything the dashboard shows may come from a guest, an event, a hook or a user, so no
 * string is ever handed to innerHTML or an attribute that runs or loads something: text
 * goes in as text nodes, attributes through setAttribute, handlers as functions. `h`
 * refuses the attributes that could turn a string into code or a request (on*, style,
 * src, srcdoc, and any href that is not one of our own `#/` routes). The page's
 * Content-Security-Policy (Trusted Types with no policy) makes a slip throw as well.
 */

const FORBIDDEN = /^(on|style$|src$|srcdoc$|formaction$|action$)/i;

function append(parent, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const c of child) append(parent, c);
  } else if (child instanceof Node) {
    parent.append(child);
  } else {
    parent.append(document.createTextNode(String(child)));
  }
}

/** Attributes safe for strings from anywhere; `on` takes {event: handler}. */
function setProps(node, props) {
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "value" || name === "checked") {
      node[name] = value;
    } else if (FORBIDDEN.test(name)) {
      throw new Error(`refusing to set ${name} from data`);
    } else if (name === "href" && !String(value).startsWith("#/")) {
      throw new Error("links go to the dashboard's own #/ routes only");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

/** An element: h("td", {class: "num"}, "42", someNode, [more, children]). */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  append(node, children);
  return node;
}

/** Replace what `node` holds. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A link to one of the dashboard's routes: route("jobs", id) is #/jobs/<id>; a last
 * part that is an object is the query (route("events", {subject: id})). */
export function route(...parts) {
  const query = typeof parts.at(-1) === "object" ? parts.pop() : null;
  const base = "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
  const search = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString() : "";
  return search ? `${base}?${search}` : base;
}

export function link(text, ...parts) {
  return h("a", { href: route(...parts) }, text);
}

/** A table row: an array of cells (text or nodes), or {cells, class, dataset}. */
export function tableRow(row) {
  const cells = Array.isArray(row) ? row : row.cells;
  const tr = h("tr", Array.isArray(row) ? {} : { class: row.class, dataset: row.dataset });
  for (const cell of cells) tr.append(h("td", {}, cell));
  return tr;
}

/** A table: `columns` are header texts, `rows` as tableRow takes them. */
export function table(columns, rows, empty = "none") {
  const t = liveTable(columns, empty);
  t.update(rows.map((row, i) => ({ key: String(i), sig: "", row: () => row })));
  return t.node;
}

const identities = new WeakMap(); // element -> {key, sig} it was built for

/**
 * Make `parent`'s children the elements of `items` ({key, sig, build}), in order, reusing
 * the element already shown for a key whose signature (what it shows, as a string) is
 * unchanged, and moving nothing that is in place. Live pages re-render on every event: an
 * element rebuilt under the pointer would swallow the click its user was making.
 */
export function reconcile(parent, items) {
  const shown = new Map();
  for (const child of parent.children) {
    const id = identities.get(child);
    if (id) shown.set(id.key, child);
  }
  const wanted = items.map(({ key, sig, build }) => {
    const have = shown.get(key);
    if (have && identities.get(have).sig === sig) return have;
    const made = build();
    identities.set(made, { key, sig });
    return made;
  });
  wanted.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] ?? null);
  });
  while (parent.children.length > wanted.length) parent.lastElementChild.remove();
}

/** A table whose rows are replaced by `update(items)`: items are {key, sig, row} with
 * `row()` making what tableRow takes; rows whose key and sig are unchanged stay. */
export function liveTable(columns, empty = "none") {
  const body = h("tbody");
  const node = h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body);
  const none = { key: "", sig: empty, build: () => h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty)) };
  const update = (items) =>
    reconcile(body, items.length ? items.map(({ key, sig, row }) => ({ key, sig, build: () => tableRow(row()) })) : [none]);
  return { node, update };
}

/** A definition list of [term, value] pairs; pairs whose value is null are left out. */
export function facts(pairs) {
  const dl = h("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("dt", {}, term), h("dd", {}, value));
  }
  return dl;
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** A value as indented JSON text, folded behind a summary when asked. */
export function json(value, summary = null) {
  const pre = h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  return summary === null ? pre : h("details", {}, h("summary", {}, summary), pre);
}
