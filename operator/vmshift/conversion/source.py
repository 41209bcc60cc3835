"""The normalized description of a machine to import (OVF, OVA, physical). Pure: no I/O.

The OVF reader and the physical inspector both produce a ``SourceMachine``; the
conversion planner reads nothing else. Sizes are in bytes and MiB, as the names say.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, computed_field

from vmshift import drivers as catalog


class SourceKind(StrEnum):
    Ovf = "Ovf"
    Physical = "Physical"


class OsFamily(StrEnum):
    Windows = "Windows"
    Linux = "Linux"
    Other = "Other"


class Bus(StrEnum):
    """How a disk or controller attaches; the conversion puts every disk on synthetic SCSI."""

    IDE = "IDE"
    SCSI = "SCSI"
    SAS = "SAS"
    SATA = "SATA"
    NVMe = "NVMe"
    FibreChannel = "FibreChannel"
    iSCSI = "iSCSI"
    USB = "USB"
    Other = "Other"


class MediaKind(StrEnum):
    CD = "CD"
    DVD = "DVD"
    Floppy = "Floppy"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GuestOs(_Model):
    name: str = Field(description="The guest operating system as the source names it.")
    family: OsFamily = Field(description="Windows, Linux or Other, inferred from the name.")
    cim_id: int | None = Field(default=None, description="The CIM operating system type (OVF).")


class SourceController(_Model):
    id: str = Field(description="The controller's identity in the source (OVF InstanceID, bus name).")
    name: str
    bus: Bus
    model: str | None = Field(default=None, description="The emulated model, e.g. lsilogic, PIIX4, AHCI.")
    drivers: list[str] = Field(
        default_factory=list,
        description="Guest drivers for it (catalog names); several when the source offers alternative models.",
    )


class SourceDisk(_Model):
    name: str
    capacity_bytes: int = Field(gt=0)
    bus: Bus | None = None
    controller: str | None = Field(default=None, description="The name of the controller it hangs on.")
    file: str | None = Field(default=None, description="The file holding its data (OVF File href).")


class SourceNic(_Model):
    name: str
    network: str | None = Field(default=None, description="The network it connects to.")
    adapter: str | None = Field(default=None, description="The adapter model, e.g. E1000, VMXNET3.")
    drivers: list[str] = Field(
        default_factory=list,
        description="Guest drivers for it (catalog names); several when the source offers alternative models.",
    )
    mac_address: str | None = None
    speed_mbps: int | None = None


class SourceMedia(_Model):
    name: str
    kind: MediaKind
    controller: str | None = None
    file: str | None = Field(default=None, description="The image inserted, if any (OVF File href).")


class SourceMachine(_Model):
    """What a conversion needs to know about a machine, in one shape for every source."""

    kind: SourceKind
    name: str
    os: GuestOs
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    disks: list[SourceDisk] = Field(default_factory=list)
    nics: list[SourceNic] = Field(default_factory=list)
    controllers: list[SourceController] = Field(default_factory=list)
    media: list[SourceMedia] = Field(default_factory=list)
    drivers: list[str] = Field(
        default_factory=list, description="Drivers installed in the guest (catalog names), in order found."
    )
    driver_evidence: dict[str, str] = Field(
        default_factory=dict, description="For each inferred driver, what in the source betrays it."
    )
    warnings: list[str] = Field(
        default_factory=list, description="What the conversion cannot carry over, or had to assume."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def third_party_drivers(self) -> list[str]:
        """The installed drivers the conversion must remove (catalog: ThirdParty or unknown)."""
        return catalog.third_party(self.drivers)


class ProductInfo(_Model):
    product: str | None = None
    vendor: str | None = None
    version: str | None = None
    full_version: str | None = None
    product_url: str | None = None
    vendor_url: str | None = None
    properties: dict[str, str] = Field(
        default_factory=dict, description="Property keys and default values; password values are left out."
    )


class PackageMember(_Model):
    name: str
    size_bytes: int
    digest: str | None = Field(default=None, description="'SHA256:hex' when the manifest covers it.")
    verified: bool = False


class PackageInfo(_Model):
    """The OVA archive the descriptor came from."""

    file: str
    descriptor: str
    manifest: str | None = None
    members: list[PackageMember] = Field(default_factory=list)


class OvfDescriptor(SourceMachine):
    """A machine read from an OVF descriptor (or an OVA package)."""

    ovf_version: str = Field(description="0.9, 1.x (or the declared 1.0/1.1) or 2.0.")
    configuration: str | None = Field(default=None, description="The DeploymentOption used, if any.")
    configurations: list[str] = Field(default_factory=list, description="Every DeploymentOption offered.")
    default_configuration: str | None = None
    hardware_family: str | None = Field(default=None, description="VirtualSystemType, e.g. vmx-08.")
    product: ProductInfo | None = None
    package: PackageInfo | None = None


class PhysicalDescriptor(SourceMachine):
    """A physical machine read from a discovery agent's inventory."""

    hostname: str
    manufacturer: str | None = None
    model: str | None = None
    cpu_model: str | None = None
    sockets: int = 1
    cores_per_socket: int = 1
    threads_per_core: int = 1


def os_family(*names: str | None) -> OsFamily:
    """Windows, Linux or Other from any of the names a source gives its guest OS."""
    text = " ".join(n for n in names if n).lower()
    if re.search(r"\bwin", text):
        return OsFamily.Windows
    linux_words = ("linux", "ubuntu", "debian", "rhel", "red hat", "centos", "suse", "sles", "fedora",
                   "rocky", "alma", "coreos", "photon", "amazon")
    if any(word in text for word in linux_words):
        return OsFamily.Linux
    return OsFamily.Other
