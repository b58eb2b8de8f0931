"""OVF descriptors (DMTF OVF 1.x and 2.x): what an assembly holds, read from untrusted XML.

The descriptor is parsed with defusedxml (no DTD, so no entity expansion and no external
entity or reference), and everything it declares is checked before anything is fetched or
made: file references are plain names (no path, no URL), sizes and counts are bounded,
every disk names a file and every virtual system's disk a disk. Elements and attributes
are matched by their local name, so OVF 1 and 2 namespaces (and the sasd/epasd items of
OVF 2) read alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from orchestrator.errors import ImportFailed

MAX_DESCRIPTOR_BYTES = 4 * 1024 * 1024
MAX_FILES = 64
MAX_SYSTEMS = 16
MAX_DISKS_PER_SYSTEM = 16
MAX_CAPACITY_BYTES = 64 * 1024**4
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# CIM resource types (rasd:ResourceType) that a template takes
CPU, MEMORY, ETHERNET, DISK_DRIVE = "3", "4", "10", "17"
_DISK_REF = re.compile(r"^ovf:/disk/(.+)$")


@dataclass(frozen=True)
class OvfFile:
    id: str
    href: str
    size: int | None


@dataclass(frozen=True)
class OvfDisk:
    id: str
    file_id: str
    capacity_bytes: int
    format: str  # vmdk, qcow2 or raw, from the ovf:format URI


@dataclass(frozen=True)
class VirtualSystem:
    id: str
    name: str
    vcpus: int
    memory_mib: int
    disks: list[str] = field(default_factory=list)  # disk ids, in the order of the hardware
    networks: list[str] = field(default_factory=list)  # the network each NIC connects to


@dataclass(frozen=True)
class Descriptor:
    files: dict[str, OvfFile]  # by file id
    disks: dict[str, OvfDisk]  # by disk id
    systems: list[VirtualSystem]

    def file_of(self, disk_id: str) -> OvfFile:
        return self.files[self.disks[disk_id].file_id]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: Element, name: str) -> str | None:
    """An attribute by local name, whatever its namespace (ovf:href, href)."""
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == name]


def _all(el: Element, name: str) -> list[Element]:
    return [c for c in el.iter() if _local(c.tag) == name]


def _text(el: Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return None


_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*2\s*\^\s*(\d{1,2}))?\s*$", re.IGNORECASE)
_NAMED_UNITS = {"bytes": 0, "kilobytes": 10, "megabytes": 20, "gigabytes": 30, "terabytes": 40}


def _scale(units: str | None, default_shift: int) -> int:
    """The multiplier of programmatic units ("byte * 2^20") or the named ones."""
    if not units:
        return 1 << default_shift
    if m := _UNITS.match(units):
        return 1 << int(m.group(1) or 0)
    if (shift := _NAMED_UNITS.get(units.strip().lower())) is not None:
        return 1 << shift
    raise ImportFailed(f"OVF: allocation units {units[:40]!r} are not understood")


def _int(value: str | None, what: str, lo: int, hi: int) -> int:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 20:
        raise ImportFailed(f"OVF: {what} is not a whole number ({(value or '')[:40]!r})")
    n = int(value)
    if not lo <= n <= hi:
        raise ImportFailed(f"OVF: {what} {n} is out of range ({lo}-{hi})")
    return n


def _format(uri: str | None) -> str:
    u = (uri or "").lower()
    if "vmdk" in u:
        return "vmdk"
    if "qcow" in u:
        return "qcow2"
    if "raw" in u or "img" in u or not u:
        return "raw"
    raise ImportFailed(f"OVF: disk format {uri[:120] if uri else ''!r} is not vmdk, qcow2 or raw")


def parse(data: bytes, max_file_bytes: int) -> Descriptor:
    """The descriptor's files, disks and virtual systems, checked; ImportFailed naming what
    is wrong (hostile XML included)."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ImportFailed(f"OVF: descriptor larger than {MAX_DESCRIPTOR_BYTES} bytes")
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise ImportFailed(
            f"OVF: refused XML ({type(e).__name__}: DTDs and entities are not allowed)"
        ) from e
    except DET.ParseError as e:
        raise ImportFailed(f"OVF: not well-formed XML ({e})") from e
    if _local(root.tag) != "Envelope":
        raise ImportFailed("OVF: the descriptor's root is not an Envelope")
    files: dict[str, OvfFile] = {}
    for refs in _children(root, "References"):
        for f in _children(refs, "File"):
            fid, href = _attr(f, "id"), _attr(f, "href")
            if not fid or not href:
                raise ImportFailed("OVF: a File without id or href")
            if not FILE_NAME.fullmatch(href) or ".." in href:
                raise ImportFailed(
                    f"OVF: file reference {href[:120]!r} is not a plain file name "
                    "(no paths, URLs or '..')"
                )
            if _attr(f, "compression"):
                raise ImportFailed(f"OVF: compressed file {href!r} is not supported")
            size = _attr(f, "size")
            n = None if size is None else _int(size, f"size of {href}", 0, max_file_bytes)
            files[fid] = OvfFile(fid, href, n)
    if len(files) > MAX_FILES:
        raise ImportFailed(f"OVF: more than {MAX_FILES} files")
    if len({f.href for f in files.values()}) != len(files):
        raise ImportFailed("OVF: two File entries name the same file")
    declared = sum(f.size or 0 for f in files.values())
    if declared > max_file_bytes:
        raise ImportFailed(
            f"OVF: its files declare {declared} bytes, over the limit of {max_file_bytes}"
        )
    disks: dict[str, OvfDisk] = {}
    for section in _children(root, "DiskSection"):
        for d in _children(section, "Disk"):
            did, fref = _attr(d, "diskId"), _attr(d, "fileRef")
            if not did or not fref:
                raise ImportFailed(
                    "OVF: a Disk without diskId or fileRef (empty disks are not supported)"
                )
            if fref not in files:
                raise ImportFailed(
                    f"OVF: disk {did!r} refers to file {fref!r}, which is not in References"
                )
            unit = _scale(_attr(d, "capacityAllocationUnits"), 0)
            cap = (
                _int(_attr(d, "capacity"), f"capacity of disk {did}", 1, MAX_CAPACITY_BYTES) * unit
            )
            if cap > MAX_CAPACITY_BYTES:
                raise ImportFailed(f"OVF: disk {did!r} of {cap} bytes is over {MAX_CAPACITY_BYTES}")
            disks[did] = OvfDisk(did, fref, cap, _format(_attr(d, "format")))
    systems = [_system(vs, disks) for vs in _all(root, "VirtualSystem")]
    if not systems:
        raise ImportFailed("OVF: no VirtualSystem")
    if len(systems) > MAX_SYSTEMS:
        raise ImportFailed(f"OVF: more than {MAX_SYSTEMS} virtual systems")
    return Descriptor(files, disks, systems)


