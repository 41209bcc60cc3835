"""Physical machines (P2V): a discovery agent's inventory to a SourceMachine. Pure: no I/O.

``MachineInventory`` is the shape an agent sends, the same as the API's
``spec.source.physical`` of a VirtualMachineImport (camelCase: ``memoryMiB``, ``sizeGiB``,
``macAddress``, ``speedMbps``; ``cpus`` = sockets, cores per socket, threads per core, model), so
the controller can pass that object's dict as is. ``inspect_physical`` turns it into the
``SourceMachine`` shape the OVF reader produces, so the conversion planner treats both alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vmshift import drivers as catalog
from vmshift import limits
from vmshift.conversion.source import (
    Bus,
    GuestOs,
    PhysicalDescriptor,
    SourceController,
    SourceDisk,
    SourceKind,
    SourceNic,
    os_family,
)
from vmshift.drivers import DriverName

GiB = 1024**3

_BUS_WORDS = {
    "ide": Bus.IDE, "pata": Bus.IDE, "scsi": Bus.SCSI, "sas": Bus.SAS, "raid": Bus.SAS, "sata": Bus.SATA,
    "nvme": Bus.NVMe, "pcie": Bus.NVMe, "fc": Bus.FibreChannel, "fibrechannel": Bus.FibreChannel,
    "iscsi": Bus.iSCSI, "usb": Bus.USB, "other": Bus.Other,
}


class _Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class InventoryCpus(_Inventory):
    sockets: int = Field(default=1, ge=1, le=16, description="Processor packages (sockets) in the machine.")
    cores: int = Field(ge=1, le=512, description="Cores per socket.")
    threads: int = Field(default=1, ge=1, le=8, description="Hardware threads per core (2 with SMT).")
    model: str | None = Field(default=None, max_length=128,
                              description="The processor's model name, e.g. Intel Xeon Gold 6230.")

    @property
    def logical(self) -> int:
        return self.sockets * self.cores * self.threads


class InventoryDisk(_Inventory):
    name: str = Field(min_length=1, max_length=128, description="The disk as the OS names it, e.g. sda, disk0.")
    size_gib: float = Field(alias="sizeGiB", gt=0, le=1024 * 1024, description="Capacity in GiB.")
    bus: Bus = Field(description="How it attaches: IDE, SCSI, SAS, SATA, NVMe, FibreChannel, iSCSI, USB.")

    @field_validator("bus", mode="before")
    @classmethod
    def _bus(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
            if key in _BUS_WORDS:
                return _BUS_WORDS[key]
        return value


class InventoryNic(_Inventory):
    name: str = Field(min_length=1, max_length=64, description="The interface name, e.g. eth0, Ethernet 2.")
    mac_address: str = Field(alias="macAddress", pattern=r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$",
                             description="The MAC address, six hex pairs separated by ':' or '-'.")
    speed_mbps: int = Field(alias="speedMbps", ge=0, le=1_000_000, description="Link speed in Mbit/s.")
    driver: str = Field(pattern=limits.DRIVER_NAME_PATTERN, max_length=limits.MAX_DRIVER_NAME_LENGTH,
                        description="The driver bound to it, e.g. e1000e, igb.")


class MachineInventory(_Inventory):
    """A physical machine as a discovery agent reports it."""

    hostname: str = Field(min_length=1, max_length=253)
    manufacturer: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    cpus: InventoryCpus
    memory_mib: int = Field(alias="memoryMiB", ge=1, le=64 * 1024 * 1024, description="Installed memory in MiB.")
    disks: list[InventoryDisk] = Field(default_factory=list, max_length=256)
    nics: list[InventoryNic] = Field(default_factory=list, max_length=64)
    drivers: list[DriverName] = Field(default_factory=list, max_length=limits.MAX_DRIVERS,
                                      description="Installed driver names, as the OS lists them.")
    os: str = Field(min_length=1, max_length=256, description="The operating system, e.g. Windows Server 2019.")

    @model_validator(mode="after")
    def _unique(self) -> MachineInventory:
        for what, names in (("disk", [d.name for d in self.disks]), ("NIC", [n.name for n in self.nics]),
                            ("MAC address", [n.mac_address.lower().replace("-", ":") for n in self.nics])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what} {', '.join(duplicates)} listed more than once")
        return self


class PhysicalInventoryError(ValueError):
    """The inventory was refused; the message names each field that is wrong."""


def parse_inventory(data: Mapping[str, Any] | MachineInventory) -> MachineInventory:
    """A validated inventory; PhysicalInventoryError names the fields that are wrong."""
    if isinstance(data, MachineInventory):
        return data
    try:
        return MachineInventory.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(inventory)'}: {err['msg']}" for err in exc.errors()
        ]
        raise PhysicalInventoryError("physical inventory refused: " + "; ".join(problems)) from None


def inspect_physical(inventory: Mapping[str, Any] | MachineInventory) -> PhysicalDescriptor:
    """The normalized description of a physical machine; the VM gets one vCPU per logical processor."""
    inv = parse_inventory(inventory)
    warnings: list[str] = []
    evidence: dict[str, str] = {}
    for name in inv.drivers:
        if name.strip():
            evidence.setdefault(name.strip(), "reported installed by the discovery agent")
    for nic in inv.nics:
        evidence.setdefault(nic.driver, f"bound to NIC {nic.name}")

    disks: list[SourceDisk] = []
    buses: list[Bus] = []
    for disk in inv.disks:
        if disk.bus is Bus.USB:
            warnings.append(f"USB disk {disk.name} ({disk.size_gib} GiB) is not carried over: removable "
                            "storage is not part of the machine")
            continue
        if disk.bus in (Bus.FibreChannel, Bus.iSCSI):
            warnings.append(f"disk {disk.name} is a SAN LUN on {disk.bus}: it is copied to a virtual disk; "
                            "to keep it on the SAN, give the VM a passthroughLun instead")
        capacity = math.ceil(Decimal(str(disk.size_gib)) * GiB)
        disks.append(SourceDisk(name=disk.name, capacity_bytes=capacity, bus=disk.bus,
                                controller=f"{disk.bus} controller"))
        if disk.bus not in buses:
            buses.append(disk.bus)

    if len(evidence) > limits.MAX_DRIVERS:
        raise PhysicalInventoryError(
            f"physical inventory refused: drivers and NIC drivers name {len(evidence)} distinct drivers; a "
            f"guest holds at most {limits.MAX_DRIVERS}")
    unknown = [d for d in evidence if d not in catalog.CATALOG]
    if unknown:
        warnings.append(
            f"drivers unknown to the catalog ({', '.join(unknown)}) are hardware or vendor drivers; the "
            "conversion treats them as third-party and removes them, as the catalog says for unknown names"
        )
    if not disks:
        warnings.append("the machine reports no disk to carry over: the VM is created without disks")

    return PhysicalDescriptor(
        kind=SourceKind.Physical,
        name=inv.hostname,
        os=GuestOs(name=inv.os, family=os_family(inv.os)),
        cpus=inv.cpus.logical,
        memory_mib=inv.memory_mib,
        disks=disks,
        nics=[
            SourceNic(name=n.name, adapter=n.driver, drivers=[n.driver], mac_address=n.mac_address,
                      speed_mbps=n.speed_mbps)
            for n in inv.nics
        ],
        controllers=[SourceController(id=str(bus), name=f"{bus} controller", bus=bus) for bus in buses],
        drivers=list(evidence),
        driver_evidence=evidence,
        warnings=warnings,
        hostname=inv.hostname,
        manufacturer=inv.manufacturer,
        model=inv.model,
        cpu_model=inv.cpus.model,
        sockets=inv.cpus.sockets,
        cores_per_socket=inv.cpus.cores,
        threads_per_core=inv.cpus.threads,
    )
