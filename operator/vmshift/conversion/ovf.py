"""The OVF 0.9/1.x/2.0 reader. Pure: no I/O except reading the descriptor it is given.

It turns a descriptor (bytes, text, a stream or a file path) into an ``OvfDescriptor``.
Untrusted XML is parsed by ``safexml`` (defusedxml, no DTD, bounded size, depth and element
count). Every refusal is an ``OvfError`` whose message says what is wrong and where (line and
element path). Nothing is guessed: a descriptor without a processor or memory item is refused,
and an assumption that had to be made (memory units missing, say) is recorded as a warning.

The three dialects differ in shape, not in meaning: OVF 0.9 writes ``<Section xsi:type=
"ovf:DiskSection_Type">`` and ``<Content xsi:type="ovf:VirtualSystem_Type">`` and ``InstanceId``;
1.x writes ``<DiskSection>``, ``<VirtualSystem>`` and ``<Item>``; 2.0 adds ``<StorageItem>`` and
``<EthernetPortItem>`` (CIM storage and Ethernet-port allocation data). Item fields are read by
local name, so the rasd/sasd/epasd namespaces and the 0.9 spelling all read alike.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import IO

from vmshift.conversion.safexml import (
    DEFAULT_LIMITS,
    Node,
    XmlLimits,
    XmlRefused,
    parse_bytes,
    parse_file,
    parse_stream,
)
from vmshift.conversion.source import (
    Bus,
    GuestOs,
    MediaKind,
    OvfDescriptor,
    ProductInfo,
    SourceController,
    SourceDisk,
    SourceKind,
    SourceMedia,
    SourceNic,
    os_family,
)

OVF_NAMESPACES = {
    "http://www.vmware.com/schema/ovf/1/envelope": "0.9",
    "http://schemas.dmtf.org/ovf/envelope/1": "1.x",
    "http://schemas.dmtf.org/ovf/envelope/2": "2.0",
}
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
VMW_NS = "http://www.vmware.com/schema/ovf"
VBOX_NS = "http://www.virtualbox.org/ovf/machine"

MiB = 1024 * 1024
GiB = 1024 * MiB
#: Problems spelled out in an OvfError's message; ``problems`` holds them all.
MAX_PROBLEMS_SHOWN = 20

#: CIM ResourceType values (CIM_ResourceAllocationSettingData), and VirtualBox's sound card (35).
RT_OTHER, RT_CPU, RT_MEMORY = 1, 3, 4
RT_IDE, RT_SCSI, RT_FC, RT_ISCSI, RT_IB = 5, 6, 7, 8, 9
RT_NIC, RT_OTHER_NIC = 10, 11
RT_FLOPPY, RT_CD, RT_DVD, RT_DISK, RT_TAPE = 14, 15, 16, 17, 18
RT_OTHER_STORAGE = 20
RT_SERIAL, RT_PARALLEL, RT_USB, RT_GRAPHICS, RT_FIREWIRE = 21, 22, 23, 24, 25
RT_SOUND = 35
CONTROLLER_TYPES = {RT_IDE, RT_SCSI, RT_FC, RT_ISCSI, RT_IB, RT_OTHER_STORAGE}
MEDIA_TYPES = {RT_FLOPPY: MediaKind.Floppy, RT_CD: MediaKind.CD, RT_DVD: MediaKind.DVD}
#: Hardware the target VM has no counterpart for: (warning category, what it is).
NOT_CARRIED = {
    RT_SERIAL: ("serial", "serial port"),
    RT_PARALLEL: ("parallel", "parallel port"),
    RT_USB: ("usb", "USB controller"),
    RT_FIREWIRE: ("firewire", "IEEE 1394 controller"),
    RT_SOUND: ("sound", "sound card"),
    RT_TAPE: ("tape", "tape drive"),
}
_TYPE_NAMES = {
    RT_CPU: "processor", RT_MEMORY: "memory", RT_IDE: "IDE controller", RT_SCSI: "SCSI controller",
    RT_FC: "Fibre Channel adapter", RT_ISCSI: "iSCSI adapter", RT_IB: "InfiniBand adapter",
    RT_NIC: "Ethernet adapter", RT_OTHER_NIC: "network adapter", RT_FLOPPY: "floppy drive",
    RT_CD: "CD drive", RT_DVD: "DVD drive", RT_DISK: "disk drive", RT_OTHER_STORAGE: "storage controller",
    RT_GRAPHICS: "graphics controller",
}

#: ResourceSubType words (lower case) to catalog driver names, per device class.
NIC_DRIVERS = {
    "e1000": "e1000", "e1000e": "e1000e", "pcnet32": "pcnet", "pcnet": "pcnet", "vlance": "pcnet",
    "am79c970a": "pcnet", "am79c973": "pcnet", "82540em": "e1000", "82543gc": "e1000",
    "82545em": "e1000", "rtl8139": "rtl8139", "vmxnet": "vmxnet", "vmxnet2": "vmxnet",
    "vmxnet3": "vmxnet3", "virtio": "virtio-net", "virtio-net": "virtio-net",
    "netvsc": "netvsc",
}
SCSI_DRIVERS = {
    "lsilogic": "lsilogic", "lsilogicsas": "lsisas", "buslogic": "buslogic", "virtualscsi": "pvscsi",
    "pvscsi": "pvscsi", "virtio": "virtio-scsi", "virtio-scsi": "virtio-scsi", "storvsc": "storvsc",
}
OTHER_STORAGE = {  # ResourceType 20: SATA, NVMe, virtio block
    "ahci": (Bus.SATA, "ahci"), "vmware.sata.ahci": (Bus.SATA, "ahci"),
    "nvme": (Bus.NVMe, "nvme"), "vmware.nvme.controller": (Bus.NVMe, "nvme"),
    "virtio": (Bus.Other, "virtio-blk"), "virtio-blk": (Bus.Other, "virtio-blk"),
}
VBOX_NIC_TYPES = {"am79c970a": "pcnet", "am79c973": "pcnet", "82540em": "e1000", "82543gc": "e1000",
                  "82545em": "e1000", "virtio": "virtio-net"}
VBOX_GUEST_ADDITIONS = "/VirtualBox/GuestAdd/Version"


class OvfError(ValueError):
    """A descriptor was refused. ``problems`` lists each reason, located by line and element path."""

    what = "OVF descriptor"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            shown = "; ".join(f"({i}) {p}" for i, p in enumerate(problems[:MAX_PROBLEMS_SHOWN], 1))
            more = len(problems) - MAX_PROBLEMS_SHOWN
            text = f"{len(problems)} problems: {shown}" + (f"; and {more} more" if more > 0 else "")
        super().__init__(f"{self.what} {source} refused: {text}")


# --- reading ------------------------------------------------------------------------------------


def parse_ovf(data: bytes | str, *, configuration: str | None = None, virtual_system: str | None = None,
              source: str = "(inline)", limits: XmlLimits = DEFAULT_LIMITS) -> OvfDescriptor:
    """Read a descriptor held in memory (e.g. from a ConfigMap or an OVA member)."""
    try:
        root = parse_bytes(data, limits)
    except XmlRefused as exc:
        raise OvfError(source, [str(exc)]) from None
    return interpret(root, configuration=configuration, virtual_system=virtual_system, source=source)


def read_ovf_stream(stream: IO[bytes], *, configuration: str | None = None,
                    virtual_system: str | None = None, source: str = "(stream)",
                    limits: XmlLimits = DEFAULT_LIMITS) -> OvfDescriptor:
    """Read a descriptor from a binary stream, in chunks, refusing it once it passes the size limit."""
    try:
        root = parse_stream(stream, limits)
    except XmlRefused as exc:
        raise OvfError(source, [str(exc)]) from None
    return interpret(root, configuration=configuration, virtual_system=virtual_system, source=source)


def read_ovf(path: str | os.PathLike[str], *, configuration: str | None = None,
             virtual_system: str | None = None, limits: XmlLimits = DEFAULT_LIMITS) -> OvfDescriptor:
    """Read the descriptor file at ``path``; its size is checked before a byte is parsed."""
    source = os.fspath(path)
    try:
        root = parse_file(path, limits)
    except XmlRefused as exc:
        raise OvfError(source, [str(exc)]) from None
    except OSError as exc:
        raise OvfError(source, [f"cannot be read: {exc.strerror or exc}"]) from None
    return interpret(root, configuration=configuration, virtual_system=virtual_system, source=source)


# --- small helpers ------------------------------------------------------------------------------


def at(node: Node) -> str:
    """Where a node is, for messages: ``line 44 (/Envelope/VirtualSystem/.../Item[2])``."""
    return f"line {node.line} ({node.path()})"


def units_to_bytes(units: str) -> int:
    """Bytes per unit of a DSP0004 programmatic unit (``byte * 2^20``) or a common name (``MegaBytes``).

    Named units (KB, MB, MegaBytes, ...) are read as binary multiples, as VMware and VirtualBox mean
    them. ValueError when the text is not a unit of bytes or the multiplier is absurd.
    """
    text = re.sub(r"\s+", "", units).lower()
    named = {
        "byte": 1, "bytes": 1, "b": 1,
        "kilobyte": 2**10, "kilobytes": 2**10, "kb": 2**10, "kib": 2**10,
        "megabyte": 2**20, "megabytes": 2**20, "mb": 2**20, "mib": 2**20,
        "gigabyte": 2**30, "gigabytes": 2**30, "gb": 2**30, "gib": 2**30,
        "terabyte": 2**40, "terabytes": 2**40, "tb": 2**40, "tib": 2**40,
    }
    if text in named:
        return named[text]
    match = re.fullmatch(r"bytes?((?:\*\d{1,5}(?:\^\d{1,3})?){1,3})", text)
    if not match:
        raise ValueError(f"{units!r} is not a unit of bytes (expected e.g. 'byte * 2^20' or 'MegaBytes')")
    value = 1
    for factor in match.group(1).split("*")[1:]:
        base_text, _, exp_text = factor.partition("^")
        base, exp = int(base_text), int(exp_text or "1")
        if base < 1 or exp > 64 or exp * math.log2(max(base, 2)) > 64:
            raise ValueError(f"{units!r} is out of range")
        value *= base**exp
    if value > 2**64:
        raise ValueError(f"{units!r} is out of range")
    return value


def _int(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"\s*[+]?\d{1,19}\s*", text):
        return None
    return int(text)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _words(text: str | None) -> list[str]:
    return [w for w in (text or "").split() if w]


# --- the item view ------------------------------------------------------------------------------


@dataclass
class _Item:
    """One hardware item (Item, StorageItem or EthernetPortItem) with its CIM fields by local name."""

    node: Node
    fields: dict[str, list[str]]
    instance_id: str
    configurations: list[str]
    bound: str | None
    vmw_config: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name.lower())
        return values[0] if values else None

    @property
    def resource_type(self) -> int | None:
        return _int(self.get("ResourceType"))

    @property
    def label(self) -> str:
        name = self.get("ElementName") or self.get("Caption") or self.get("Description")
        return f"InstanceID {self.instance_id}" + (f" {name!r}" if name else "")

    @property
    def name(self) -> str:
        return self.get("ElementName") or self.get("Caption") or f"item-{self.instance_id}"

    @property
    def subtypes(self) -> list[str]:
        return _words(self.get("ResourceSubType"))


def _item(node: Node, ovf_ns: str, index: int) -> _Item:
    fields: dict[str, list[str]] = {}
    vmw: dict[str, str] = {}
    for child in node.children:
        if child.ns == VMW_NS:
            if child.name in ("Config", "ExtraConfig"):
                key = child.attr("key", VMW_NS) or child.attr("key")
                if key:
                    vmw[key] = child.attr("value", VMW_NS) or child.attr("value") or ""
            elif child.name == "CoresPerSocket":
                vmw["coresPerSocket"] = child.text
            continue
        fields.setdefault(child.name.lower(), []).append(child.text)
    instance = (fields.get("instanceid") or [f"#{index}"])[0] or f"#{index}"
    configs = _words(node.attr("configuration", ovf_ns) or node.attr("configuration"))
    bound = node.attr("bound", ovf_ns) or node.attr("bound")
    return _Item(node, fields, instance, configs, bound, vmw)


# --- interpretation -----------------------------------------------------------------------------


class _Findings:
    """Problems (refuse) and warnings (carry on), warnings deduplicated by category."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.categories: set[str] = set()
        self._seen: set[str] = set()

    def problem(self, node: Node | None, message: str) -> None:
        self.problems.append(f"{at(node)}: {message}" if node is not None else message)

    def warn(self, message: str, category: str | None = None) -> None:
        if category is not None:
            self.categories.add(category)
        if message not in self._seen:
            self._seen.add(message)
            self.warnings.append(message)


