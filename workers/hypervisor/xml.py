"""libvirt XML (domains, volumes, networks, pools), built with ElementTree (never by string
formatting)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

VMORCH_NS = "https://vmorch.dev/xmlns/vm/1"
GUEST_PORT = "org.vmorch.agent.0"  # schemas.guest.PORT_NAME (this module imports nothing)
QGA_PORT = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    target: str  # vda, vdb, ...
    fmt: str = "raw"  # raw or qcow2 (a thin clone)


@dataclass(frozen=True)
class NicSpec:
    network: str
    mac: str
    # user-mode networking (QEMU's own, no bridge): what an unprivileged server gives a
    # vNIC whose network it cannot start; the adapter decides from what libvirt reports
    user_mode: bool = False


CDROM_TARGET = "sda"  # on SATA (AHCI): SeaBIOS boots it, on i440fx and q35 machines alike


@dataclass(frozen=True)
class CdromSpec:
    """A CD-ROM drive; `path` None: empty."""

    path: str | None = None


@dataclass(frozen=True)
class DomainSpec:
    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    domain_type: str = "test"  # "test" or "qemu": the adapter sets it from the connection
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    pinning: dict[int, list[int]] = field(default_factory=dict)  # vCPU -> physical CPUs
    cdrom: CdromSpec | None = None
    boot: list[str] = field(default_factory=lambda: ["hd"])  # boot order: cdrom, hd, network
    # (kernel, initrd, cmdline) booted directly: an installer (a reboot then ends it), or
    # a VM that always boots so (`installer` False)
    direct_boot: tuple[str, str, str] | None = None
    installer: bool = True
    # the guest channel's socket directory; None: libvirt chooses the path (QEMU does,
    # per start, under its channel target directory; the agent reads it from the XML)
    channel_dir: str | None = None


def cpuset(cpus: list[int]) -> str:
    """libvirt's cpuset syntax for a list of CPUs: "2,3,5"."""
    return ",".join(str(c) for c in sorted(set(cpus)))


def _cputune(dom: ET.Element, pinning: dict[int, list[int]]) -> None:
    """Replace the domain's vCPU pins (`<cputune><vcpupin>`) with `pinning`."""
    tune = dom.find("cputune")
    if tune is not None:
        for pin in tune.findall("vcpupin"):
            tune.remove(pin)
    if pinning:
        if tune is None:
            tune = ET.Element("cputune")
            # after <vcpu>, as libvirt writes it (its schema does not mind the order)
            vcpu = dom.find("vcpu")
            dom.insert(list(dom).index(vcpu) + 1 if vcpu is not None else len(dom), tune)
        for v in sorted(pinning):
            _sub(tune, "vcpupin", vcpu=str(v), cpuset=cpuset(pinning[v]))
    elif tune is not None and len(tune) == 0:
        dom.remove(tune)


def repin_domain_xml(xml: str, pinning: dict[int, list[int]]) -> str:
    """A domain's XML (from libvirt) with its vCPU pinning replaced (none: unpinned): the
    destination definition of a live migration that changes or drops the pinning."""
    ET.register_namespace("vmorch", VMORCH_NS)
    dom = ET.fromstring(xml)
    _cputune(dom, pinning)
    return ET.tostring(dom, encoding="unicode")


def _cpus(spec: str) -> list[int]:
    """libvirt's cpuset syntax ("0-2,^1,4") as a list of CPUs."""
    on: set[int] = set()
    off: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        target = off if part.startswith("^") else on
        part = part.lstrip("^")
        lo, _, hi = part.partition("-")
        target.update(range(int(lo), int(hi or lo) + 1))
    return sorted(on - off)


def vcpu_pins(xml: str) -> dict[int, list[int]]:
    """The `<vcpupin>` entries of a domain's XML: vCPU -> CPUs."""
    tune = ET.fromstring(xml).find("cputune")
    if tune is None:
        return {}
    return {int(p.get("vcpu", "0")): _cpus(p.get("cpuset", "")) for p in tune.findall("vcpupin")}


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    if spec.metadata:
        meta = _sub(dom, "metadata")
        vm = ET.SubElement(meta, f"{{{VMORCH_NS}}}vm")
        for k, v in sorted(spec.metadata.items()):
            ET.SubElement(vm, f"{{{VMORCH_NS}}}{k}").text = v
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    _cputune(dom, spec.pinning)
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm")
    if spec.direct_boot is not None:
        kernel, initrd, cmdline = spec.direct_boot
        _sub(os_el, "kernel", kernel)
        _sub(os_el, "initrd", initrd)
        _sub(os_el, "cmdline", cmdline)
    else:
        for dev in spec.boot:
            _sub(os_el, "boot", dev=dev)
    if spec.domain_type != "test":
        # ACPI: a guest can power itself off (an installer at its end) and take a
        # graceful shutdown request; without it QEMU runs with -no-acpi
        feats = _sub(dom, "features")
        _sub(feats, "acpi")
        _sub(feats, "apic")
    if spec.direct_boot is not None and spec.installer:
        _sub(dom, "on_reboot", "destroy")  # an installer that reboots has ended too
    devices = _sub(dom, "devices")
    for d in spec.disks:
        disk = _sub(devices, "disk", type="file", device="disk")
        if d.fmt != "raw":
            _sub(disk, "driver", name="qemu", type=d.fmt)
        _sub(disk, "source", file=d.path)
        _sub(disk, "target", dev=d.target, bus="virtio")
    if spec.cdrom is not None:
        devices.append(cdrom_xml(spec.cdrom.path))
    for n in spec.nics:
        nic = _sub(devices, "interface", type="user" if n.user_mode else "network")
        if not n.user_mode:
            _sub(nic, "source", network=n.network)
        _sub(nic, "mac", address=n.mac)
        _sub(nic, "model", type="virtio")
    # the guest message channel (a virtio-serial port; the host side a unix socket that
    # QEMU listens on and the server's agent connects to)
    channel = _sub(devices, "channel", type="unix")
    source = {"mode": "bind"}
    if spec.channel_dir:
        source["path"] = f"{spec.channel_dir}/{spec.uuid}.agent.sock"
    _sub(channel, "source", **source)
    _sub(channel, "target", type="virtio", name=GUEST_PORT)
    if spec.domain_type != "test":
        # the QEMU guest agent's channel (libvirt connects to it itself)
        qga = _sub(devices, "channel", type="unix")
        _sub(qga, "source", mode="bind")
        _sub(qga, "target", type="virtio", name=QGA_PORT)
        _sub(devices, "memballoon", model="none")
    ET.register_namespace("vmorch", VMORCH_NS)
    return ET.tostring(dom, encoding="unicode")


