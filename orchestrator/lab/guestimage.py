"""The lab's real guest: Debian's kernel and an initramfs that runs vmorch's guest program,
built from Debian packages and cached between runs.

`guest_image()` downloads (`apt-get download`, nothing is installed) the kernel that
`linux-image-amd64` resolves to, `busybox-static`, and the Python the guest program needs
(`python3.11-minimal`, `libpython3.11-minimal`, `libpython3.11-stdlib`, with `libc6`,
`zlib1g`, `libexpat1`), unpacks them into the cache, and makes:

- the kernel as an uncompressed ELF `vmlinux`, which QEMU boots through its PVH entry:
  under TCG that skips the firmware's real-mode setup and the in-guest decompression
  (about 5 s to about 2 s to a shell; ../shared/notes/guest-kernel-probe.md);
- an initramfs: busybox, the virtio modules for the console port, Python with its standard
  library compiled (unchecked-hash .pyc, no sources), the guest program, and an `/init`
  that loads the modules, finds the `org.vmorch.agent.0` port and runs the program with
  handlers that record each key and report a digest of its value back (so a test can
  check the value without the value leaving the guest).

Images are named by the kernel version and a digest of what goes in, so a changed guest
program makes a new one. The cache is `VMORCH_IMAGE_CACHE` (default /var/cache/vmorch).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workers.guest import vmorch_guest

CACHE = Path(os.environ.get("VMORCH_IMAGE_CACHE", "/var/cache/vmorch"))
PYTHON = "3.11"
PY_PACKAGES = [f"python{PYTHON}-minimal", f"libpython{PYTHON}-minimal", f"libpython{PYTHON}-stdlib"]
LIB_PACKAGES = ["libc6", "zlib1g", "libexpat1"]
# what the guest's Python links (ldd of python3.11) and nothing more of libc6
LIBS = ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libz.so.1", "libexpat.so.1"]
# the QEMU guest agent (qemu-ga) and what it links
QGA_PACKAGES = ["qemu-guest-agent", "libglib2.0-0", "libpcre2-8-0", "libudev1", "libnuma1",
                "liburing2"]  # fmt: skip
QGA_LIBS = ["libglib-2.0.so.0", "libgmodule-2.0.so.0", "libpcre2-8.so.0", "libudev.so.1",
            "libnuma.so.1", "liburing.so.2"]  # fmt: skip
# qemu-ga in the guest runs the read-only commands and shutdown; nothing that reads or
# writes files, runs programs or changes users
QGA_ALLOWED = ["guest-sync-delimited", "guest-sync", "guest-ping", "guest-info",
               "guest-network-get-interfaces", "guest-get-osinfo", "guest-get-host-name",
               "guest-shutdown"]  # fmt: skip
# insmod order (the kernel has no modules.dep before depmod): each after what it needs
MODULES = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
]
# parts of the standard library the guest program never imports
STDLIB_DROP = [
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "distutils", "unittest", "asyncio", "email", "http", "xml", "xmlrpc", "multiprocessing",
    "sqlite3", "ctypes", "curses", "dbm", "wsgiref", "venv", "concurrent",
    "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages", "__pycache__",
]  # fmt: skip
CMDLINE = (
    "console=ttyS0 quiet mitigations=off init_on_alloc=0 cryptomgr.notests tsc=reliable "
    "no_timer_check 8250.nr_uarts=1 audit=0 random.trust_cpu=on"
)
PORT = "org.vmorch.agent.0"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /var/lib/vmorch-guest
ifconfig lo 127.0.0.1 up
for m in %(modules)s; do insmod /lib/modules/$m.ko; done
port=""
i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "%(port)s" ] && port=/dev/$(basename $p)
  done
  [ -z "$port" ] && sleep 0.05
  i=$((i+1))
done
mkdir -p /dev/virtio-ports && ln -sf "$port" /dev/virtio-ports/%(port)s
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = "org.qemu.guest_agent.0" ] && \
    /usr/sbin/qemu-ga -m virtio-serial -p /dev/$(basename $p) -t /run -f /run/qemu-ga.pid \
      -b %(qga_blocked)s -d
done
export PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1 PATH=/bin:/usr/bin
exec /usr/bin/python%(py)s -S /usr/lib/vmorch-guest/vmorch_guest.py run --port "$port" \
  --handlers /etc/vmorch-guest/handlers.d --actions /etc/vmorch-guest/actions.d
"""

