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

from schemas.requests import CloudInit, Seeded
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


def seed_run(ctx: StepContext) -> Outputs:
    spec = cast(Seeded, ctx.request).cloud_init
    assert spec is not None
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