def _system(vs: Element, disks: dict[str, OvfDisk]) -> VirtualSystem:
    vid = _attr(vs, "id") or ""
    if not vid:
        raise ImportFailed("OVF: a VirtualSystem without id")
    name = _text(vs, "Name") or vid
    vcpus, memory_mib = 1, 512
    sys_disks: list[str] = []
    networks: list[str] = []
    for hw in _children(vs, "VirtualHardwareSection"):
        for item in hw:
            if _local(item.tag) not in ("Item", "StorageItem", "EthernetPortItem"):
                continue
            rtype = _text(item, "ResourceType")
            if rtype == CPU:
                vcpus = _int(_text(item, "VirtualQuantity"), f"{vid}: CPU count", 1, 256)
            elif rtype == MEMORY:
                scale = _scale(_text(item, "AllocationUnits"), 20)
                raw = _int(_text(item, "VirtualQuantity"), f"{vid}: memory", 1, 1 << 50) * scale
                memory_mib = raw >> 20
                if not 16 <= memory_mib <= 4 * 1024 * 1024:
                    raise ImportFailed(f"OVF: {vid}: memory of {memory_mib} MiB is out of range")
            elif rtype == DISK_DRIVE:
                host = _text(item, "HostResource") or ""
                m = _DISK_REF.match(host)
                if not m or m.group(1) not in disks:
                    raise ImportFailed(
                        f"OVF: {vid}: disk drive refers to {host[:80]!r}, no such disk"
                    )
                sys_disks.append(m.group(1))
            elif rtype == ETHERNET:
                if len(networks) >= 16:
                    raise ImportFailed(f"OVF: {vid[:63]}: more than 16 NICs")
                networks.append(_printable(_text(item, "Connection") or "")[:63])
    if len(sys_disks) > MAX_DISKS_PER_SYSTEM:
        raise ImportFailed(f"OVF: {vid}: more than {MAX_DISKS_PER_SYSTEM} disks")
    return VirtualSystem(
        _printable(vid)[:63], _printable(name)[:200], vcpus, memory_mib, sys_disks, networks
    )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def parse_manifest(text: str) -> dict[str, tuple[str, str]]:
    """An OVF manifest (`SHA256(file.vmdk)= hex`, SHA1 and SHA512 too): file -> (algorithm,
    hex digest)."""
    out: dict[str, tuple[str, str]] = {}
    line_re = re.compile(r"^(SHA1|SHA256|SHA512)\(([^)]+)\)\s*=\s*([0-9a-fA-F]+)$")
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = line_re.match(line)
        if not m:
            raise ImportFailed(f"OVF manifest: line {line[:80]!r} is not ALGORITHM(file)= digest")
        out[m.group(2)] = (m.group(1).lower(), m.group(3).lower())
    return out
