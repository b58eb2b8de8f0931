/**
 * Servers and pools with their VMs: each pool's servers (up, down, in maintenance, what
 * they have) and the VMs on each, kept current from the event stream (vm.* events move a
 * VM's state and server at once; server.* events have the servers read again).
 */

import { get, path } from "../api.js";
import { facts, fill, h, link, reconcile, section, table } from "../dom.js";
import { ago, mib, seconds } from "../format.js";
import { TERMINAL, jobOf } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { badge } from "../ui.js";
import { applyVmEvent, serverActions, serverState, vmOf } from "../vms.js";

const VM_PAGE = 1000;

/** Every VM, following the listing's cursor. */
export async function allVms(signal) {
  const out = [];
  let cursor = null;
  do {
    const page = await get("/v1/vms", { limit: VM_PAGE, cursor }, { signal });
    out.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

function vmTable(vms) {
  return table(
    ["VM", "state", "vCPUs", "memory", "HA", "pinned", "labels"],
    vms
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((vm) => ({
        cells: [
          link(vm.name, "vms", vm.id),
          badge(vm.state),
          String(vm.vcpus),
          mib(vm.memory_mib),
          vm.ha ? "yes" : "",
          vm.pinning ? "yes" : "",
          Object.entries(vm.labels ?? {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`)),
        ],
        dataset: { vm: vm.id, name: vm.name, state: vm.state },
      })),
    "no VM",
  );
}

function serverCard(server, vms) {
  const state = serverState(server);
  const m = server.maintenance;
  const f = server.facts;
  return h(
    "div",
    { class: "server", dataset: { server: server.name, state } },
    h(
      "div",
      { class: "server-head" },
      h("h3", {}, server.name),
      badge(state),
      state === "down" ? h("span", { class: "muted" }, `for ${seconds(server.down_for_s)}`) : "",
      h("span", { class: "tools" }, serverActions(server)),
    ),
    facts([
      ["CPUs", f ? String(f.cpus) : String(server.cpus)],
      ["memory free", f ? `${mib(f.memory_free_mib)} of ${mib(f.memory_mib)}` : mib(server.memory_mib)],
      ["facts read", f?.observed_at ? ago(f.observed_at) : null],
      ["maintenance", m ? [m.reason || "no reason given", m.by ? ` (by ${m.by})` : "", m.since ? [", ", ago(new Date(Number(m.since)).toISOString())] : "", m.job ? [" ", link("job", "jobs", m.job)] : ""] : null],
      ["URI", h("code", {}, server.uri)],
    ]),
    vmTable(vms),
  );
}

export default async function fleetPage({ scope, main }) {
  const opts = { signal: scope.signal };
  let pools = [];
  let servers = new Map();
  const vms = new Map();
  const view = h("div");
  const poolNodes = new Map(); // pool name -> its section, as last built
  const othersBox = h("div", { class: "servers" });
  const othersNode = section("Servers not in a pool yet (discovery pending or refused)", othersBox);
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Servers and pools")), view);

  async function readServers() {
    servers = new Map((await get("/v1/servers", undefined, opts)).map((s) => [s.name, s]));
  }

  async function reload() {
    const [p, , list] = await Promise.all([get("/v1/pools", undefined, opts), readServers(), allVms(scope.signal)]);
    pools = p;
    vms.clear();
    for (const vm of list) vms.set(vm.id, vm);
    render();
  }

  async function readVm(id) {
    try {
      vms.set(id, await get(path("/v1/vms", id), undefined, opts));
    } catch (e) {
      if (e.status !== 404) throw e;
      vms.delete(id);
    }
    render();
  }

  function poolSection(pool, count) {
    return h(
      "section",
      { class: "card pool", dataset: { pool: pool.name } },
      h("h2", {}, `Pool ${pool.name}`),
      facts([
        ["repositories", [pool.repository, ...(pool.repositories ?? [])].map((r) => r.name).join(", ")],
        ["networks", pool.networks.map((n) => n.name).join(", ")],
        ["VMs", String(count)],
        ["anti-affinity", pool.anti_affinity_groups.map((g) => `${g.name}: ${g.vms.join(", ")}`).join("; ")],
        ["CPU groups", pool.cpu_groups.map((g) => `${g.name}: ${g.servers.join(", ")}`).join("; ")],
      ]),
      h("div", { class: "servers" }),
      h("div", { class: "unplaced" }),
    );
  }

  /** Server cards into `box`, each rebuilt only when it or its VMs change. */
  function showServers(box, list, vmsOf) {
    reconcile(
      box,
      list.map((s) => ({ key: s.name, sig: JSON.stringify([s, vmsOf(s.name)]), build: () => serverCard(s, vmsOf(s.name)) })),
    );
  }

  function render() {
    const shown = [...vms.values()].filter((vm) => vm.state !== "deleted");
    const members = new Set(pools.flatMap((p) => p.servers));
    const others = [...servers.values()].filter((s) => !members.has(s.name));
    const ofPool = (pool) => shown.filter((vm) => vm.pool === pool.name);
    reconcile(view, [
      ...pools.map((pool) => ({
        key: `pool:${pool.name}`,
        sig: JSON.stringify([pool, ofPool(pool).length]),
        build: () => poolNodes.set(pool.name, poolSection(pool, ofPool(pool).length)).get(pool.name),
      })),
      { key: "others", sig: String(others.length > 0), build: () => (others.length ? othersNode : h("div")) },
    ]);
    for (const pool of pools) {
      const node = poolNodes.get(pool.name);
      const inPool = ofPool(pool);
      const onServer = (name) => inPool.filter((vm) => vm.server === name);
      showServers(node.querySelector(".servers"), pool.servers.filter((n) => servers.has(n)).map((n) => servers.get(n)), onServer);
      const unplaced = inPool.filter((vm) => !vm.server || !pool.servers.includes(vm.server));
      reconcile(node.querySelector(".unplaced"), [
        { key: "unplaced", sig: JSON.stringify(unplaced), build: () => h("div", {}, unplaced.length ? [h("h3", {}, "Not on a server"), vmTable(unplaced)] : "") },
      ]);
    }
    showServers(othersBox, others, () => []);
  }

  scope.live((event) => {
    if (event.type === GAP || event.type === RESYNC) {
      scope.later("reload", reload);
      return;
    }
    if (event.type?.startsWith("server.")) {
      scope.later("servers", () => readServers().then(render), 200);
      return;
    }
    const vmId = vmOf(event);
    if (vmId && event.type.startsWith("vm.")) {
      if (vms.has(vmId)) vms.set(vmId, applyVmEvent(vms.get(vmId), event));
      scope.later(`vm:${vmId}`, () => readVm(vmId), 300);
      scope.later("render", render, 50);
      return;
    }
    // a job's VM may be new to the page, and a job that ended may have made, moved or
    // removed its VM
    const id = jobOf(event) ? event.data?.vm_id : null;
    if (id && (!vms.has(id) || TERMINAL.has(event.data.state))) scope.later(`vm:${id}`, () => readVm(id), 100);
  });
  await connected();
  await reload();
}
