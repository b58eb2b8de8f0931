"""The lab: vmorch's local testbed. One libvirtd per simulated server, seeded with a pool layout.

By default 2 server pools of 2 servers each. Every server of a pool gets the pool's network
and its repository (a libvirt storage pool of the same name and path, as shared storage
would look) holding the pool's templates. The fast kind serves libvirt's test driver.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import string
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.lab.guestimage import guest_image
from orchestrator.lab.libvirtd import NOBODY_ID, LibvirtDaemon
from schemas.inventory import (
    DirectBoot,
    Inventory,
    Network,
    Repository,
    Server,
    ServerPool,
    Template,
    TemplateDisk,
)
from workers.hypervisor.adapter import Hypervisor, KeptOpen, silence_libvirt_errors

GIB = 1024**3
MIB = 1024**2


log = logging.getLogger("vmorch.lab")
LabKind = Literal["test", "qemu"]
LOOPBACK = "127.0.0.1"
TINY_MIB = 96  # a QEMU lab VM: enough for SeaBIOS
GUEST_MIB = 192  # tmpl-guest: the kernel, a 10 MB initramfs and Python


class LabSpec(BaseModel):
    pools: int = Field(default=2, ge=1, le=26)
    servers_per_pool: int = Field(default=2, ge=1, le=16)
    # test: libvirt's test driver in each daemon (fast, no guests run); qemu: the same
    # daemons' QEMU session driver, real guests under TCG
    kind: LabKind = "test"
    # qemu: offer `tmpl-guest` in every pool, a real guest kernel running vmorch's guest
    # program (built from Debian packages, cached: orchestrator/lab/guestimage.py)
    guest_image: bool = False


def _layout(spec: LabSpec) -> tuple[list[ServerPool], list[Template]]:
    qemu = spec.kind == "qemu"
    pools, templates = [], []
    for letter in string.ascii_lowercase[: spec.pools]:
        servers = [f"srv-{letter}{i}" for i in range(1, spec.servers_per_pool + 1)]
        # one directory on this host, seen by every server of the pool at the same path
        repo = Repository(name=f"repo-{letter}", assume_shared=True)
        pools.append(
            ServerPool(
                name=f"pool-{letter}",
                repository=repo,
                networks=[Network(name=f"net-{letter}")],
                servers=servers,
            )
        )
        # QEMU guests are tiny: real memory, and disks that are real (sparse) files
        root, data = (16 * MIB, 8 * MIB) if qemu else (GIB, GIB // 2)
        templates.append(
            Template(
                name=f"tmpl-{letter}",
                repository=repo.name,
                vcpus=1,
                memory_mib=TINY_MIB if qemu else 512,
                disks=[TemplateDisk(volume=f"tmpl-{letter}-root.img", capacity_bytes=root)],
            )
        )
        templates.append(
            Template(
                name=f"tmpl-{letter}-2disk",
                repository=repo.name,
                vcpus=2,
                memory_mib=2 * TINY_MIB if qemu else 1024,
                disks=[
                    TemplateDisk(volume=f"tmpl-{letter}-root.img", capacity_bytes=root),
                    TemplateDisk(volume=f"tmpl-{letter}-data.img", capacity_bytes=data),
                ],
            )
        )
    return pools, templates


def _seed_server(hv: Hypervisor, pool: ServerPool, repo_path: Path, *, fresh: bool) -> None:
    """Make a server look like a member of `pool` (idempotent). `fresh`: remove every
    domain first (the test driver's preloaded demo domain); a QEMU server keeps its
    domains across a restart of its libvirtd, as a real host does."""
    if fresh:
        hv.remove_all_domains()
    for net in pool.networks:
        hv.ensure_network(net.name)
    hv.ensure_dir_pool(pool.repository.name, str(repo_path))


QEMU = "qemu-system-x86_64"
QEMU_DRIVER_GLOB = "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so"


def check_qemu() -> None:
    """Fail with what to do when QEMU or libvirt's QEMU driver is not installed."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(QEMU)
    if not glob.glob(QEMU_DRIVER_GLOB):
        missing.append("libvirt's QEMU driver")
    if missing:
        raise RuntimeError(
            f"the qemu lab needs {' and '.join(missing)}: run `scripts/install --qemu` "
            "(Debian packages qemu-system-x86 and libvirt-daemon-driver-qemu)"
        )


def _make_repo_dir(path: Path) -> None:
    """A pool's repository directory, shared by its servers (as shared storage would be);
    owned by the daemons' user, since QEMU servers write real volume files into it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(path.parent, NOBODY_ID, NOBODY_ID)
        os.chown(path, NOBODY_ID, NOBODY_ID)


class Lab:
    """Starts, seeds and stops the lab's libvirtd servers."""

    def __init__(self, spec: LabSpec | None = None, base_dir: Path | None = None):
        self.spec = spec or LabSpec()
        # libvirtd runs as nobody: its directories must be reachable by nobody, and its
        # socket path short; so they live under /tmp rather than under the project.
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="vmorch-lab-"))
        os.chmod(self.base_dir, 0o755)
        self.daemons: dict[str, LibvirtDaemon] = {}
        # The test driver frees its shared state when the last connection to it closes, so
        # the lab keeps one connection open per server for as long as the server runs.
        self.keepers: dict[str, KeptOpen] = {}
        self._layout: tuple[dict[str, ServerPool], list[Template]] = ({}, [])

    def start(self) -> Inventory:
        if self.spec.kind == "qemu":
            check_qemu()
        # libvirt prints every error to stderr; seeding expects "not found" while it checks
        silence_libvirt_errors()
        pools, templates = _layout(self.spec)
        if self.spec.kind == "qemu" and self.spec.guest_image:
            templates += self._guest_templates(pools)
        self._layout = {p.name: p for p in pools}, templates
        servers: list[Server] = []
        try:
            for pool in pools:
                for name in pool.servers:
                    self.daemons[name] = LibvirtDaemon(
                        name, self.base_dir / name, reaper=self.spec.kind == "qemu"
                    )
                    servers.append(self._start_server(pool, name))
        except BaseException:
            self.stop()
            raise
        return Inventory(pools=pools, servers=servers, templates=templates)

    def _guest_templates(self, pools: list[ServerPool]) -> list[Template]:
        """`tmpl-guest`, for every pool: Debian's kernel booting vmorch's guest program, its
        files in the lab's directory (readable by the daemons' user, at the same path for
        every server, as shared storage would be)."""
        try:
            image = guest_image()
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else e
            log.warning("no tmpl-guest: the guest image cannot be built here (%s)", detail)
            return []
        here = self.base_dir / "guest"
        here.mkdir(exist_ok=True)
        here.chmod(0o755)
        files = []
        for src in (image.kernel, image.initrd):
            dst = here / src.name
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
                dst.chmod(0o644)
            files.append(str(dst))
        boot = DirectBoot(kernel=files[0], initrd=files[1], cmdline=image.cmdline, installer=False)
        # no disks: one template serves every pool
        return [Template(name="tmpl-guest", repository=pools[0].repository.name, vcpus=1,
                         memory_mib=GUEST_MIB, boot=boot)]  # fmt: skip

    def _start_server(self, pool: ServerPool, name: str) -> Server:
        """Start one server's daemon and seed it as a member of `pool`."""
        info = self.daemons[name].start()
        uri = info.qemu_uri if self.spec.kind == "qemu" else info.uri
        hv = Hypervisor(uri)
        self.keepers[name] = hv.keep_open()
        repo_path = self.base_dir / "repos" / pool.repository.name
        _make_repo_dir(repo_path)
        _seed_server(hv, pool, repo_path, fresh=self.spec.kind == "test")
        for t in self._layout[1]:
            if t.repository == pool.repository.name:
                for d in t.disks:
                    hv.create_volume(t.repository, d.volume, d.capacity_bytes)
        node = hv.memory_mib()
        hv.close()
        return Server(
            name=name,
            pool=pool.name,
            uri=uri,
            memory_mib=node,
            cpus=16,
            migration_host=LOOPBACK,  # the servers' daemons all listen on this host
        )

    def kill_server(self, name: str) -> None:
        """SIGKILL a server's daemon (a crashed hypervisor, for chaos tests)."""
        kept = self.keepers.pop(name, None)
        self.daemons[name].kill()
        if kept is not None:
            kept.close()

    def restart_server(self, name: str) -> None:
        """Start a killed server again, seeded as before. The test driver keeps no state
        across a restart: its domains are gone, as on a host that lost its disks."""
        pool = next(p for p in self._layout[0].values() if name in p.servers)
        self._start_server(pool, name)

    def stop(self) -> None:
        for kept in self.keepers.values():
            kept.close()
        self.keepers.clear()
        for daemon in self.daemons.values():
            daemon.stop()
        self.daemons.clear()

    def remove(self) -> None:
        daemons = list(self.daemons.values())
        self.stop()
        for d in daemons:
            d.remove_links()
        shutil.rmtree(self.base_dir, ignore_errors=True)