def _kind(node: Node, ovf_ns: str) -> str:
    """The section or content kind, the same for ``<DiskSection>`` and 0.9's ``<Section xsi:type>``."""
    if node.ns != ovf_ns:
        return ""
    if node.name in ("Section", "Content"):
        declared = node.attr("type", XSI_NS) or ""
        local = declared.rpartition(":")[2]
        return local.removesuffix("_Type")
    return node.name


def _children(node: Node, ovf_ns: str, kind: str) -> list[Node]:
    return [c for c in node.children if _kind(c, ovf_ns) == kind]


def _oattr(node: Node, local: str, ovf_ns: str) -> str | None:
    """An OVF attribute, qualified (``ovf:capacity``) or not."""
    value = node.attr(local, ovf_ns)
    return value if value is not None else node.attrs.get(local)


@dataclass
class _Disk:
    node: Node
    disk_id: str
    capacity_bytes: int | None
    file: str | None


@dataclass
class _Controller:
    item: _Item
    model: SourceController


def interpret(root: Node, *, configuration: str | None = None, virtual_system: str | None = None,
              source: str = "(inline)") -> OvfDescriptor:
    """The descriptor a parsed OVF tree describes; OvfError lists every inconsistency found."""
    if root.name != "Envelope" or root.ns not in OVF_NAMESPACES:
        seen = f"{{{root.ns}}}{root.name}" if root.ns else root.name
        raise OvfError(source, [
            f"line {root.line}: the root element is {seen}, not an OVF Envelope in one of the OVF "
            f"namespaces ({', '.join(OVF_NAMESPACES)})"
        ])
    ovf_ns = root.ns
    declared_version = _oattr(root, "version", ovf_ns)
    version = declared_version if declared_version else OVF_NAMESPACES[ovf_ns]
    found = _Findings()

    # References: file id -> (href, size)
    files: dict[str, tuple[str, int | None]] = {}
    for refs in _children(root, ovf_ns, "References"):
        for f in refs.children:
            if _kind(f, ovf_ns) != "File":
                continue
            file_id, href = _oattr(f, "id", ovf_ns), _oattr(f, "href", ovf_ns)
            if not file_id or not href:
                found.problem(f, "a File needs both ovf:id and ovf:href")
                continue
            if file_id in files:
                found.problem(f, f"File id {file_id!r} is declared twice")
            files[file_id] = (href, _int(_oattr(f, "size", ovf_ns)))

    # Networks
    networks = [
        name for section in _children(root, ovf_ns, "NetworkSection") for n in section.children
        if _kind(n, ovf_ns) == "Network" and (name := _oattr(n, "name", ovf_ns))
    ]

    # Virtual system (one; a collection must be narrowed by name)
    systems: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        for child in node.children:
            kind = _kind(child, ovf_ns)
            if kind == "VirtualSystem":
                systems.append(child)
            elif kind == "VirtualSystemCollection":
                stack.append(child)
    systems.sort(key=lambda n: n.line)
    if not systems:
        raise OvfError(source, [f"line {root.line}: the envelope holds no VirtualSystem: nothing to import"])
    ids = [_oattr(s, "id", ovf_ns) or f"#{i}" for i, s in enumerate(systems)]
    if virtual_system is not None:
        if virtual_system not in ids:
            raise OvfError(source, [f"no VirtualSystem with id {virtual_system!r}; the package holds "
                                    f"{', '.join(ids)}"])
        system = systems[ids.index(virtual_system)]
    elif len(systems) > 1:
        raise OvfError(source, [f"the package holds {len(systems)} virtual systems ({', '.join(ids)}); "
                                "name the one to import"])
    else:
        system = systems[0]

    product = _product(system, ovf_ns)

    # Disks, with capacities resolved (a ${property} capacity from the ProductSection)
    disks: dict[str, _Disk] = {}
    for section in _children(root, ovf_ns, "DiskSection"):
        for d in section.children:
            if _kind(d, ovf_ns) != "Disk":
                continue
            disk = _disk(d, ovf_ns, files, product, found)
            if disk is not None:
                if disk.disk_id in disks:
                    found.problem(d, f"Disk id {disk.disk_id!r} is declared twice")
                disks[disk.disk_id] = disk

    # Deployment options
    configurations: list[str] = []
    default_configuration: str | None = None
    for section in _children(root, ovf_ns, "DeploymentOptionSection") + _children(
            system, ovf_ns, "DeploymentOptionSection"):
        for c in section.children:
            if _kind(c, ovf_ns) != "Configuration":
                continue
            cid = _oattr(c, "id", ovf_ns)
            if not cid:
                found.problem(c, "a Configuration needs an ovf:id")
                continue
            configurations.append(cid)
            if (_oattr(c, "default", ovf_ns) or "").lower() in ("true", "1") and default_configuration is None:
                default_configuration = cid
    if configurations and default_configuration is None:
        default_configuration = configurations[0]  # OVF: the first one is the default when none is marked
    if configuration is not None and configuration not in configurations:
        offered = ", ".join(configurations) if configurations else "none (no DeploymentOptionSection)"
        raise OvfError(source, [f"configuration {configuration!r} is not offered; the descriptor offers {offered}"])
    chosen = configuration if configuration is not None else default_configuration

    # Hardware
    hardware_sections = _children(system, ovf_ns, "VirtualHardwareSection")
    if not hardware_sections:
        raise OvfError(source, [f"{at(system)}: the virtual system has no VirtualHardwareSection: "
                                "nothing to size the VM from"])
    hardware = hardware_sections[0]
    if len(hardware_sections) > 1:
        found.warn(f"{len(hardware_sections)} VirtualHardwareSections: the first one ({at(hardware)}) is used")
    family = None
    for s in hardware.children:
        if _kind(s, ovf_ns) == "System":
            family = next((c.text for c in s.children if c.name == "VirtualSystemType"), None)

    all_items = [
        _item(n, ovf_ns, i) for i, n in enumerate(hardware.children)
        if _kind(n, ovf_ns) in ("Item", "StorageItem", "EthernetPortItem")
    ]
    items = _select(all_items, chosen, found)
    by_id = {i.instance_id: i for i in items}

    machine = _Machine(found, ovf_ns, files, disks, set(networks))
    for item in items:
        machine.add(item)
    machine.link(by_id)
    machine.vmware_extras(hardware)
    for node in system.children:
        if node.ns == VBOX_NS and node.name == "Machine":
            machine.virtualbox(node)
    used = {d for d in machine.used_disks}
    for disk_id, disk in disks.items():
        if disk_id not in used:
            where = f" in configuration {chosen!r}" if chosen else ""
            found.warn(f"{at(disk.node)}: Disk {disk_id!r} is attached to no drive{where}; it is not imported")

    if machine.cpus is None:
        found.problem(hardware, "no processor item (ResourceType 3) with a VirtualQuantity"
                      + (f" applies to configuration {chosen!r}" if chosen else "")
                      + ": nothing to size the VM's processors from")
    if machine.memory_mib is None:
        found.problem(hardware, "no memory item (ResourceType 4) with a VirtualQuantity"
                      + (f" applies to configuration {chosen!r}" if chosen else "")
                      + ": nothing to size the VM's memory from")
    if found.problems:
        raise OvfError(source, found.problems)
    assert machine.cpus is not None and machine.memory_mib is not None
    if not machine.disks:
        found.warn("the virtual system declares no disk: the VM is created without disks")

    name = next((c.text for c in system.children if _kind(c, ovf_ns) == "Name" and c.text), None)
    return OvfDescriptor(
        kind=SourceKind.Ovf,
        name=name or _oattr(system, "id", ovf_ns) or "unnamed",
        os=_guest_os(system, ovf_ns),
        cpus=machine.cpus,
        memory_mib=machine.memory_mib,
        disks=machine.disks,
        nics=machine.nics,
        controllers=[c.model for c in machine.controllers.values()],
        media=machine.media,
        drivers=list(machine.evidence),
        driver_evidence=dict(machine.evidence),
        warnings=found.warnings,
        ovf_version=version,
        configuration=chosen,
        configurations=configurations,
        default_configuration=default_configuration,
        hardware_family=family,
        product=product,
    )


