"""OVF's vocabulary and the reader's small parts: CIM resource types, device subtypes to catalog
drivers, units, the item view of a ``<Item>``, section lookup across the three dialects, and the
findings (problems and warnings) a reading collects. Pure: no I/O.

``ovf.py`` reads a descriptor with these; ``ovfhardware.py`` turns its items into hardware.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from vmshift.conversion.safexml import XmlNode
from vmshift.conversion.source import Bus, MediaKind, SourceController

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
TYPE_NAMES = {
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


# --- small helpers ------------------------------------------------------------------------------


def at(node: XmlNode) -> str:
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


def int_or_none(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"\s*[+]?\d{1,19}\s*", text):
        return None
    return int(text)


def a_or_an(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def words(text: str | None) -> list[str]:
    return [w for w in (text or "").split() if w]


# --- the item view ------------------------------------------------------------------------------


@dataclass
class OvfItem:
    """One hardware item (Item, StorageItem or EthernetPortItem) with its CIM fields by local name."""

    node: XmlNode
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
        return int_or_none(self.get("ResourceType"))

    @property
    def label(self) -> str:
        name = self.get("ElementName") or self.get("Caption") or self.get("Description")
        return f"InstanceID {self.instance_id}" + (f" {name!r}" if name else "")

    @property
    def name(self) -> str:
        return self.get("ElementName") or self.get("Caption") or f"item-{self.instance_id}"

    @property
    def subtypes(self) -> list[str]:
        return words(self.get("ResourceSubType"))


def ovf_item(node: XmlNode, ovf_ns: str, index: int) -> OvfItem:
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
    configs = words(node.attr("configuration", ovf_ns) or node.attr("configuration"))
    bound = node.attr("bound", ovf_ns) or node.attr("bound")
    return OvfItem(node, fields, instance, configs, bound, vmw)


# --- interpretation -----------------------------------------------------------------------------


class Findings:
    """Problems (refuse) and warnings (carry on), warnings deduplicated by category."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.categories: set[str] = set()
        self._seen: set[str] = set()

    def problem(self, node: XmlNode | None, message: str) -> None:
        self.problems.append(f"{at(node)}: {message}" if node is not None else message)

    def warn(self, message: str, category: str | None = None) -> None:
        if category is not None:
            self.categories.add(category)
        if message not in self._seen:
            self._seen.add(message)
            self.warnings.append(message)


def section_kind(node: XmlNode, ovf_ns: str) -> str:
    """The section or content kind, the same for ``<DiskSection>`` and 0.9's ``<Section xsi:type>``."""
    if node.ns != ovf_ns:
        return ""
    if node.name in ("Section", "Content"):
        declared = node.attr("type", XSI_NS) or ""
        local = declared.rpartition(":")[2]
        return local.removesuffix("_Type")
    return node.name


def sections_of(node: XmlNode, ovf_ns: str, kind: str) -> list[XmlNode]:
    return [c for c in node.children if section_kind(c, ovf_ns) == kind]


def ovf_attr(node: XmlNode, local: str, ovf_ns: str) -> str | None:
    """An OVF attribute, qualified (``ovf:capacity``) or not."""
    value = node.attr(local, ovf_ns)
    return value if value is not None else node.attrs.get(local)


@dataclass
class DiskSectionEntry:
    node: XmlNode
    disk_id: str
    capacity_bytes: int | None
    file: str | None


@dataclass
class ControllerEntry:
    item: OvfItem
    model: SourceController

