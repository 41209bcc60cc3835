"""The VirtualMachineImport kind (namespaced): bring a foreign VM (OVF) or a physical machine in as a VirtualMachine.

Pure: no I/O. Models only; the conversion controller walks the steps and fills the status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from vmshift.api.common import (
    AGE_COLUMN,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    READY_COLUMN,
    ApiModel,
    CelRule,
    ConditionsStatus,
    ConfigMapKeyReference,
    ObjectReference,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    exactly_one,
    list_map,
)
from vmshift.api.host import VolumeName
from vmshift.api.virtualmachine import MAX_CPUS, MAX_MEMORY_MIB, Placement

#: The largest OVF descriptor accepted (inline or from a ConfigMap): 1 MiB, a ConfigMap's limit.
MAX_OVF_BYTES = 1024 * 1024

SOURCE_IS_ONE = CelRule(
    rule="has(self.ovf) != has(self.physical)",
    message="source needs exactly one of ovf or physical",
)
OVF_IS_ONE = CelRule(
    rule="has(self.inline) != has(self.configMapRef)",
    message="ovf needs exactly one of inline or configMapRef",
)
SPEC_IMMUTABLE = CelRule(
    rule="self == oldSelf",
    message="spec is immutable once the import exists: delete it and create a new one",
)


class OvfSource(ApiModel):
    """An OVF descriptor (VMware or VirtualBox export), inline or in a ConfigMap."""

    model_config = ConfigDict(json_schema_extra=cel(OVF_IS_ONE))

    inline: str | None = Field(
        None,
        description="The OVF descriptor's XML itself. Exactly one of inline and configMapRef. At most 1 MiB; "
        "DTDs and external entities are refused.",
        min_length=1,
        max_length=MAX_OVF_BYTES,
    )
    configMapRef: ConfigMapKeyReference | None = Field(
        None,
        description="A key of a ConfigMap in the import's namespace holding the descriptor. Exactly one of "
        "inline and configMapRef.",
    )
    configuration: str | None = Field(
        None,
        description="The deployment option to import (the ovf:id of a Configuration in the descriptor's "
        "DeploymentOptionSection). Unset: the descriptor's default configuration.",
        min_length=1,
        max_length=253,
    )

    @model_validator(mode="after")
    def _one_descriptor(self) -> OvfSource:
        if not exactly_one(self.inline is not None, self.configMapRef is not None):
            raise ValueError(OVF_IS_ONE.message)
        return self


class PhysicalCpus(ApiModel):
    """The physical machine's processors."""

    sockets: int = Field(1, description="Processor sockets. Default 1; 1 to 16.", ge=1, le=16)
    cores: int = Field(description="Cores per socket. 1 to 512.", ge=1, le=512)
    threads: int = Field(1, description="Threads per core. Default 1; 1 to 8.", ge=1, le=8)
    model: str | None = Field(None, description="The processor's model name, e.g. Intel Xeon E5-2680 v3.",
                              max_length=128)


class DiskBus(StrEnum):
    """How a physical disk attaches."""

    IDE = "IDE"
    SATA = "SATA"
    SAS = "SAS"
    SCSI = "SCSI"
    NVMe = "NVMe"
    FibreChannel = "FibreChannel"
    iSCSI = "iSCSI"
    USB = "USB"
    Other = "Other"


class PhysicalDisk(ApiModel):
    """A disk of the physical machine."""

    name: str = Field(description="The disk as the operating system names it (e.g. sda, disk0); unique in "
                      "the inventory.", min_length=1, max_length=128)
    sizeGiB: float = Field(description="Capacity in GiB, as reported (fractions allowed). More than 0, at "
                           "most 1048576.", gt=0, le=1048576)
    bus: DiskBus = Field(
        description="How the disk attaches: IDE, SATA, SAS, SCSI, NVMe, FibreChannel, iSCSI, USB or Other. "
        "USB disks are not carried over."
    )