def _select(items: list[_Item], chosen: str | None, found: _Findings) -> list[_Item]:
    """The items that apply to ``chosen``: per InstanceID, a configuration-specific item overrides
    the unconditional one; items for other configurations and min/max bounds are dropped."""
    groups: dict[str, list[_Item]] = {}
    for item in items:
        if (item.bound or "normal").lower() != "normal":
            continue
        groups.setdefault(item.instance_id, []).append(item)
    selected: list[_Item] = []
    for group in groups.values():
        specific = [i for i in group if chosen is not None and chosen in i.configurations]
        generic = [i for i in group if not i.configurations]
        if chosen is None:
            for i in group:
                if i.configurations:
                    found.warn(f"{at(i.node)}: item {i.label} is for configuration(s) "
                               f"{', '.join(i.configurations)} but the descriptor offers none; ignored")
        pick = specific[-1] if specific else (generic[-1] if generic else None)
        if pick is not None:
            selected.append(pick)
    selected.sort(key=lambda i: i.node.line)
    return selected


def _disk(node: Node, ovf_ns: str, files: dict[str, tuple[str, int | None]], product: ProductInfo | None,
          found: _Findings) -> _Disk | None:
    disk_id = _oattr(node, "diskId", ovf_ns)
    if not disk_id:
        found.problem(node, "a Disk needs an ovf:diskId")
        return None
    file_ref = _oattr(node, "fileRef", ovf_ns)
    href = None
    if file_ref:
        if file_ref not in files:
            found.problem(node, f"Disk {disk_id!r} has fileRef {file_ref!r}, which names no File in "
                                f"References (declared: {', '.join(files) or 'none'})")
        else:
            href = files[file_ref][0]
    raw = _oattr(node, "capacity", ovf_ns)
    if raw is None:
        found.problem(node, f"Disk {disk_id!r} has no ovf:capacity")
        return _Disk(node, disk_id, None, href)
    prop = re.fullmatch(r"\$\{([^}]+)\}", raw.strip())
    if prop:
        value = (product.properties.get(prop.group(1)) if product else None)
        if value is None:
            found.problem(node, f"Disk {disk_id!r} capacity {raw!r} names a property that has no value "
                                "in the ProductSection")
            return _Disk(node, disk_id, None, href)
        raw = value
    quantity = _int(raw)
    units_text = _oattr(node, "capacityAllocationUnits", ovf_ns) or "byte"
    try:
        unit = units_to_bytes(units_text)
    except ValueError as exc:
        found.problem(node, f"Disk {disk_id!r}: ovf:capacityAllocationUnits {exc}")
        return _Disk(node, disk_id, None, href)
    if quantity is None or quantity <= 0:
        found.problem(node, f"Disk {disk_id!r} capacity {raw!r} is not a positive whole number")
        return _Disk(node, disk_id, None, href)
    return _Disk(node, disk_id, quantity * unit, href)


