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

Rooms: this module reads the envelope (references, disks, networks, the chosen virtual system and
configuration); ``ovfitems`` holds OVF's vocabulary and the item view; ``ovfhardware`` turns the
selected items into processors, memory, controllers, disks, NICs and media.
"""

from __future__ import annotations

import os
import re
from typing import IO

from vmshift.conversion.ovfhardware import VirtualHardware
from vmshift.conversion.ovfitems import (
    OVF_NAMESPACES,
    VBOX_NS,
    VMW_NS,
    DiskSectionEntry,
    Findings,
    OvfItem,
    at,
    int_or_none,
    ovf_attr,
    ovf_item,
    section_kind,
    sections_of,
    units_to_bytes,
)
from vmshift.conversion.safexml import (
    DEFAULT_LIMITS,
    XmlLimits,
    XmlNode,
    XmlRefused,
    parse_bytes,
    parse_file,
    parse_stream,
)
from vmshift.conversion.source import (
    GuestOs,
    OvfDescriptor,
    ProductInfo,
    SourceKind,
    os_family,
)

# --- reading ------------------------------------------------------------------------------------

#: Problems spelled out in an OvfError's message; ``problems`` holds them all.
MAX_PROBLEMS_SHOWN = 20


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




def interpret(root: XmlNode, *, configuration: str | None = None, virtual_system: str | None = None,
              source: str = "(inline)") -> OvfDescriptor:
    """The descriptor a parsed OVF tree describes; OvfError lists every inconsistency found."""
    if root.name != "Envelope" or root.ns not in OVF_NAMESPACES:
        seen = f"{{{root.ns}}}{root.name}" if root.ns else root.name
        raise OvfError(source, [
            f"line {root.line}: the root element is {seen}, not an OVF Envelope in one of the OVF "
            f"namespaces ({', '.join(OVF_NAMESPACES)})"
        ])
    ovf_ns = root.ns
    declared_version = ovf_attr(root, "version", ovf_ns)
    version = declared_version if declared_version else OVF_NAMESPACES[ovf_ns]
    found = Findings()

    # References: file id -> (href, size)
    files: dict[str, tuple[str, int | None]] = {}
    for refs in sections_of(root, ovf_ns, "References"):
        for f in refs.children:
            if section_kind(f, ovf_ns) != "File":
                continue
            file_id, href = ovf_attr(f, "id", ovf_ns), ovf_attr(f, "href", ovf_ns)
            if not file_id or not href:
                found.problem(f, "a File needs both ovf:id and ovf:href")
                continue
            if file_id in files:
                found.problem(f, f"File id {file_id!r} is declared twice")
            files[file_id] = (href, int_or_none(ovf_attr(f, "size", ovf_ns)))

    # Networks
    networks = [
        name for section in sections_of(root, ovf_ns, "NetworkSection") for n in section.children
        if section_kind(n, ovf_ns) == "Network" and (name := ovf_attr(n, "name", ovf_ns))
    ]

    # Virtual system (one; a collection must be narrowed by name)
    systems: list[XmlNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        for child in node.children:
            kind = section_kind(child, ovf_ns)
            if kind == "VirtualSystem":
                systems.append(child)
            elif kind == "VirtualSystemCollection":
                stack.append(child)
    systems.sort(key=lambda n: n.line)
    if not systems:
        raise OvfError(source, [f"line {root.line}: the envelope holds no VirtualSystem: nothing to import"])
    ids = [ovf_attr(s, "id", ovf_ns) or f"#{i}" for i, s in enumerate(systems)]
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
    disks: dict[str, DiskSectionEntry] = {}
    for section in sections_of(root, ovf_ns, "DiskSection"):
        for d in section.children:
            if section_kind(d, ovf_ns) != "Disk":
                continue
            disk = _disk(d, ovf_ns, files, product, found)
            if disk is not None:
                if disk.disk_id in disks:
                    found.problem(d, f"Disk id {disk.disk_id!r} is declared twice")
                disks[disk.disk_id] = disk

    # Deployment options
    configurations: list[str] = []
    default_configuration: str | None = None
    for section in sections_of(root, ovf_ns, "DeploymentOptionSection") + sections_of(
            system, ovf_ns, "DeploymentOptionSection"):
        for c in section.children:
            if section_kind(c, ovf_ns) != "Configuration":
                continue
            cid = ovf_attr(c, "id", ovf_ns)
            if not cid:
                found.problem(c, "a Configuration needs an ovf:id")
                continue
            configurations.append(cid)
            if (ovf_attr(c, "default", ovf_ns) or "").lower() in ("true", "1") and default_configuration is None:
                default_configuration = cid
    if configurations and default_configuration is None:
        default_configuration = configurations[0]  # OVF: the first one is the default when none is marked
    if configuration is not None and configuration not in configurations:
        offered = ", ".join(configurations) if configurations else "none (no DeploymentOptionSection)"
        raise OvfError(source, [f"configuration {configuration!r} is not offered; the descriptor offers {offered}"])
    chosen = configuration if configuration is not None else default_configuration

    # Hardware
    hardware_sections = sections_of(system, ovf_ns, "VirtualHardwareSection")
    if not hardware_sections:
        raise OvfError(source, [f"{at(system)}: the virtual system has no VirtualHardwareSection: "
                                "nothing to size the VM from"])
    hardware = hardware_sections[0]
    if len(hardware_sections) > 1:
        found.warn(f"{len(hardware_sections)} VirtualHardwareSections: the first one ({at(hardware)}) is used")
    family = None
    for s in hardware.children:
        if section_kind(s, ovf_ns) == "System":
            family = next((c.text for c in s.children if c.name == "VirtualSystemType"), None)

    all_items = [
        ovf_item(n, ovf_ns, i) for i, n in enumerate(hardware.children)
        if section_kind(n, ovf_ns) in ("Item", "StorageItem", "EthernetPortItem")
    ]
    items = _select(all_items, chosen, found)
    by_id = {i.instance_id: i for i in items}

    machine = VirtualHardware(found, ovf_ns, files, disks, set(networks))
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

    name = next((c.text for c in system.children if section_kind(c, ovf_ns) == "Name" and c.text), None)
    return OvfDescriptor(
        kind=SourceKind.Ovf,
        name=name or ovf_attr(system, "id", ovf_ns) or "unnamed",
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


def _select(items: list[OvfItem], chosen: str | None, found: Findings) -> list[OvfItem]:
    """The items that apply to ``chosen``: per InstanceID, a configuration-specific item overrides
    the unconditional one; items for other configurations and min/max bounds are dropped."""
    groups: dict[str, list[OvfItem]] = {}
    for item in items:
        if (item.bound or "normal").lower() != "normal":
            continue
        groups.setdefault(item.instance_id, []).append(item)
    selected: list[OvfItem] = []
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


def _disk(node: XmlNode, ovf_ns: str, files: dict[str, tuple[str, int | None]], product: ProductInfo | None,
          found: Findings) -> DiskSectionEntry | None:
    disk_id = ovf_attr(node, "diskId", ovf_ns)
    if not disk_id:
        found.problem(node, "a Disk needs an ovf:diskId")
        return None
    file_ref = ovf_attr(node, "fileRef", ovf_ns)
    href = None
    if file_ref:
        if file_ref not in files:
            found.problem(node, f"Disk {disk_id!r} has fileRef {file_ref!r}, which names no File in "
                                f"References (declared: {', '.join(files) or 'none'})")
        else:
            href = files[file_ref][0]
    raw = ovf_attr(node, "capacity", ovf_ns)
    if raw is None:
        found.problem(node, f"Disk {disk_id!r} has no ovf:capacity")
        return DiskSectionEntry(node, disk_id, None, href)
    prop = re.fullmatch(r"\$\{([^}]+)\}", raw.strip())
    if prop:
        value = (product.properties.get(prop.group(1)) if product else None)
        if value is None:
            found.problem(node, f"Disk {disk_id!r} capacity {raw!r} names a property that has no value "
                                "in the ProductSection")
            return DiskSectionEntry(node, disk_id, None, href)
        raw = value
    quantity = int_or_none(raw)
    units_text = ovf_attr(node, "capacityAllocationUnits", ovf_ns) or "byte"
    try:
        unit = units_to_bytes(units_text)
    except ValueError as exc:
        found.problem(node, f"Disk {disk_id!r}: ovf:capacityAllocationUnits {exc}")
        return DiskSectionEntry(node, disk_id, None, href)
    if quantity is None or quantity <= 0:
        found.problem(node, f"Disk {disk_id!r} capacity {raw!r} is not a positive whole number")
        return DiskSectionEntry(node, disk_id, None, href)
    return DiskSectionEntry(node, disk_id, quantity * unit, href)


def _product(system: XmlNode, ovf_ns: str) -> ProductInfo | None:
    sections = sections_of(system, ovf_ns, "ProductSection")
    if not sections:
        return None
    section = sections[0]

    def text(name: str) -> str | None:
        return next((c.text for c in section.children if section_kind(c, ovf_ns) == name and c.text), None)

    properties: dict[str, str] = {}
    for p in section.children:
        if section_kind(p, ovf_ns) != "Property":
            continue
        key = ovf_attr(p, "key", ovf_ns)
        if not key or (ovf_attr(p, "password", ovf_ns) or "").lower() == "true":
            continue
        value = ovf_attr(p, "value", ovf_ns)
        if value is None:
            value = ovf_attr(p, "defaultValue", ovf_ns)  # OVF 0.9
        properties[key] = value or ""
    return ProductInfo(
        product=text("Product"), vendor=text("Vendor"), version=text("Version"),
        full_version=text("FullVersion"), product_url=text("ProductUrl"), vendor_url=text("VendorUrl"),
        properties=properties,
    )


def _guest_os(system: XmlNode, ovf_ns: str) -> GuestOs:
    sections = sections_of(system, ovf_ns, "OperatingSystemSection")
    if not sections:
        return GuestOs(name="unknown", family=os_family(None))
    s = sections[0]
    cim_id = int_or_none(ovf_attr(s, "id", ovf_ns))
    description = next((c.text for c in s.children if section_kind(c, ovf_ns) == "Description" and c.text), None)
    vmw_type = s.attr("osType", VMW_NS)
    vbox_type = next((c.text for c in s.children if c.ns == VBOX_NS and c.name == "OSType"), None)
    name = description or vmw_type or vbox_type or (f"CIM operating system {cim_id}" if cim_id else "unknown")
    return GuestOs(name=name, family=os_family(description, vmw_type, vbox_type), cim_id=cim_id)


