"""Copying disks inside a repository: the one path for every clone (a VM from a template,
a VM from a VM, a template from a VM or a template).

Each copy converges on "volume `name` is a clone of `source`": a copy left by an earlier
attempt may be incomplete (its worker died mid-copy), so a repeated attempt deletes it
and copies again; the target names are the job's own. Progress is reported in bytes (the
capacity of the disks copied so far) after each disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.requests import DiskClone, DiskCopy
from tasks.step import StepContext
from workers.hypervisor.adapter import Hypervisor


def clone_type(disks: Sequence[DiskClone | DiskCopy], index: int) -> str:
    """How disk `index` is cloned (sparse unless the request says otherwise)."""
    return disks[index].clone_type if index < len(disks) else "sparse"


def clone_disks(
    ctx: StepContext,
    hv: Hypervisor,
    repository: str,
    copies: Sequence[tuple[str, str]],
    types: Sequence[DiskClone | DiskCopy] = (),
) -> list[dict[str, Any]]:
    """Clone each (source volume, target name) in `repository`; the targets' volume,
    path, format, clone type and (thin clones) backing volume, in order."""
    sizes = [hv.volume_capacity(repository, source) for source, _name in copies]
    total = sum(sizes)
    done = 0
    out = []
    for i, ((source, name), capacity) in enumerate(zip(copies, sizes, strict=True)):
        kind = clone_type(types, i)
        if ctx.attempt > 1:
            hv.delete_volume(repository, name)
        path, fmt = hv.clone_volume(repository, source, name, kind)
        out.append(
            {
                "volume": name,
                "path": path,
                "format": fmt,
                "clone_type": kind,
                "backing": source if kind == "thin" else None,
            }
        )
        done += capacity
        ctx.report(
            done / total if total else 1.0,
            {"bytes_done": done, "bytes_total": total, "disks_done": i + 1},
        )
        ctx.check()
    return out


def delete_disks(hv: Hypervisor, repository: str, names: Sequence[str]) -> None:
    """Ensure the volumes are gone (after a partial copy too)."""
    for name in names:
        hv.delete_volume(repository, name)