# Every key: recorded in the guest, and reported back (in the background: the program
# runs handlers one at a time and reads the report after this one ends), so that a test
# sees what the guest got: a SHA-256 of a plain value; for a secret (VMORCH_SECRET), only
# whether it matches the digest given before as the key `expect.<key>`, so that nothing
# derived from it leaves the guest. The output is the answer's result (kept for keys that
# are not secret).
HANDLER = r"""#!/bin/sh
read -r v
state=/var/lib/vmorch-guest
case "$1" in
  expect.*) printf %s "$v" > "$state/$1"; echo "expecting"; exit 0 ;;
esac
d=$(printf %s "$v" | sha256sum | cut -d' ' -f1)
if [ -n "$VMORCH_SECRET" ]; then
  r=mismatch
  [ "$(cat "$state/expect.$1" 2>/dev/null)" = "$d" ] && r=match
  echo "$1 (secret)" >> "$state/applied.log"
else
  r=$d
  echo "$1=$v" >> "$state/applied.log"
fi
(vmorch-guest report "applied.$1=$r" >/dev/null 2>&1 &)
echo "applied $1"
"""
# `slow`: the same, three seconds later (a message still being handled while the VM
# migrates, in the tests)
SLOW_HANDLER = """#!/bin/sh
sleep 3
exec /etc/vmorch-guest/handlers.d/default "$@"
"""
# qemu-ga's guest-shutdown runs /sbin/shutdown (this init handles no ACPI button: the
# agent is how this guest shuts down gracefully)
SHUTDOWN = """#!/bin/sh
sync
exec poweroff -f
"""
CLI = """#!/bin/sh
export PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python%(py)s -S /usr/lib/vmorch-guest/vmorch_guest.py "$@"
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd, env=env).stdout


def kernel_package() -> str:
    """The kernel package `linux-image-amd64` resolves to (apt-get update once if the
    package lists of a fresh machine do not know it)."""
    for attempt in range(2):
        try:
            for line in _run("apt-cache", "depends", "linux-image-amd64").splitlines():
                if "Depends: linux-image-" in line:
                    return line.split("Depends:", 1)[1].strip()
        except subprocess.CalledProcessError:
            pass
        if attempt == 0:
            _run("apt-get", "update", "-qq")
    raise RuntimeError("no linux-image-amd64 in the package lists")


def unpacked(package: str, cache: Path = CACHE) -> Path:
    """The package's files, downloaded and unpacked once into the cache."""
    root = cache / package
    if (root / ".done").exists():
        return root
    dl = cache / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    dl.chmod(0o700)  # private: what is unpacked from here runs on this host
    _run("apt-get", "download", "-q", package, cwd=dl)
    [deb] = sorted(dl.glob(f"{package}_*.deb"))
    shutil.rmtree(root, ignore_errors=True)
    _run("dpkg-deb", "-x", str(deb), str(root))
    deb.unlink()
    (root / ".done").touch()
    return root


def _vmlinux(bzimage: Path, out: Path) -> None:
    """The ELF kernel inside Debian's bzImage (its payload is XZ)."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise RuntimeError(f"{bzimage}: no XZ payload")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    if not elf.startswith(b"\x7fELF"):
        raise RuntimeError(f"{bzimage}: the payload is not an ELF kernel")
    tmp = out.with_suffix(".part")
    tmp.write_bytes(elf)
    tmp.replace(out)


def _digest() -> str:
    h = hashlib.sha256()
    for part in (
        INIT,
        HANDLER,
        SLOW_HANDLER,
        SHUTDOWN,
        CLI,
        CMDLINE,
        *QGA_ALLOWED,
        " ".join(MODULES + STDLIB_DROP),
    ):
        h.update(part.encode())
    h.update(Path(vmorch_guest.__file__).read_bytes())
    return h.hexdigest()[:12]


def guest_image(cache: Path = CACHE) -> GuestImage:
    """The kernel and initramfs of the lab's real guest (built once, then cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    kpkg = kernel_package()
    version = kpkg.removeprefix("linux-image-")
    kernel = cache / f"vmlinux-{version}"
    initrd = cache / f"guest-{version}-{_digest()}.img"
    if kernel.exists() and initrd.exists():
        return GuestImage(kernel, initrd)
    kroot = unpacked(kpkg, cache)
    if not kernel.exists():
        _vmlinux(kroot / "boot" / f"vmlinuz-{version}", kernel)
    if not initrd.exists():
        _build_initrd(kroot / "lib" / "modules" / version / "kernel", initrd, cache)
        for old in cache.glob(f"guest-{version}-*.img"):  # earlier builds (a lab that
            if old != initrd:  # uses one has its own link to it)
                old.unlink(missing_ok=True)
    for p in (kernel, initrd):
        p.chmod(0o644)  # the lab's daemons run QEMU as nobody
    return GuestImage(kernel, initrd)


