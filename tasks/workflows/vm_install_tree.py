"""`vm.create_from_install_tree`: install a VM from a distribution's tree.

reserve, place (the create steps) -> fetch_installer: the tree's `.treeinfo` (INI, bounded
and checked), then the kernel and initrd it names for the architecture, fetched into the
pool's repository (allow-listed, streamed, as any import) -> create_disks -> define: the
domain boots the kernel directly with the installer's arguments (a reboot ends it too) ->
install: it is started, and the step waits, holding no worker, for the installer to power
it off, within `install_timeout_s` -> boot_from_disk: redefined without the kernel (boot
from disk), the fetched kernel and initrd deleted -> start (unless `start: false`).
"""

from __future__ import annotations

import configparser
import re
from typing import cast

from yarl import URL

from orchestrator.errors import ImportFailed, Permanent
from orchestrator.targets import server_path
from schemas import event_types as et
from schemas.inventory import VmState
from schemas.requests import CreateFromInstallTree
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.steps.fetching import fetch_into, fetch_server_file, open_url
from tasks.steps.vm import START, hv_of, observe, redefine, vm_of
from tasks.workflows.vm_create import DEFINE, PLACE, RESERVE, volume_name
from tasks.workflows.vm_create_iso import empty_disks_undo, make_empty_disks

TREEINFO_MAX = 64 * 1024
_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
POWERED_OFF = [et.VM_STOPPED]


def _req(ctx: StepContext) -> CreateFromInstallTree:
    return cast(CreateFromInstallTree, ctx.request)


def _repository(ctx: StepContext) -> str:
    return ctx.run(ctx.runtime.inventory.pool(_req(ctx).pool)).repository.name


def _base(url: str) -> URL:
    """The tree's base URL, ending in '/' so that its paths join below it."""
    u = URL(url)
    return u if u.path.endswith("/") else u.with_path(u.path + "/")


def installer_paths(treeinfo: str, arch: str) -> tuple[str, str]:
    """(kernel, initrd) of the `.treeinfo` for `arch` (its `[images-<arch>]` section, or
    the paravirtual `[images-xen]` one): relative paths inside the tree."""
    ini = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        ini.read_string(treeinfo)
    except configparser.Error as e:
        raise ImportFailed(f".treeinfo is not readable: {str(e)[:200]}") from e
    for section in (f"images-{arch}", "images-xen"):
        if ini.has_section(section):
            kernel, initrd = (
                ini.get(section, "kernel", fallback=""),
                ini.get(section, "initrd", fallback=""),
            )
            for what, path in (("kernel", kernel), ("initrd", initrd)):
                if not _PATH.fullmatch(path) or ".." in path.split("/"):
                    raise ImportFailed(
                        f".treeinfo [{section}] {what} = {path[:120]!r} is not a relative path "
                        "inside the tree"
                    )
            return kernel, initrd
    raise ImportFailed(f".treeinfo has no [images-{arch}] or [images-xen] section")


def _boot_volumes(ctx: StepContext) -> tuple[str, str]:
    prefix = volume_name(ctx, 0).rsplit("-disk", 1)[0]
    return f"{prefix}-kernel", f"{prefix}-initrd"


def fetch_run(ctx: StepContext) -> Outputs:
    """Read the tree's .treeinfo, fetch its kernel and initrd into the repository."""
    req = _req(ctx)
    repo = _repository(ctx)
    kvol, ivol = _boot_volumes(ctx)
    if req.url.startswith("file:"):  # a tree on a mount the servers see (NFS)
        allowed = ctx.runtime.settings.import_allowed_paths
        treeinfo_path = server_path(req.url.rstrip("/") + "/.treeinfo", allowed)
        top = treeinfo_path.rsplit("/", 1)[0]
        hv = ctx.hypervisor(ctx.outputs["server"])
        treeinfo = hv.read_file(treeinfo_path, TREEINFO_MAX).decode("utf-8", errors="replace")
        kernel, initrd = installer_paths(treeinfo, req.arch)
        k = fetch_server_file(ctx, f"file://{top}/{kernel}", None, repo, kvol, None)
        i = fetch_server_file(ctx, f"file://{top}/{initrd}", None, repo, ivol, None)
    else:
        base = _base(req.url)
        src = open_url(ctx, str(base.join(URL(".treeinfo"))), TREEINFO_MAX)
        try:
            treeinfo = b"".join(src.chunks).decode("utf-8", errors="replace")
        finally:
            src.close()
        kernel, initrd = installer_paths(treeinfo, req.arch)
        k = fetch_into(ctx, open_url(ctx, str(base.join(URL(kernel)))), None, repo, kvol, None)
        i = fetch_into(ctx, open_url(ctx, str(base.join(URL(initrd)))), None, repo, ivol, None)
    # a tree on a mount the servers see is not at that path for the guest: its installer
    # is told where the tree is by kernel_args (inst.repo=nfs:...)
    args = [req.kernel_args, "" if req.url.startswith("file:") else f"inst.repo={req.url}"]
    if req.kickstart_url:
        args.append(f"inst.ks={req.kickstart_url}")
    cmdline = " ".join(a for a in args if a)
    return {
        "direct_boot": {"kernel": k["path"], "initrd": i["path"], "cmdline": cmdline},
        "installer": {"kernel": kernel, "initrd": initrd},
    }


