/**
 * VMs and servers as the pages show them: what an event says of a VM, a server's state in
 * a word, and the jobs a user may submit for a VM or server from the page.
 */

import { may } from "./access.js";
import { submitJob } from "./jobs.js";
import { ask, button } from "./ui.js";

/** The VM an event is about (libvirt and guest events carry it), or null. */
export function vmOf(event) {
  if (!event.type?.startsWith("vm.") && !event.type?.startsWith("guest.")) return null;
  return event.data?.vm_id ?? null;
}

/** `vm` with the state and server a libvirt event reports. */
export function applyVmEvent(vm, event) {
  const d = event.data ?? {};
  const next = { ...vm };
  if (d.state) next.state = d.state;
  if (d.server && d.state && d.state !== "deleted" && event.type !== "vm.lifecycle.migrated") next.server = d.server;
  if (d.observed_at) next.observed_at = d.observed_at;
  return next;
}

/** A server's state in a word: maintenance, down, or up. */
export function serverState(server) {
  if (server.maintenance) return "maintenance";
  if (server.down_for_s > 0) return "down";
  return "up";
}

const LIFECYCLE = [
  ["Start", "vm.start", ["stopped", "crashed"]],
  ["Stop", "vm.stop", ["running"]],
  ["Restart", "vm.restart", ["running"]],
  ["Suspend", "vm.suspend", ["running"]],
  ["Resume", "vm.resume", ["suspended"]],
  ["Kill", "vm.kill", ["running", "suspended", "crashed"]],
];

/** Buttons submitting the lifecycle jobs that fit the VM's state (operators). */
export function vmActions(vm) {
  if (!may("submit")) return [];
  return LIFECYCLE.filter(([, , states]) => states.includes(vm.state)).map(([label, kind]) =>
    button(label, () => submitJob({ kind, vm: vm.id }), { kind: kind === "vm.kill" ? "danger" : "", name: kind }),
  );
}

/** Maintenance or activation of a server, as a job (operators). */
export function serverActions(server) {
  if (!may("submit")) return [];
  if (server.maintenance) {
    return [button("Activate", () => submitJob({ kind: "server.activate", server: server.name }), { name: "server.activate" })];
  }
  const enter = async () => {
    const answer = await ask({
      title: `Maintenance of ${server.name}`,
      text: "Placement skips the server from now on, and its VMs leave it.",
      fields: [
        { name: "strategy", label: "Its VMs", type: "select", value: "migrate", options: [["migrate", "migrate"], ["restart_elsewhere", "restart elsewhere"], ["stop", "stop (left on the server)"]] },
        { name: "reason", label: "Reason" },
        { name: "dry_run", label: "Dry run (only show the plan)", type: "checkbox" },
      ],
      submit: "Enter maintenance",
    });
    if (answer === null) return;
    await submitJob({ kind: "server.maintenance", server: server.name, ...answer });
  };
  return [button("Maintenance…", enter, { name: "server.maintenance" })];
}