def _product(system: Node, ovf_ns: str) -> ProductInfo | None:
    sections = _children(system, ovf_ns, "ProductSection")
    if not sections:
        return None
    section = sections[0]

    def text(name: str) -> str | None:
        return next((c.text for c in section.children if _kind(c, ovf_ns) == name and c.text), None)

    properties: dict[str, str] = {}
    for p in section.children:
        if _kind(p, ovf_ns) != "Property":
            continue
        key = _oattr(p, "key", ovf_ns)
        if not key or (_oattr(p, "password", ovf_ns) or "").lower() == "true":
            continue
        value = _oattr(p, "value", ovf_ns)
        if value is None:
            value = _oattr(p, "defaultValue", ovf_ns)  # OVF 0.9
        properties[key] = value or ""
    return ProductInfo(
        product=text("Product"), vendor=text("Vendor"), version=text("Version"),
        full_version=text("FullVersion"), product_url=text("ProductUrl"), vendor_url=text("VendorUrl"),
        properties=properties,
    )


def _guest_os(system: Node, ovf_ns: str) -> GuestOs:
    sections = _children(system, ovf_ns, "OperatingSystemSection")
    if not sections:
        return GuestOs(name="unknown", family=os_family(None))
    s = sections[0]
    cim_id = _int(_oattr(s, "id", ovf_ns))
    description = next((c.text for c in s.children if _kind(c, ovf_ns) == "Description" and c.text), None)
    vmw_type = s.attr("osType", VMW_NS)
    vbox_type = next((c.text for c in s.children if c.ns == VBOX_NS and c.name == "OSType"), None)
    name = description or vmw_type or vbox_type or (f"CIM operating system {cim_id}" if cim_id else "unknown")
    return GuestOs(name=name, family=os_family(description, vmw_type, vbox_type), cim_id=cim_id)


