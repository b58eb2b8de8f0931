"""Job kind -> workflow builder. A new job kind is a request model plus an entry here."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import BadRequest
from tasks.step import Step, WorkflowBuilder
from tasks.workflows import (
    assembly_import,
    noop,
    repo_import,
    server_discover,
    server_maintenance,
    templates,
    vm_clone,
    vm_create,
    vm_create_iso,
    vm_ha,
    vm_install_tree,
    vm_iso,
    vm_lifecycle,
    vm_message,
    vm_migrate,
    vm_move_storage,
    vm_pin,
    vm_vnic,
)

WORKFLOWS: dict[str, WorkflowBuilder] = {
    "noop": noop.steps,
    "vm.create_from_template": vm_create.steps,
    "vm.create_from_iso": vm_create_iso.steps,
    "vm.create_from_install_tree": vm_install_tree.steps,
    "vm.insert_iso": vm_iso.insert_steps,
    "vm.eject_iso": vm_iso.eject_steps,
    "repository.import": repo_import.steps,
    "assembly.import": assembly_import.steps,
    "vm.clone": vm_clone.steps,
    "template.create_from_vm": templates.steps,
    "template.clone": templates.steps,
    "template.import": templates.steps,
    "vm.ha_restart": vm_ha.steps,
    "vm.migrate": vm_migrate.steps,
    "vm.move": vm_move_storage.steps,
    "vm.add_vnic": vm_vnic.add_steps,
    "vm.remove_vnic": vm_vnic.remove_steps,
    "vm.pin_vcpus": vm_pin.steps,
    "vm.message": vm_message.steps,
    "server.maintenance": server_maintenance.maintenance_steps,
    "server.activate": server_maintenance.activate_steps,
    "server.discover": server_discover.steps,
    **vm_lifecycle.WORKFLOWS,
}


def steps_for(request: Any) -> list[Step]:
    builder = WORKFLOWS.get(request.kind)
    if builder is None:
        raise BadRequest(f"no workflow for job kind {request.kind!r}")
    return builder(request)