def fetch_undo(ctx: StepContext) -> None:
    server = ctx.outputs.get("server")
    if server:
        hv = ctx.hypervisor(server)
        for vol in _boot_volumes(ctx):
            hv.delete_volume(_repository(ctx), vol)


def disks_run(ctx: StepContext) -> Outputs:
    return {"disks": make_empty_disks(ctx)}


def install_run(ctx: StepContext) -> Outputs | Wait:
    """Start the installer and wait for it to power the VM off. The VM is meant to be off
    afterwards (HA leaves it), and its power-off is this job's (no hook takes it for a
    crash)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    ctx.run(ctx.runtime.inventory.set_desired(vm.id, VmState.STOPPED, fence=ctx.fence))
    ctx.expect(vm.id, [et.VM_STARTED, et.VM_RESUMED])
    ctx.expect(vm.id, [et.VM_SHUTDOWN])
    ctx.expect(vm.id, POWERED_OFF)
    since = ctx.stream_position()
    hv.start(vm.id)
    return Wait(
        types=POWERED_OFF,
        subject=vm.id,
        since=since,
        timeout_s=_req(ctx).install_timeout_s,
        on_timeout="escalate",
    )


def install_settled(ctx: StepContext) -> Outputs | None:
    """The installer has ended when the VM is off (the event may have been missed)."""
    vm = vm_of(ctx)
    return {"installed": True} if observe(ctx, vm, hv_of(ctx, vm)) == VmState.STOPPED else None


def install_timed_out(ctx: StepContext) -> Outputs:
    """The installer did not finish in time: power it off, and fail the step saying so."""
    vm = vm_of(ctx)
    hv_of(ctx, vm).destroy(vm.id)
    raise Permanent(
        f"the installer did not power vm {vm.name} off within {_req(ctx).install_timeout_s:g} s"
    )


def install_undo(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    hv_of(ctx, vm).destroy(vm.id)


def boot_from_disk_run(ctx: StepContext) -> Outputs:
    """Boot from the disk from now on: the domain redefined without the installer's
    kernel, which is deleted with its initrd. Converges."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    if hv.domain_state(vm.id) not in (VmState.STOPPED, VmState.CRASHED):
        raise Permanent(f"vm {vm.name} is running again: the installer has not ended")
    record = vm.model_copy(update={"direct_boot": None, "boot": ["hd"]})
    redefine(ctx, hv, record, tree=_req(ctx).url)
    for vol in _boot_volumes(ctx):
        hv.delete_volume(_repository(ctx), vol)
    return {"boot": "hd"}


def steps(req: CreateFromInstallTree) -> list[Step]:
    out = [
        RESERVE,
        PLACE,
        Step("fetch_installer", fetch_run, fetch_undo, "fetch the tree's kernel and initrd"),
        Step("create_disks", disks_run, empty_disks_undo, "make the empty disks"),
        DEFINE,
        Step(
            "install",
            install_run,
            install_undo,
            "run the installer until it powers the VM off",
            settled=install_settled,
            escalate=install_timed_out,
        ),
        Step("boot_from_disk", boot_from_disk_run, None, "boot from disk, drop the installer"),
    ]
    if req.start:
        out.append(START)
    return out