def channel_path(xml: str) -> str | None:
    """The host side of a domain's guest message channel (its unix socket), if any."""
    for ch in ET.fromstring(xml).findall("devices/channel"):
        target = ch.find("target")
        source = ch.find("source")
        if target is not None and target.get("name") == GUEST_PORT and source is not None:
            return source.get("path")
    return None


def cdrom_xml(path: str | None) -> ET.Element:
    """The CD-ROM drive's `<disk>`: read-only, raw, with the ISO at `path` or empty."""
    disk = ET.Element("disk", {"type": "file", "device": "cdrom"})
    _sub(disk, "driver", name="qemu", type="raw")
    if path is not None:
        _sub(disk, "source", file=path)
    _sub(disk, "target", dev=CDROM_TARGET, bus="sata")
    _sub(disk, "readonly")
    return disk


def cdrom_device_xml(path: str | None) -> str:
    """The CD-ROM drive as a device to update on a domain (insert or eject)."""
    return ET.tostring(cdrom_xml(path), encoding="unicode")


def replace_cdrom_xml(xml: str, path: str | None) -> str:
    """A domain's XML (from libvirt) with its CD-ROM drive holding `path` (None: empty)."""
    ET.register_namespace("vmorch", VMORCH_NS)
    dom = ET.fromstring(xml)
    devices = dom.find("devices")
    if devices is None:
        raise ValueError("domain XML has no <devices>")
    for disk in devices.findall("disk"):
        if disk.get("device") == "cdrom":
            src = disk.find("source")
            if src is not None:
                disk.remove(src)
            if path is not None:
                src = ET.Element("source", {"file": path})
                disk.insert(1 if disk.find("driver") is not None else 0, src)
            return ET.tostring(dom, encoding="unicode")
    raise ValueError("domain has no CD-ROM drive")


def interface_xml(xml: str, mac: str, *, keep_address: bool = True) -> str | None:
    """The `<interface>` of a domain's XML whose MAC is `mac`, as XML (None: no such one);
    without its `<address>` unless `keep_address` (a device attached to a running domain
    gets a free slot there: its definition's may be taken)."""
    for nic in ET.fromstring(xml).findall("devices/interface"):
        m = nic.find("mac")
        if m is not None and (m.get("address") or "").lower() == mac.lower():
            if not keep_address:
                for addr in nic.findall("address"):
                    nic.remove(addr)
            return ET.tostring(nic, encoding="unicode")
    return None


def cdrom_source(xml: str) -> str | None:
    """The file in a domain's CD-ROM drive (None: empty, or no drive)."""
    for disk in ET.fromstring(xml).findall("devices/disk"):
        if disk.get("device") == "cdrom":
            src = disk.find("source")
            return None if src is None else src.get("file")
    return None


def volume_xml(
    name: str,
    capacity_bytes: int,
    fmt: str | None = None,
    *,
    allocate: bool = False,
    backing: tuple[str, str] | None = None,
) -> str:
    """A volume: sparse (nothing allocated up front, as Oracle VM's sparse disks) or, with
    `allocate`, every byte allocated; `fmt` its format (raw by default in a directory
    pool); `backing` (path, format): a qcow2 overlay on that volume (a thin clone)."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    _sub(vol, "allocation", str(capacity_bytes if allocate else 0), unit="bytes")
    if fmt is not None:
        _sub(_sub(vol, "target"), "format", type=fmt)
    if backing is not None:
        store = _sub(vol, "backingStore")
        _sub(store, "path", backing[0])
        _sub(store, "format", type=backing[1])
    return ET.tostring(vol, encoding="unicode")


def volume_format(xml: str) -> str:
    """A volume's format as libvirt describes it (raw when it says none)."""
    fmt = ET.fromstring(xml).find("target/format")
    return (fmt.get("type") if fmt is not None else None) or "raw"


def disk_target(index: int) -> str:
    if index >= 26:
        raise ValueError("at most 26 disks")
    return "vd" + chr(ord("a") + index)


def network_xml(name: str) -> str:
    """An isolated network (no forward, no addresses): what the lab's servers need."""
    el = ET.Element("network")
    _sub(el, "name", name)
    return ET.tostring(el, encoding="unicode")


def dir_pool_xml(name: str, path: str) -> str:
    """A directory storage pool at `path`."""
    el = ET.Element("pool", {"type": "dir"})
    _sub(el, "name", name)
    _sub(_sub(el, "target"), "path", path)
    return ET.tostring(el, encoding="unicode")
