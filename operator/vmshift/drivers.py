"""The guest driver catalog: which drivers exist, what kind each is, and what it lets a guest do.

Pure: no I/O, nothing from the rest of vmshift but its limits. Shared vocabulary, like
``limits.py`` and ``processor.py``: the agents keep each guest's driver inventory and compute its
I/O ceilings from it, the import (V2V/P2V) decides what to remove and install from the same table,
and the API, the agent's protocol and the import all admit driver names by :data:`DriverName`. A
guest on emulated devices is slower than one on synthetic (VMBus) devices, as on Hyper-V.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from vmshift import limits

#: A driver's name (vmshift.limits): what the API's initial-drivers annotation, the agent's protocol
#: and an import admit.
DriverName = Annotated[str, Field(pattern=limits.DRIVER_NAME_PATTERN, max_length=limits.MAX_DRIVER_NAME_LENGTH)]


class DriverKind(StrEnum):
    Synthetic = "Synthetic"  # paravirtual devices on the fast VMBus: netvsc, storvsc
    Emulated = "Emulated"  # emulated legacy hardware: e1000, lsilogic, IDE
    ThirdParty = "ThirdParty"  # another hypervisor's tools and paravirtual drivers
    Agent = "Agent"  # the vmshift guest agent that performs conversions


class DeviceClass(StrEnum):
    Network = "Network"
    Storage = "Storage"
    Integration = "Integration"


@dataclass(frozen=True)
class Driver:
    name: str
    kind: DriverKind
    device: DeviceClass
    description: str


CATALOG: dict[str, Driver] = {
    d.name: d
    for d in (
        Driver("netvsc", DriverKind.Synthetic, DeviceClass.Network, "synthetic network adapter on VMBus"),
        Driver("storvsc", DriverKind.Synthetic, DeviceClass.Storage, "synthetic SCSI controller on VMBus"),
        Driver("vmbus", DriverKind.Synthetic, DeviceClass.Integration, "VMBus integration services"),
        Driver("e1000", DriverKind.Emulated, DeviceClass.Network, "emulated Intel PRO/1000 network adapter"),
        Driver("pcnet", DriverKind.Emulated, DeviceClass.Network, "emulated AMD PCnet network adapter"),
        Driver("rtl8139", DriverKind.Emulated, DeviceClass.Network, "emulated Realtek 8139 network adapter"),
        Driver("lsilogic", DriverKind.Emulated, DeviceClass.Storage, "emulated LSI Logic SCSI controller"),
        Driver("buslogic", DriverKind.Emulated, DeviceClass.Storage, "emulated BusLogic SCSI controller"),
        Driver("ide", DriverKind.Emulated, DeviceClass.Storage, "emulated IDE controller"),
        Driver("ahci", DriverKind.Emulated, DeviceClass.Storage, "emulated SATA AHCI controller"),
        Driver("e1000e", DriverKind.Emulated, DeviceClass.Network, "emulated Intel 82574 network adapter"),
        Driver("lsisas", DriverKind.Emulated, DeviceClass.Storage, "emulated LSI Logic SAS controller"),
        Driver("nvme", DriverKind.Emulated, DeviceClass.Storage, "emulated NVMe controller"),
        Driver("vmxnet3", DriverKind.ThirdParty, DeviceClass.Network, "VMware paravirtual network adapter"),
        Driver("vmxnet", DriverKind.ThirdParty, DeviceClass.Network,
               "VMware vmxnet/vmxnet2 paravirtual network adapter"),
        Driver("pvscsi", DriverKind.ThirdParty, DeviceClass.Storage, "VMware paravirtual SCSI controller"),
        Driver("vmci", DriverKind.ThirdParty, DeviceClass.Integration, "VMware VMCI communication device"),
        Driver("vmware-tools", DriverKind.ThirdParty, DeviceClass.Integration, "VMware Tools"),
        Driver("vbox-guest-additions", DriverKind.ThirdParty, DeviceClass.Integration,
               "VirtualBox Guest Additions"),
        Driver("virtio-net", DriverKind.ThirdParty, DeviceClass.Network, "KVM virtio network adapter"),
        Driver("virtio-blk", DriverKind.ThirdParty, DeviceClass.Storage, "KVM virtio block device"),
        Driver("virtio-scsi", DriverKind.ThirdParty, DeviceClass.Storage, "KVM virtio SCSI controller"),
        Driver("vmshift-agent", DriverKind.Agent, DeviceClass.Integration, "vmshift guest conversion agent"),
    )
}

#: I/O ceilings by the best driver a guest has for a device class. A foreign paravirtual driver
#: finds no device of its kind on this hypervisor, so the guest falls back to emulated hardware.
NETWORK_CEILING_MBPS = {DriverKind.Synthetic: 10_000, DriverKind.Emulated: 1_000}
DISK_CEILING_MBPS = {DriverKind.Synthetic: 2_000, DriverKind.Emulated: 300}
#: Without any driver for the class at all, the guest still has the emulated BIOS devices.
FALLBACK_KIND = DriverKind.Emulated

SYNTHETIC_SET = ("vmbus", "netvsc", "storvsc")


def driver(name: str) -> Driver:
    """The catalog entry for ``name``; unknown names are treated as third-party drivers."""
    return CATALOG.get(name) or Driver(name, DriverKind.ThirdParty, DeviceClass.Integration, "unknown driver")


def _best(drivers: list[str], device: DeviceClass) -> DriverKind:
    kinds = {driver(n).kind for n in drivers if driver(n).device is device}
    return DriverKind.Synthetic if DriverKind.Synthetic in kinds else FALLBACK_KIND


def io_ceilings(drivers: list[str]) -> tuple[int, int]:
    """(network Mbps, disk MB/s) a guest with these drivers can reach."""
    return (
        NETWORK_CEILING_MBPS[_best(drivers, DeviceClass.Network)],
        DISK_CEILING_MBPS[_best(drivers, DeviceClass.Storage)],
    )


def third_party(drivers: list[str]) -> list[str]:
    """The drivers a conversion must remove, in inventory order."""
    return [n for n in drivers if driver(n).kind is DriverKind.ThirdParty]