def _build_initrd(modules: Path, out: Path, cache: Path) -> None:
    busybox = unpacked("busybox-static", cache) / "bin" / "busybox"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc",
                  "lib/modules", "lib/x86_64-linux-gnu", "lib64", "usr/bin", "usr/lib/vmorch-guest",
                  "etc/vmorch-guest/handlers.d", "etc/vmorch-guest/actions.d"):  # fmt: skip
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        names = []
        for m in MODULES:
            shutil.copyfile(modules / m, root / "lib" / "modules" / Path(m).name)
            names.append(Path(m).stem)
        _add_python(root, cache)
        blocked = _add_qemu_ga(root, cache)
        shutil.copyfile(vmorch_guest.__file__, root / "usr/lib/vmorch-guest/vmorch_guest.py")
        for path, text in (
            (
                root / "init",
                INIT
                % {
                    "modules": " ".join(names),
                    "port": PORT,
                    "py": PYTHON,
                    "qga_blocked": ",".join(blocked),
                },
            ),
            (root / "sbin/shutdown", SHUTDOWN),
            (root / "usr/bin/vmorch-guest", CLI % {"py": PYTHON}),
            (root / "etc/vmorch-guest/handlers.d/default", HANDLER),
            (root / "etc/vmorch-guest/handlers.d/slow", SLOW_HANDLER),
        ):
            path.write_text(text)
            path.chmod(0o755)
        write_initrd(root, busybox, out)


def write_initrd(root: Path, busybox: Path, out: Path) -> None:
    """`root` as a gzipped newc cpio archive (busybox's cpio: no host cpio needed), with a
    /dev/console, written to `out` whole or not at all."""
    subprocess.run(["mknod", "-m", "600", str(root / "dev/console"), "c", "5", "1"], check=True)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = subprocess.run(
        [str(busybox), "cpio", "-o", "-H", "newc"],
        input=("\n".join(files) + "\n").encode(), cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    part = out.with_suffix(".part")
    part.write_bytes(gzip.compress(archive.stdout, 6))
    part.replace(out)


def _copy_libs(root: Path, packages: list[Path], names: list[str]) -> None:
    for name in names:
        src = next(
            (p for pkg in packages for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
             if (p := pkg / d / name).exists()),
            None,
        )  # fmt: skip
        if src is None:
            raise RuntimeError(f"{name} is in none of the packages unpacked")
        shutil.copy2(src.resolve(), root / "lib/x86_64-linux-gnu" / name)


def _add_qemu_ga(root: Path, cache: Path) -> list[str]:
    """qemu-ga and its libraries; returns the commands to block (all but QGA_ALLOWED, as
    this qemu-ga lists them: version 7.2 has no allow-list option)."""
    pkgs = [unpacked(p, cache) for p in QGA_PACKAGES]
    binary = pkgs[0] / "usr/sbin/qemu-ga"
    shutil.copy2(binary, root / "usr/sbin/qemu-ga")
    _copy_libs(root, pkgs[1:], QGA_LIBS)
    every = _run(str(binary), "-b", "help").split()
    return sorted(set(every) - set(QGA_ALLOWED))


def _add_python(root: Path, cache: Path) -> None:
    """Debian's Python (binary, the libraries it links, its standard library compiled to
    sourceless .pyc by that same Python, without the parts the program never uses)."""
    py = [unpacked(p, cache) for p in PY_PACKAGES]
    libs = [unpacked(p, cache) for p in LIB_PACKAGES]
    shutil.copy2(py[0] / "usr/bin" / f"python{PYTHON}", root / "usr/bin" / f"python{PYTHON}")
    _copy_libs(root, libs, LIBS)
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    stdlib = root / "usr/lib" / f"python{PYTHON}"
    for pkg in py[1:]:
        shutil.copytree(
            pkg / "usr/lib" / f"python{PYTHON}", stdlib, dirs_exist_ok=True, symlinks=True
        )
    for name in STDLIB_DROP:
        target = stdlib / name
        if target.is_dir():
            shutil.rmtree(target)
    # compiled by the guest's own interpreter (its magic number), then the sources go
    env = {"PYTHONHOME": str(root / "usr"), "PATH": os.environ.get("PATH", "")}
    python = str(root / "usr/bin" / f"python{PYTHON}")
    _run(python, "-S", "-m", "compileall", "-q", "-b",
         "--invalidation-mode", "unchecked-hash", str(stdlib), env=env)  # fmt: skip
    for src in stdlib.rglob("*.py"):
        if src.with_suffix(".pyc").exists():
            src.unlink()
