"""A real installer for the qemu tier, built from Debian packages and cached between runs.

`installer_tree(dest)` lays out an install tree: a `.treeinfo` naming Debian's own kernel
(`linux-image-<version>-amd64`, as `apt-cache depends linux-image-amd64` resolves it) and
an initramfs made here from `busybox-static` and the kernel's virtio modules. Its `/init`
is the "installer": it writes a boot sector (the tests' mark-writing code) and the kernel
command line it was given onto the VM's first disk, then powers the VM off, as an
installer ends. Packages are fetched with the lab's own helpers (`apt-get download`,
nothing is installed; orchestrator/lab/guestimage.py) into `VMORCH_TEST_CACHE` (default
/var/cache/vmorch-tests), once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.lab.guestimage import kernel_package, unpacked, write_initrd
from tests.sources import BOOT_CODE

CACHE = Path(os.environ.get("VMORCH_TEST_CACHE", "/var/cache/vmorch-tests"))
# insmod order: each after what it needs (the kernel has no modules.dep before depmod)
MODULES = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
]
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %(modules)s; do insmod /lib/modules/$m.ko; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
dd if=/bootsector of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null
cat /proc/cmdline > /tmp/cmdline
dd if=/tmp/cmdline of=/dev/vda bs=512 seek=1 count=1 conv=notrunc 2>/dev/null
sync
poweroff -f
"""


def installer_tree(dest: Path) -> None:
    """An install tree in `dest`: .treeinfo, images/pxeboot/vmlinuz and initrd.img."""
    kpkg = kernel_package()
    kroot = unpacked(kpkg, CACHE)
    version = kpkg.removeprefix("linux-image-")
    busybox = unpacked("busybox-static", CACHE) / "bin" / "busybox"
    initrd = CACHE / f"installer-{version}.img"
    if not initrd.exists():
        _build_initrd(kroot / "lib" / "modules" / version / "kernel", busybox, initrd)
    images = dest / "images" / "pxeboot"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kroot / "boot" / f"vmlinuz-{version}", images / "vmlinuz")
    shutil.copyfile(initrd, images / "initrd.img")
    (dest / ".treeinfo").write_text(
        "[general]\nfamily = vmorch test installer\narch = x86_64\n\n"
        "[images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n"
    )


def _build_initrd(modules: Path, busybox: Path, out: Path) -> None:
    root = out.with_suffix(".root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    names = []
    for m in MODULES:
        shutil.copyfile(modules / m, root / "lib" / "modules" / Path(m).name)
        names.append(Path(m).stem)
    (root / "init").write_text(INIT % {"modules": " ".join(names)})
    (root / "init").chmod(0o755)
    (root / "bootsector").write_bytes(BOOT_CODE + bytes(510 - len(BOOT_CODE)) + b"\x55\xaa")
    write_initrd(root, busybox, out)
    shutil.rmtree(root)
