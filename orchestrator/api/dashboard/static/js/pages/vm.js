/**
 * One VM: what it is and where it runs, its vCPU pinning, its operation queue, its guest as
 * the agent last saw it, its jobs and its events; lifecycle jobs and guest messages for
 * operators. Kept current from the event stream: events about the VM show at once and move
 * its state; its jobs' events update their rows; guest events have the guest read again.
 */

import { may } from "../access.js";
import { get, path, post } from "../api.js";
import { facts, fill, h, json, liveTable, reconcile, section, table } from "../dom.js";
import { EventList, eventsSince } from "../eventlog.js";
import { ago, mib, shortId, took, when } from "../format.js";
import { abortAction, applyEvent, jobLink, jobOf } from "../jobs.js";
import { GAP, RESYNC, connected } from "../live.js";
import { ask, badge, button, notify, progress } from "../ui.js";
import { applyVmEvent, vmActions } from "../vms.js";

const EVENTS_SINCE_MS = 24 * 3600 * 1000;
const JOBS = 50;

async function sendMessage(vm) {
  const answer = await ask({
    title: `Message to ${vm.name}'s guest`,
    fields: [
      { name: "key", label: "Key", required: true },
      { name: "value", label: "Value", type: "textarea", rows: 3 },
      { name: "secret", label: "Secret (sealed, never shown again)", type: "checkbox" },
    ],
    submit: "Send",
  });
  if (answer === null) return;
  const job = await post(path("/v1/vms", vm.id, "messages"), { messages: [answer] });
  notify(`Message sent by job ${shortId(job.id)}`);
}

function pinning(vm) {
  if (!vm.pinning) return h("p", { class: "muted" }, "Not pinned: its vCPUs run on any CPU of its server.");
  const rows = Object.entries(vm.pinning)
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([vcpu, cpus]) => [`vCPU ${vcpu}`, cpus.join(", ")]);
  return table(["vCPU", "physical CPUs"], rows);
}

function guestSection(guest) {
  if (!guest || (!guest.connected && !guest.last_seen)) return h("p", { class: "muted" }, "No guest program has been seen.");
  return [
    facts([
      ["connected", badge(guest.connected ? "connected" : "disconnected")],
      ["server", guest.server],
      ["version", guest.version],
      ["ready", when(guest.ready_at)],
      ["last seen", ago(guest.last_seen)],
      ["boot id", guest.boot_id],
      ["dropped lines", Object.keys(guest.dropped ?? {}).length ? Object.entries(guest.dropped).map(([k, v]) => `${k}: ${v}`).join(", ") : null],
      ["QEMU guest agent", guest.qemu_agent ? `${guest.qemu_agent.version}${guest.qemu_agent.ping_ms != null ? `, ping ${guest.qemu_agent.ping_ms} ms` : ""}` : null],
    ]),
    table(["key", "value"], Object.entries(guest.keys ?? {}).map(([k, v]) => [h("code", {}, k), v]), "no key reported"),
    guest.qemu_agent?.interfaces?.length ? json(guest.qemu_agent.interfaces, "interfaces") : "",
  ];
}