class _Machine:
    """Accumulates the selected items into processors, memory, controllers, disks, NICs and media."""

    def __init__(self, found: _Findings, ovf_ns: str, files: dict[str, tuple[str, int | None]],
                 disks: dict[str, _Disk], networks: set[str]) -> None:
        self.found = found
        self.ovf_ns = ovf_ns
        self.files = files
        self.disk_table = disks
        self.networks = networks
        self.cpus: int | None = None
        self.memory_mib: int | None = None
        self.controllers: dict[str, _Controller] = {}
        self.disks: list[SourceDisk] = []
        self.nics: list[SourceNic] = []
        self.media: list[SourceMedia] = []
        self.evidence: dict[str, str] = {}
        self.used_disks: list[str] = []
        self._attached: list[tuple[_Item, str]] = []  # (drive item, "disk" | "media")
        self._cpu_item: _Item | None = None
        self._memory_item: _Item | None = None

    def infer(self, driver: str, why: str) -> None:
        self.evidence.setdefault(driver, why)

    def add(self, item: _Item) -> None:
        rtype = item.resource_type
        if rtype is None:
            self.found.problem(item.node, f"item {item.label} has no numeric ResourceType "
                                          f"(found {item.get('ResourceType')!r})")
            return
        if rtype == RT_CPU:
            self._cpu(item)
        elif rtype == RT_MEMORY:
            self._memory(item)
        elif rtype in CONTROLLER_TYPES:
            self._controller(item, rtype)
        elif rtype in (RT_NIC, RT_OTHER_NIC):
            self._nic(item)
        elif rtype in MEDIA_TYPES or rtype == RT_DISK:
            self._attached.append((item, "disk" if rtype == RT_DISK else "media"))
        elif rtype in NOT_CARRIED:
            category, what = NOT_CARRIED[rtype]
            self.found.warn(f"{what} {item.label} is not carried over: the target VM has none", category)
        elif rtype == RT_GRAPHICS:
            if item.vmw_config.get("enable3DSupport", "").lower() == "true":
                self.found.warn(f"3D acceleration of {item.label} is not carried over: the target VM has "
                                "a basic display adapter", "3d")
        elif rtype == RT_OTHER:
            self._other(item)
        else:
            self.found.warn(f"item {item.label} of ResourceType {rtype} is not understood and is ignored")

    def _quantity(self, item: _Item, kind: str, first: _Item | None) -> int | None:
        """The VirtualQuantity of the only ``kind`` item, or None (with the problem recorded)."""
        if first is not None:
            self.found.problem(item.node, f"a second {kind} item {item.label} (the first is {first.label})")
            return None
        count = _int(item.get("VirtualQuantity"))
        if count is None or count < 1:
            self.found.problem(item.node, f"{kind} item {item.label} has VirtualQuantity "
                                          f"{item.get('VirtualQuantity')!r}, not a positive whole number")
            return None
        return count

    def _cpu(self, item: _Item) -> None:
        count = self._quantity(item, "processor", self._cpu_item)
        self._cpu_item = self._cpu_item or item
        if count is not None:
            self.cpus = count

    def _memory(self, item: _Item) -> None:
        quantity = self._quantity(item, "memory", self._memory_item)
        self._memory_item = self._memory_item or item
        if quantity is None:
            return
        units = item.get("AllocationUnits")
        if not units:
            self.found.warn(f"memory item {item.label} states no AllocationUnits: read as MiB "
                            "(byte * 2^20), as VMware and VirtualBox write it")
            units = "byte * 2^20"
        try:
            unit = units_to_bytes(units)
        except ValueError as exc:
            self.found.problem(item.node, f"memory item {item.label}: AllocationUnits {exc}")
            return
        total = quantity * unit
        mib = -(-total // MiB)
        if mib * MiB != total:
            self.found.warn(f"memory of {total} bytes is not a whole number of MiB: rounded up to {mib} MiB")
        self.memory_mib = mib

    def _controller(self, item: _Item, rtype: int) -> None:
        words = [w.lower() for w in item.subtypes]
        drivers: list[str] = []
        bus: Bus
        if rtype == RT_IDE:
            bus, drivers = Bus.IDE, ["ide"]
        elif rtype == RT_SCSI:
            bus = Bus.SCSI
            drivers = [SCSI_DRIVERS[w] for w in words if w in SCSI_DRIVERS]
            if "lsilogicsas" in words and len(words) == 1:
                bus = Bus.SAS
            if not words:
                # a SCSI controller of unstated model: VMware and VirtualBox then mean LSI Logic
                drivers = ["lsilogic"]
        elif rtype == RT_OTHER_STORAGE:
            known = [OTHER_STORAGE[w] for w in words if w in OTHER_STORAGE]
            bus = known[0][0] if known else Bus.Other
            drivers = [d for _, d in known]
        elif rtype == RT_FC:
            bus = Bus.FibreChannel
        elif rtype == RT_ISCSI:
            bus = Bus.iSCSI
        else:
            bus = Bus.Other
        unknown = [w for w in item.subtypes if w.lower() not in SCSI_DRIVERS and w.lower() not in OTHER_STORAGE]
        if rtype in (RT_SCSI, RT_OTHER_STORAGE) and unknown and not drivers:
            self.found.warn(f"controller {item.label} is of model {' '.join(unknown)!r}, which the driver "
                            "catalog does not know; its guest driver is not inferred")
        model = item.subtypes[0] if item.subtypes else None
        for d in drivers:
            self.infer(d, f"{_TYPE_NAMES[rtype]} {item.label}" + (f" of model {' '.join(item.subtypes)}"
                                                                   if item.subtypes else ""))
        self.controllers[item.instance_id] = _Controller(item, SourceController(
            id=item.instance_id, name=item.name, bus=bus, model=model, drivers=drivers,
        ))

    def _nic(self, item: _Item) -> None:
        words = item.subtypes
        drivers = [NIC_DRIVERS[w.lower()] for w in words if w.lower() in NIC_DRIVERS]
        if words and not drivers:
            self.found.warn(f"network adapter {item.label} is of model {' '.join(words)!r}, which the driver "
                            "catalog does not know; its guest driver is not inferred")
        for d in drivers:
            self.infer(d, f"network adapter {item.label} of model {' '.join(words)}")
        network = item.get("Connection") or None
        if network and self.networks and network not in self.networks:
            self.found.warn(f"network adapter {item.label} connects to {network!r}, which the NetworkSection "
                            f"does not declare ({', '.join(sorted(self.networks))})")
        self.nics.append(SourceNic(
            name=item.name, network=network, adapter=words[0] if words else None,
            drivers=drivers, mac_address=item.get("Address") or None,
        ))

    def _other(self, item: _Item) -> None:
        subtype = " ".join(item.subtypes).lower()
        if subtype == "vmware.vmci":
            self.infer("vmci", f"VMCI device {item.label} (ResourceSubType vmware.vmci)")
        elif subtype.startswith("vmware.soundcard"):
            self.found.warn(f"sound card {item.label} is not carried over: the target VM has none", "sound")
        elif subtype.startswith("vmware.usb"):
            self.found.warn(f"USB controller {item.label} is not carried over: the target VM has none", "usb")
        else:
            self.found.warn(f"item {item.label} (ResourceType 1, {subtype or 'no subtype'}) is not "
                            "understood and is ignored")

    def link(self, by_id: dict[str, _Item]) -> None:
        """Attach the disk and media drives to their controllers and disk/file contents."""
        for item, what in self._attached:
            controller: _Controller | None = None
            parent = item.get("Parent")
            if parent:
                controller = self.controllers.get(parent)
                if controller is None:
                    other = by_id.get(parent)
                    if other is None:
                        self.found.problem(item.node, f"{_TYPE_NAMES.get(item.resource_type or 0, 'drive')} "
                                                      f"{item.label} has Parent {parent}, but no item has "
                                                      f"InstanceID {parent}")
                    else:
                        kind = _TYPE_NAMES.get(other.resource_type or 0, f"item of ResourceType {other.resource_type}")
                        self.found.problem(item.node, f"{_TYPE_NAMES.get(item.resource_type or 0, 'drive')} "
                                                      f"{item.label} has Parent {parent}, but {other.label} is "
                                                      f"{_a(kind)}, not a disk controller")
                    continue
            if what == "disk":
                self._attach_disk(item, controller)
            else:
                self._attach_media(item, controller)

    def _resource(self, item: _Item) -> tuple[str, str] | None:
        """('disk' | 'file', id) named by HostResource, or None when it names nothing."""
        host = item.get("HostResource")
        if not host:
            return None
        match = re.fullmatch(r"(?:ovf:)?/(disk|file)/(.+)", host.strip())
        if not match:
            raise ValueError(f"HostResource {host!r} is neither ovf:/disk/<diskId> nor ovf:/file/<fileId>")
        return match.group(1), match.group(2)

    def _attach_disk(self, item: _Item, controller: _Controller | None) -> None:
        try:
            ref = self._resource(item)
        except ValueError as exc:
            self.found.problem(item.node, f"disk drive {item.label}: {exc}")
            return
        if ref is None:
            self.found.problem(item.node, f"disk drive {item.label} has no HostResource: it names no disk")
            return
        kind, ref_id = ref
        capacity: int | None
        if kind == "disk":
            disk = self.disk_table.get(ref_id)
            if disk is None:
                self.found.problem(item.node, f"disk drive {item.label} names disk {ref_id!r}, which the "
                                              f"DiskSection does not declare "
                                              f"({', '.join(self.disk_table) or 'no disks'})")
                return
            capacity, file = disk.capacity_bytes, disk.file
            self.used_disks.append(ref_id)
            if capacity is None:
                return  # already reported on the Disk
        else:
            entry = self.files.get(ref_id)
            if entry is None:
                self.found.problem(item.node, f"disk drive {item.label} names file {ref_id!r}, which "
                                              f"References does not declare")
                return
            file, capacity = entry
            if capacity is None:
                self.found.problem(item.node, f"disk drive {item.label} is backed by file {file!r} directly "
                                              "and no capacity is declared for it")
                return
            self.found.warn(f"disk drive {item.label} is backed by file {file!r} without a DiskSection entry: "
                            f"its capacity is taken as the file size, {capacity} bytes")
        self.disks.append(SourceDisk(
            name=item.name, capacity_bytes=capacity, bus=controller.model.bus if controller else None,
            controller=controller.model.name if controller else None, file=file,
        ))

    def _attach_media(self, item: _Item, controller: _Controller | None) -> None:
        rtype = item.resource_type or 0
        try:
            ref = self._resource(item)
        except ValueError as exc:
            self.found.problem(item.node, f"{_TYPE_NAMES[rtype]} {item.label}: {exc}")
            return
        file = None
        if ref is not None:
            kind, ref_id = ref
            if kind == "file":
                entry = self.files.get(ref_id)
                if entry is None:
                    self.found.problem(item.node, f"{_TYPE_NAMES[rtype]} {item.label} names file {ref_id!r}, "
                                                  "which References does not declare")
                    return
                file = entry[0]
            else:
                disk = self.disk_table.get(ref_id)
                file = disk.file if disk else None
                self.used_disks.append(ref_id)
        if file:
            self.found.warn(f"{_TYPE_NAMES[rtype]} {item.label} holds {file!r}: removable media are not "
                            "carried over; attach the image to the VM after the import", "media")
        self.media.append(SourceMedia(
            name=item.name, kind=MEDIA_TYPES[rtype], controller=controller.model.name if controller else None,
            file=file,
        ))

    def vmware_extras(self, hardware: Node) -> None:
        """VMware Tools betray themselves by ``vmw:Config tools.*`` settings on the hardware section."""
        keys = [
            c.attr("key", VMW_NS) or "" for c in hardware.children
            if c.ns == VMW_NS and c.name in ("Config", "ExtraConfig")
        ]
        tools = [k for k in keys if k.startswith("tools.")]
        if tools:
            shown = ", ".join(tools[:3]) + (", ..." if len(tools) > 3 else "")
            self.infer("vmware-tools", f"vmw:Config {shown} (VMware Tools settings)")

    def virtualbox(self, machine: Node) -> None:
        """A vbox:Machine section: a VirtualBox guest, with its adapters, display and ports."""
        version = None
        for node in machine.iter():
            if node.name == "GuestProperty" and node.attrs.get("name") == VBOX_GUEST_ADDITIONS:
                version = node.attrs.get("value")
        self.infer(
            "vbox-guest-additions",
            f"Guest Additions {version} reported in vbox:Machine" if version else
            f"{at(machine)}: vbox:Machine section (a VirtualBox guest; the Guest Additions are "
            "presumed installed and their removal is a no-op where absent)",
        )

        def enabled(node: Node) -> bool:
            return node.attrs.get("enabled", "false").lower() == "true"

        for node in machine.iter():
            if node.name == "Display" and node.attrs.get("accelerate3D", "false").lower() == "true":
                self.found.warn("3D acceleration (vbox:Machine Display accelerate3D) is not carried over: "
                                "the target VM has a basic display adapter", "3d")
            elif node.name == "Adapter" and enabled(node):
                model = node.attrs.get("type", "")
                driver = VBOX_NIC_TYPES.get(model.lower())
                if driver:
                    self.infer(driver, f"vbox:Machine network adapter slot {node.attrs.get('slot')} of type {model}")
            elif node.name == "USBController" and enabled(node) and "usb" not in self.found.categories:
                self.found.warn("USB controller (vbox:Machine) is not carried over: the target VM has none", "usb")
            elif node.name == "AudioAdapter" and enabled(node) and "sound" not in self.found.categories:
                self.found.warn("sound card (vbox:Machine AudioAdapter) is not carried over: the target VM "
                                "has none", "sound")
            elif node.name == "Port" and enabled(node) and node.parent is not None:
                if node.parent.name == "UART" and "serial" not in self.found.categories:
                    self.found.warn("serial port (vbox:Machine UART) is not carried over: the target VM has none",
                                    "serial")
                elif node.parent.name == "LPT" and "parallel" not in self.found.categories:
                    self.found.warn("parallel port (vbox:Machine LPT) is not carried over: the target VM has "
                                    "none", "parallel")

