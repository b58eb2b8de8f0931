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

from orchestrator.errors import Permanent
from schemas.inventory import ServerPool, VmDisk
from schemas.requests import DiskClone, DiskCopy
from tasks.step import StepContext
from workers.hypervisor.adapter import Hypervisor


def clone_type(disks: Sequence[DiskClone | DiskCopy], index: int) -> str:
    """How disk `index` is cloned (sparse unless the request says otherwise)."""
    return disks[index].clone_type if index < len(disks) else "sparse"


def target_repository(disks: Sequence[DiskClone | DiskCopy], index: int) -> str | None:
    """The repository the request puts disk `index` in (None: where the copies go)."""
    return disks[index].repository if index < len(disks) else None


def repository_of(pool: ServerPool, disk: VmDisk) -> str:
    """Where a VM's disk is: its own repository, else its pool's."""
    return disk.repository or pool.repository.name


def clone_disks(
    ctx: StepContext,
    hv: Hypervisor,
    repository: str,
    copies: Sequence[tuple[str, str]],
    types: Sequence[DiskClone | DiskCopy] = (),
    sources: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Clone each (source volume, target name) into `repository` (or the repository the
    request gives that disk); the sources are in `sources` (per disk) or `repository`.
    The targets' volume, path, format, clone type, (thin clones) backing volume and
    repository (None: `repository`), in order."""
    froms = list(sources) if sources is not None else [repository] * len(copies)
    sizes = [hv.volume_capacity(froms[i], source) for i, (source, _name) in enumerate(copies)]
    total = sum(sizes)
    done = 0
    out = []
    for i, ((source, name), capacity) in enumerate(zip(copies, sizes, strict=True)):
        kind = clone_type(types, i)
        into = target_repository(types, i) or repository
        if ctx.attempt > 1:
            hv.delete_volume(into, name)
        expect = formats[i] if formats is not None else None
        path, fmt = hv.clone_volume(froms[i], source, name, kind, into=into, expect_format=expect)
        out.append(
            {
                "volume": name,
                "path": path,
                "format": fmt,
                "clone_type": kind,
                "backing": source if kind == "thin" else None,
                "repository": None if into == repository else into,
            }
        )
        done += capacity
        ctx.report(
            done / total if total else 1.0,
            {"bytes_done": done, "bytes_total": total, "disks_done": i + 1},
        )
        ctx.check()
    return out


class VolumeExists(Permanent):
    code = "volume_exists"


def names_free(hv: Hypervisor, repository: str, names: Sequence[str]) -> None:
    """Refuse to go on when `repository` holds a volume of one of `names` already: a job
    never replaces (nor, undoing, deletes) a volume it did not make. Run it in a step of
    its own, before the step that makes them (whose undo deletes them by name)."""
    taken = sorted(set(names) & hv.volume_names(repository))
    if taken:
        raise VolumeExists(
            f"repository {repository} holds {', '.join(taken)} already: not replaced"
        )


def delete_disks(
    hv: Hypervisor,
    repository: str,
    names: Sequence[str],
    types: Sequence[DiskClone | DiskCopy] = (),
) -> None:
    """Ensure the volumes are gone (after a partial copy too), from the repository the
    request gave each, else `repository`."""
    for i, name in enumerate(names):
        hv.delete_volume(target_repository(types, i) or repository, name)