export default async function vmPage({ scope, main, args: [ref] }) {
  const opts = { signal: scope.signal };
  let vm = null;
  let guest = null;
  let jobs = new Map();
  const events = new EventList({ showSubject: false });
  const top = h("div");
  const jobRows = liveTable(["job", "kind", "state", "progress", "submitted", "took", "by", ""], "no job");
  const jobsNode = section(`Jobs (newest ${JOBS})`, jobRows.node);
  const columns = h("div", { class: "columns" }); // pinning, operation queue, guest
  fill(main, top, section("Events (last 24 h)", events.node));

  async function readVm() {
    vm = await get(path("/v1/vms", ref), undefined, opts);
    render();
  }

  async function readGuest() {
    try {
      guest = await get(path("/v1/vms", vm.id, "guest"), undefined, opts);
    } catch (e) {
      if (e.status !== 404) throw e;
      guest = null;
    }
    render();
  }

  async function readJobs() {
    const page = await get("/v1/jobs", { vm: vm.id, limit: JOBS }, opts);
    jobs = new Map(page.items.map((j) => [j.id, j]));
    render();
  }

  async function reload() {
    await readVm();
    const got = await Promise.all([
      eventsSince({ subject: vm.id }, Date.now() - EVENTS_SINCE_MS, { signal: scope.signal }),
      readGuest(),
      readJobs(),
    ]);
    events.add(got[0].items);
  }

  function head() {
    const tools = [...vmActions(vm), may("message") ? button("Message…", () => sendMessage(vm), { name: "message" }) : ""];
    return h("div", { class: "page-head" }, h("h1", {}, vm.name, " ", h("small", { class: "muted" }, vm.id)), h("div", { class: "tools" }, tools));
  }

  function summary() {
    return h(
      "section",
      { class: "card summary" },
      h("div", { class: "headline", dataset: { state: vm.state } }, badge(vm.state), vm.desired_state && vm.desired_state !== vm.state ? h("span", { class: "muted" }, `asked: ${vm.desired_state}`) : ""),
      h("div", { class: "split" }, facts([
        ["pool", vm.pool],
        ["server", vm.server ?? "not placed"],
        ["observed", vm.observed_at ? ago(vm.observed_at) : null],
        ["vCPUs", String(vm.vcpus)],
        ["memory", mib(vm.memory_mib)],
        ["HA", vm.ha ? "restarted by HA" : "no"],
        ["labels", Object.entries(vm.labels ?? {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))],
        ["boot", (vm.boot ?? []).join(", ")],
        ["CD-ROM", vm.cdrom ? `${vm.cdrom.repository}/${vm.cdrom.volume}` : vm.has_cdrom ? "empty" : null],
        ["created by", vm.created_by_job ? jobLink(vm.created_by_job) : null],
      ]), h(
        "div",
        {},
        table(["disk", "target", "format", "repository", "backing"], vm.disks.map((d) => [d.volume, d.target, d.format, d.repository ?? "", d.backing ?? ""]), "no disk"),
        table(["network", "MAC"], vm.nics.map((n) => [n.network, h("code", {}, n.mac)]), "no vNIC"),
      )),
    );
  }

  function operations() {
    const listed = (id) => h("li", {}, jobLink(id), jobs.get(id) ? [" ", jobs.get(id).kind, " ", badge(jobs.get(id).state)] : "");
    return section(
      "Operation queue",
      vm.operations?.length ? h("ol", {}, vm.operations.map(listed)) : h("p", { class: "muted" }, "No job holds or waits for this VM."),
    );
  }

  function render() {
    if (!vm) return;
    const queue = (vm.operations ?? []).map((id) => [id, jobs.get(id)?.state]);
    reconcile(top, [
      { key: "head", sig: JSON.stringify([vm.name, vm.state]), build: head },
      { key: "summary", sig: JSON.stringify({ ...vm, operations: null }), build: summary },
      { key: "columns", sig: "", build: () => columns },
      { key: "jobs", sig: "", build: () => jobsNode },
    ]);
    reconcile(columns, [
      { key: "pinning", sig: JSON.stringify(vm.pinning ?? null), build: () => section("vCPU pinning", pinning(vm)) },
      { key: "operations", sig: JSON.stringify(queue), build: operations },
      { key: "guest", sig: JSON.stringify(guest), build: () => section("Guest", guestSection(guest)) },
    ]);
    const newest = [...jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
    jobRows.update(
      newest.map((j) => ({
        key: j.id,
        sig: JSON.stringify(j),
        row: () => ({
          cells: [jobLink(j.id), j.kind, badge(j.state), progress(j.progress), when(j.created_at), took(j.started_at, j.ended_at), j.submitted_by, abortAction(j)],
          dataset: { job: j.id, state: j.state },
        }),
      })),
    );
  }

  scope.live((event) => {
    if (!vm) return;
    if (event.type === GAP || event.type === RESYNC) {
      scope.later("reload", reload);
      return;
    }
    if (event.subject === vm.id) {
      events.add([event]);
      if (event.type.startsWith("vm.")) vm = applyVmEvent(vm, event);
      if (event.type.startsWith("guest.")) scope.later("guest", readGuest, 300);
      scope.later("vm", readVm, 300);
      scope.later("render", render, 50);
      return;
    }
    const id = jobOf(event);
    if (id === null || event.data?.vm_id !== vm.id) return;
    if (jobs.has(id)) jobs.set(id, applyEvent(jobs.get(id), event));
    else scope.later("jobs", readJobs, 200);
    if (event.type !== "job.step") scope.later("vm", readVm, 300); // its operation queue
    scope.later("render", render, 50);
  });
  await connected();
  await reload();
}
