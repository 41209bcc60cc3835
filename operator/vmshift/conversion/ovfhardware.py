"""The virtual hardware of an OVF virtual system: processors, memory, controllers, disks, NICs and
media, accumulated from the selected items and linked by their parents. Pure: no I/O.
"""

from __future__ import annotations

import re

from vmshift.conversion.ovfitems import (
    CONTROLLER_TYPES,
    MEDIA_TYPES,
    NIC_DRIVERS,
    NOT_CARRIED,
    OTHER_STORAGE,
    RT_CPU,
    RT_DISK,
    RT_FC,
    RT_GRAPHICS,
    RT_IDE,
    RT_ISCSI,
    RT_MEMORY,
    RT_NIC,
    RT_OTHER,
    RT_OTHER_NIC,
    RT_OTHER_STORAGE,
    RT_SCSI,
    SCSI_DRIVERS,
    TYPE_NAMES,
    VBOX_GUEST_ADDITIONS,
    VBOX_NIC_TYPES,
    VMW_NS,
    ControllerEntry,
    DiskSectionEntry,
    Findings,
    MiB,
    OvfItem,
    a_or_an,
    at,
    int_or_none,
    units_to_bytes,
)
from vmshift.conversion.safexml import XmlNode
from vmshift.conversion.source import Bus, SourceController, SourceDisk, SourceMedia, SourceNic


class VirtualHardware:
    """Accumulates the selected items into processors, memory, controllers, disks, NICs and media."""

    def __init__(self, found: Findings, ovf_ns: str, files: dict[str, tuple[str, int | None]],
                 disks: dict[str, DiskSectionEntry], networks: set[str]) -> None:
        self.found = found
        self.ovf_ns = ovf_ns
        self.files = files
        self.disk_table = disks
        self.networks = networks
        self.cpus: int | None = None
        self.memory_mib: int | None = None
        self.controllers: dict[str, ControllerEntry] = {}
        self.disks: list[SourceDisk] = []
        self.nics: list[SourceNic] = []
        self.media: list[SourceMedia] = []
        self.evidence: dict[str, str] = {}
        self.used_disks: list[str] = []
        self._attached: list[tuple[OvfItem, str]] = []  # (drive item, "disk" | "media")
        self._cpu_item: OvfItem | None = None
        self._memory_item: OvfItem | None = None

    def infer(self, driver: str, why: str) -> None:
        self.evidence.setdefault(driver, why)

    def add(self, item: OvfItem) -> None:
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

    def _quantity(self, item: OvfItem, kind: str, first: OvfItem | None) -> int | None:
        """The VirtualQuantity of the only ``kind`` item, or None (with the problem recorded)."""
        if first is not None:
            self.found.problem(item.node, f"a second {kind} item {item.label} (the first is {first.label})")
            return None
        count = int_or_none(item.get("VirtualQuantity"))
        if count is None or count < 1:
            self.found.problem(item.node, f"{kind} item {item.label} has VirtualQuantity "
                                          f"{item.get('VirtualQuantity')!r}, not a positive whole number")
            return None
        return count

    def _cpu(self, item: OvfItem) -> None:
        count = self._quantity(item, "processor", self._cpu_item)
        self._cpu_item = self._cpu_item or item
        if count is not None:
            self.cpus = count

    def _memory(self, item: OvfItem) -> None:
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

    def _controller(self, item: OvfItem, rtype: int) -> None:
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
            self.infer(d, f"{TYPE_NAMES[rtype]} {item.label}" + (f" of model {' '.join(item.subtypes)}"
                                                                   if item.subtypes else ""))
        self.controllers[item.instance_id] = ControllerEntry(item, SourceController(
            id=item.instance_id, name=item.name, bus=bus, model=model, drivers=drivers,
        ))

    def _nic(self, item: OvfItem) -> None:
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

    def _other(self, item: OvfItem) -> None:
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

    def link(self, by_id: dict[str, OvfItem]) -> None:
        """Attach the disk and media drives to their controllers and disk/file contents."""
        for item, what in self._attached:
            controller: ControllerEntry | None = None
            parent = item.get("Parent")
            if parent:
                controller = self.controllers.get(parent)
                if controller is None:
                    other = by_id.get(parent)
                    if other is None:
                        self.found.problem(item.node, f"{TYPE_NAMES.get(item.resource_type or 0, 'drive')} "
                                                      f"{item.label} has Parent {parent}, but no item has "
                                                      f"InstanceID {parent}")
                    else:
                        kind = TYPE_NAMES.get(other.resource_type or 0, f"item of ResourceType {other.resource_type}")
                        self.found.problem(item.node, f"{TYPE_NAMES.get(item.resource_type or 0, 'drive')} "
                                                      f"{item.label} has Parent {parent}, but {other.label} is "
                                                      f"{a_or_an(kind)}, not a disk controller")
                    continue
            if what == "disk":
                self._attach_disk(item, controller)
            else:
                self._attach_media(item, controller)

    def _resource(self, item: OvfItem) -> tuple[str, str] | None:
        """('disk' | 'file', id) named by HostResource, or None when it names nothing."""
        host = item.get("HostResource")
        if not host:
            return None
        match = re.fullmatch(r"(?:ovf:)?/(disk|file)/(.+)", host.strip())
        if not match:
            raise ValueError(f"HostResource {host!r} is neither ovf:/disk/<diskId> nor ovf:/file/<fileId>")
        return match.group(1), match.group(2)

    def _attach_disk(self, item: OvfItem, controller: ControllerEntry | None) -> None:
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

    def _attach_media(self, item: OvfItem, controller: ControllerEntry | None) -> None:
        rtype = item.resource_type or 0
        try:
            ref = self._resource(item)
        except ValueError as exc:
            self.found.problem(item.node, f"{TYPE_NAMES[rtype]} {item.label}: {exc}")
            return
        file = None
        if ref is not None:
            kind, ref_id = ref
            if kind == "file":
                entry = self.files.get(ref_id)
                if entry is None:
                    self.found.problem(item.node, f"{TYPE_NAMES[rtype]} {item.label} names file {ref_id!r}, "
                                                  "which References does not declare")
                    return
                file = entry[0]
            else:
                disk = self.disk_table.get(ref_id)
                file = disk.file if disk else None
                self.used_disks.append(ref_id)
        if file:
            self.found.warn(f"{TYPE_NAMES[rtype]} {item.label} holds {file!r}: removable media are not "
                            "carried over; attach the image to the VM after the import", "media")
        self.media.append(SourceMedia(
            name=item.name, kind=MEDIA_TYPES[rtype], controller=controller.model.name if controller else None,
            file=file,
        ))

    def vmware_extras(self, hardware: XmlNode) -> None:
        """VMware Tools betray themselves by ``vmw:Config tools.*`` settings on the hardware section."""
        keys = [
            c.attr("key", VMW_NS) or "" for c in hardware.children
            if c.ns == VMW_NS and c.name in ("Config", "ExtraConfig")
        ]
        tools = [k for k in keys if k.startswith("tools.")]
        if tools:
            shown = ", ".join(tools[:3]) + (", ..." if len(tools) > 3 else "")
            self.infer("vmware-tools", f"vmw:Config {shown} (VMware Tools settings)")

    def virtualbox(self, machine: XmlNode) -> None:
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

        def enabled(node: XmlNode) -> bool:
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


