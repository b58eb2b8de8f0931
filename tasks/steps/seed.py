"""A cloud-init NoCloud seed for a new VM (`cloud_init` in a create request): an ISO 9660
image labelled `cidata` holding `user-data`, `meta-data` (and `network-config`), written
in the worker with pycdlib, uploaded into the pool's repository as `<vm>-<id8>-seed` and
appended to the VM's disks (so it goes with the VM). Converges: the volume is the VM's
own and is written again whole."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import pycdlib

from schemas.requests import CloudInit, FirstBoot, GuestKeyValue, Seeded
from tasks.step import Outputs, Step, StepContext
from tasks.steps.vm import vm_of
from workers.hypervisor.xml import disk_target

LABEL = "cidata"


def nocloud_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image (Joliet and Rock Ridge names, as cloud-init's readers expect)
    labelled `cidata`, holding `files` (name -> text)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    for i, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{i};1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def seed_files(spec: CloudInit, vm_id: str, vm_name: str) -> dict[str, str]:
    meta: dict[str, Any] = {"instance-id": vm_id, "local-hostname": vm_name, **spec.meta_data}
    files = {"user-data": spec.user_data, "meta-data": json.dumps(meta, indent=1) + "\n"}
    if spec.network_config is not None:
        files["network-config"] = spec.network_config
    return files


def _name(ctx: StepContext) -> str:
    vm = vm_of(ctx)
    return f"{vm.name}-{vm.id[:8]}-seed"


def _repository(ctx: StepContext) -> str:
    return ctx.run(ctx.runtime.inventory.pool(vm_of(ctx).pool)).repository.name


def config_user_data(config: list[GuestKeyValue]) -> str:
    """A create's `config` as cloud-config: each key a root-only file
    /etc/vmorch/config/<key>, and `hostname` the guest's hostname (JSON is YAML)."""
    doc: dict[str, Any] = {
        "write_files": [
            {"path": f"/etc/vmorch/config/{m.key}", "content": m.value, "permissions": "0600"}
            for m in config
        ]
    }
    host = next((m.value for m in config if m.key == "hostname"), None)
    if host:
        doc["hostname"] = host
    return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"


def seed_run(ctx: StepContext) -> Outputs:
    req = ctx.request
    spec = cast(Seeded, req).cloud_init
    if spec is None:  # config_via cloud-init
        # (built, not validated: the rendering of a valid config may pass user_data's
        # limit for what a client writes)
        user_data = config_user_data(list(cast(FirstBoot, req).config))
        spec = CloudInit.model_construct(user_data=user_data, meta_data={}, network_config=None)
    vm = vm_of(ctx)
    data = nocloud_iso(seed_files(spec, vm.id, vm.name))
    hv = ctx.hypervisor(ctx.outputs["server"])
    repo, name = _repository(ctx), _name(ctx)
    path, _stored = hv.upload_volume(repo, name, len(data), [data])
    disks = [d for d in ctx.outputs.get("disks", []) if d["volume"] != name]
    disks.append({"volume": name, "path": path, "target": disk_target(len(disks))})
    return {"disks": disks, "seed": {"volume": name, "bytes": len(data)}}


def seed_undo(ctx: StepContext) -> None:
    server = ctx.outputs.get("server")
    if server is not None:
        ctx.hypervisor(server).delete_volume(_repository(ctx), _name(ctx))


SEED = Step("cloud_init_seed", seed_run, seed_undo, "make the cloud-init seed (cidata) disk")
