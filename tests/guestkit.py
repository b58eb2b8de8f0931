"""A real installer for the qemu tier, built from Debian packages and cached between runs.

`installer_tree(dest)` lays out an install tree: a `.treeinfo` naming Debian's own kernel
(`linux-image-<version>-amd64`, as `apt-cache depends linux-image-amd64` resolves it) and
an initramfs made here from `busybox-static` and the kernel's virtio modules. Its `/init`
is the "installer": it writes a boot sector (the tests' mark-writing code) and the kernel
command line it was given onto the VM's first disk, then powers the VM off, as an
installer ends. Packages are fetched with `apt-get download` (nothing is installed) into
`VMORCH_TEST_CACHE` (default /var/cache/vmorch-tests), once.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

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


def _run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd).stdout


def _kernel_package() -> str:
    for attempt in range(2):
        try:
            out = _run("apt-cache", "depends", "linux-image-amd64")
            for line in out.splitlines():
                if "Depends: linux-image-" in line:
                    return line.split("Depends:", 1)[1].strip()
        except subprocess.CalledProcessError:
            pass
        if attempt == 0:
            _run("apt-get", "update", "-qq")  # a fresh machine's package lists
    raise RuntimeError("no linux-image-amd64 in the package lists")


def _unpacked(package: str) -> Path:
    """The package's files, downloaded and unpacked once into the cache."""
    root = CACHE / package
    if (root / ".done").exists():
        return root
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    dl.chmod(0o777)  # apt's _apt user writes there
    _run("apt-get", "download", "-q", package, cwd=dl)
    [deb] = sorted(dl.glob(f"{package}_*.deb"))
    shutil.rmtree(root, ignore_errors=True)
    _run("dpkg-deb", "-x", str(deb), str(root))
    deb.unlink()
    (root / ".done").touch()
    return root


def installer_tree(dest: Path) -> None:
    """An install tree in `dest`: .treeinfo, images/pxeboot/vmlinuz and initrd.img."""
    kpkg = _kernel_package()
    kroot = _unpacked(kpkg)
    version = kpkg.removeprefix("linux-image-")
    busybox = _unpacked("busybox-static") / "bin" / "busybox"
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
    subprocess.run(["mknod", "-m", "600", str(root / "dev" / "console"), "c", "5", "1"], check=True)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = subprocess.run(
        [str(busybox), "cpio", "-o", "-H", "newc"],
        input=("\n".join(files) + "\n").encode(), cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    out.write_bytes(gzip.compress(archive.stdout, 9))
    shutil.rmtree(root)