class PhysicalNic(ApiModel):
    """A network adapter of the physical machine."""

    name: str = Field(description="The interface name, unique in the inventory, e.g. eth0, Ethernet 2.",
                      min_length=1, max_length=64)
    macAddress: str = Field(description="MAC address: six hex pairs separated by ':' or '-'.",
                            pattern=r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
    speedMbps: int = Field(description="Link speed in megabits per second; 0 when the link is down. At most "
                           "1000000.", ge=0, le=1000000)
    driver: str = Field(description="The driver bound to the adapter, e.g. e1000e, ixgbe, bnx2x.", min_length=1,
                        max_length=64)


class PhysicalInventory(ApiModel):
    """An inventory of a physical machine to convert (P2V)."""

    hostname: str = Field(description="The machine's host name.", min_length=1, max_length=253)
    manufacturer: str | None = Field(None, description="The machine's manufacturer, e.g. Dell Inc.",
                                     max_length=128)
    model: str | None = Field(None, description="The machine's model, e.g. PowerEdge R730.", max_length=128)
    cpus: PhysicalCpus = Field(description="The machine's processors.")
    memoryMiB: int = Field(description="Installed memory in MiB. 1 to 67108864 (64 TiB).", ge=1, le=67108864)
    disks: list[PhysicalDisk] = Field(
        default_factory=list, description="The machine's disks; names unique. At most 256.", max_length=256,
        json_schema_extra=list_map("name"),
    )
    nics: list[PhysicalNic] = Field(
        default_factory=list, description="The machine's network adapters; names unique. At most 64.",
        max_length=64,
        json_schema_extra=list_map("name"),
    )
    drivers: list[str] = Field(
        default_factory=list,
        description="Drivers installed in the operating system (e.g. vmware-tools, e1000e); the conversion "
        "removes third-party ones and installs synthetic ones. At most 4096.",
        max_length=4096,
    )
    os: str = Field(description="The operating system installed, as the machine names it, e.g. Windows Server "
                    "2019, Ubuntu 22.04 LTS. Its family (Windows, Linux) decides the drivers installed.",
                    min_length=1, max_length=256)


class ImportSource(ApiModel):
    """What to import: an OVF descriptor or a physical machine's inventory. Exactly one."""

    model_config = ConfigDict(json_schema_extra=cel(SOURCE_IS_ONE))

    ovf: OvfSource | None = Field(None, description="A VM exported as OVF (V2V). Exactly one of ovf and physical.")
    physical: PhysicalInventory | None = Field(
        None, description="A physical machine (P2V). Exactly one of ovf and physical."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImportSource:
        if not exactly_one(self.ovf is not None, self.physical is not None):
            raise ValueError(SOURCE_IS_ONE.message)
        return self


class ImportTarget(ApiModel):
    """The VirtualMachine the import creates."""

    name: str = Field(description="Name of the VirtualMachine to create.", min_length=1, max_length=253,
                      pattern=DNS_SUBDOMAIN)
    namespace: str | None = Field(
        None, description="Namespace of the VirtualMachine: unset, or the import's own namespace (an import "
        "never creates a VM in another namespace; one that names another fails with "
        "TargetNamespaceNotAllowed).", max_length=63,
        pattern=DNS_LABEL,
    )
    volume: VolumeName = Field(description="The shared volume the converted disks are written to.")
    placement: Placement | None = Field(None, description="Where the new VM may and should run.")
    compatibility: bool = Field(
        False, description="Start the VM in processor compatibility mode. Default false."
    )
    priority: int = Field(0, description="The new VM's priority. Default 0; 0 to 1000000.", ge=0, le=1000000)
    cpus: int | None = Field(None, description=f"Override the virtual processors. Unset: as the source. "
                             f"1 to {MAX_CPUS}.", ge=1, le=MAX_CPUS)
    memoryMiB: int | None = Field(None, description="Override the memory in MiB. Unset: as the source.",
                                  ge=1, le=MAX_MEMORY_MIB)


class VirtualMachineImportSpec(ApiModel):
    """What to import and into which VM. Immutable once created."""

    model_config = ConfigDict(json_schema_extra=cel(SPEC_IMMUTABLE))

    source: ImportSource = Field(description="What to import: exactly one of ovf and physical.")
    target: ImportTarget = Field(description="The VirtualMachine to create.")


class ImportPhase(StrEnum):
    """Where the import stands."""

    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"


class ImportStepName(StrEnum):
    """The named steps of a conversion, in order."""

    Inspect = "Inspect"
    InstallAgent = "InstallAgent"
    RemoveThirdPartyDrivers = "RemoveThirdPartyDrivers"
    InstallSyntheticDrivers = "InstallSyntheticDrivers"
    CreateVirtualMachine = "CreateVirtualMachine"
    Verify = "Verify"


class StepState(StrEnum):
    """Where one step stands."""

    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Skipped = "Skipped"


class ImportStep(ApiModel):
    """One step of the conversion."""

    name: ImportStepName = Field(
        description="Inspect, InstallAgent, RemoveThirdPartyDrivers, InstallSyntheticDrivers, "
        "CreateVirtualMachine or Verify."
    )
    state: StepState = Field(StepState.Pending,
                             description="Pending, Running, Succeeded, Failed or Skipped. Default Pending.")
    startedAt: datetime | None = Field(None, description="When the step started.")
    finishedAt: datetime | None = Field(None, description="When the step ended.")
    message: str | None = Field(None, description="What the step did or why it failed.", max_length=32768)


class Throughput(ApiModel):
    """I/O throughput of a guest."""

    networkMbps: int | None = Field(None, description="Network throughput in megabits per second.", ge=0)
    diskMBps: int | None = Field(None, description="Disk throughput in megabytes per second.", ge=0)


class VirtualMachineImportStatus(ConditionsStatus):
    """How the conversion goes. Conditions: Ready (the VM runs), Reconciling, Stalled."""

    phase: ImportPhase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    steps: list[ImportStep] = Field(
        default_factory=list, description="The conversion's steps in order.",
        max_length=16, json_schema_extra=list_map("name"),
    )
    virtualMachine: ObjectReference | None = Field(None, description="The VirtualMachine created.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What the conversion could not carry over (e.g. devices with no equivalent).",
        max_length=64,
    )
    throughputBefore: Throughput | None = Field(
        None, description="I/O ceilings with the source's drivers (emulated devices)."
    )
    throughputAfter: Throughput | None = Field(None, description="I/O ceilings after the synthetic drivers.")
    startedAt: datetime | None = Field(None, description="When the import started.")
    finishedAt: datetime | None = Field(None, description="When the import ended.")
    message: str | None = Field(None, description="What happened and what a person can do.", max_length=32768)


class VirtualMachineImport(Resource):
    """Imports a VM exported as OVF (V2V) or a physical machine (P2V) as a VirtualMachine."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="virtualmachineimports",
        singular="virtualmachineimport",
        scope="Namespaced",
        shortNames=("vsimp",),
        printerColumns=(
            PrinterColumn("Phase", "string", ".status.phase", "Where the import stands."),
            PrinterColumn("Step", "string", '.status.steps[?(@.state=="Running")].name', "The step running."),
            PrinterColumn("Target", "string", ".spec.target.name", "The VirtualMachine to create."),
            PrinterColumn("VM", "string", ".status.virtualMachine.name", "The VirtualMachine created.",
                          priority=1),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["VirtualMachineImport"] = Field("VirtualMachineImport", description="VirtualMachineImport.")
    spec: VirtualMachineImportSpec = Field(description="What to import and into which VM.")
    status: VirtualMachineImportStatus | None = Field(None, description="How the conversion goes.")
