"""The VirtualMachine kind (namespaced): a guest's size, disks, placement and migration wishes, and where it runs.

Pure: no I/O. Models only; the VM controller and the scheduler fill the status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from vmshift import limits
from vmshift.api.common import (
    AGE_COLUMN,
    DNS_LABEL,
    READY_COLUMN,
    ApiModel,
    CelRule,
    ConditionsStatus,
    LabelSelector,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    exactly_one,
    list_atomic,
    list_map,
)
from vmshift.api.host import VolumeName
from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.limits import MAX_DIRTY_RATE_MIBPS, MAX_DISK_GIB, MAX_VM_DISKS

#: The largest guest (vmshift.limits): 240 virtual processors and 12 TiB, as a Hyper-V generation 2 VM.
MAX_CPUS = limits.MAX_VM_CPUS
MAX_MEMORY_MIB = limits.MAX_VM_MEMORY_MIB

DISK_HAS_ONE_BACKING = CelRule(
    rule="[has(self.volume), has(self.passthroughLun), has(self.local) && self.local]"
    ".filter(x, x).size() == 1",
    message="a disk needs exactly one of volume (a shared volume), passthroughLun, or local: true",
    messageExpression="'disk ' + self.name + ' needs exactly one of volume (a shared volume), passthroughLun, "
    "or local: true'",
)

WORKING_SET_FITS_MEMORY = CelRule(
    rule="!has(self.workload) || !has(self.workload.workingSetMiB) || self.workload.workingSetMiB <= self.memoryMiB",
    message="workload.workingSetMiB must not exceed memoryMiB",
    fieldPath=".workload.workingSetMiB",
)


class VirtualMachineDisk(ApiModel):
    """One virtual disk and where it lives: on a shared volume, a pass-through LUN, or the host's local storage."""

    model_config = ConfigDict(json_schema_extra=cel(DISK_HAS_ONE_BACKING))

    name: str = Field(description="Name of the disk, unique in the VM; a DNS label.", min_length=1,
                      max_length=63, pattern=DNS_LABEL)
    sizeGiB: int = Field(description=f"Size of the disk in GiB. 1 to {MAX_DISK_GIB} (64 TiB, the VHDX limit).",
                         ge=1, le=MAX_DISK_GIB)
    volume: VolumeName | None = Field(
        None,
        description="The Cluster Shared Volume holding the disk; the VM can then run on, and move live "
        "to, every host that mounts it. Exactly one of volume, passthroughLun and local.",
    )
    passthroughLun: VolumeName | None = Field(
        None,
        description="A SAN LUN passed through to the guest; the VM can run on every host that sees it. "
        "Exactly one of volume, passthroughLun and local.",
    )
    local: bool | None = Field(
        None,
        description="true: the disk lives on the current host's local storage, so the VM cannot move live "
        "(only by quick migration, which copies it). Exactly one of volume, passthroughLun and local: true.",
    )

    @model_validator(mode="after")
    def _one_backing(self) -> VirtualMachineDisk:
        if not exactly_one(self.volume is not None, self.passthroughLun is not None, bool(self.local)):
            raise ValueError(f"disk {self.name} needs exactly one of volume (a shared volume), passthroughLun, "
                             f"or local: true")
        return self


class VirtualMachineProcessor(ApiModel):
    """What processor the guest sees."""

    compatibility: bool = Field(
        False,
        description="Processor compatibility mode (as vSphere's EVC). true: the guest sees the features common "
        "to every host of its vendor that spec.placement allows (status.processor.baseline), so it can move "
        "to any of them. false: it sees every feature of the host it starts on, and can move only to hosts "
        "that have them all. Takes effect when the VM (re)starts; a change of the fleet too. Default false.",
    )


class Workload(ApiModel):
    """How the simulated guest writes its memory, which decides how live migration converges."""

    dirtyRateMiBps: float = Field(
        0,
        description="Memory the guest writes per second, in MiB/s. Live migration converges when this is "
        "well below the migration bandwidth. Default 0 (an idle guest); "
        f"0 to {MAX_DIRTY_RATE_MIBPS} (64 GiB/s).",
        ge=0,
        le=MAX_DIRTY_RATE_MIBPS,
    )
    workingSetMiB: int | None = Field(
        None,
        description="Size of the hot set the writes fall in, in MiB; at most memoryMiB. Unset: the whole "
        "memory.",
        ge=1,
        le=MAX_MEMORY_MIB,
    )


class Placement(ApiModel):
    """Where the VM may and should run."""

    host: str | None = Field(
        None,
        description="The Host the VM should run on. Changing it moves the VM by migration. Unset: the "
        "scheduler chooses and keeps the VM where it is.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )
    hostSelector: LabelSelector | None = Field(
        None, description="Only hosts whose labels match this selector may run the VM."
    )
    antiAffinityGroup: str | None = Field(
        None,
        description="VMs sharing this group name (in one namespace) are kept on different hosts.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )


class VirtualMachineMigrationSettings(ApiModel):
    """How the VM prefers to be moved."""

    mode: MigrationMode = Field(
        MigrationMode.Auto,
        description="How the VM moves: Live (pre-copy, pause of milliseconds), Quick (save, copy, restore; "
        "the guest is paused for the whole copy) or Auto (live, falling back as the migration policy "
        "allows). Default Auto.",
    )
    maxDowntimeMs: int | None = Field(
        None,
        description="The longest pause of the guest a migration may cause, in milliseconds. Unset: the "
        "migration policy's maxDowntimeMs. 1 to 600000.",
        ge=1,
        le=600000,
    )
    policy: str | None = Field(
        None,
        description="Name of the MigrationPolicy to use. Unset: the policy whose selector matches the VM.",
        min_length=1,
        max_length=253,
    )


class VirtualMachineSpec(ApiModel):
    """The VM as its owner wants it."""

    model_config = ConfigDict(json_schema_extra=cel(WORKING_SET_FITS_MEMORY))

    running: bool = Field(True, description="Whether the VM should run. false stops it. Default true.")
    cpus: int = Field(description=f"Virtual processors. 1 to {MAX_CPUS}.", ge=1, le=MAX_CPUS)
    memoryMiB: int = Field(
        description=f"Guest memory in MiB. 1 to {MAX_MEMORY_MIB} (12 TiB).", ge=1, le=MAX_MEMORY_MIB
    )
    processor: VirtualMachineProcessor = Field(
        default_factory=VirtualMachineProcessor, description="What processor the guest sees."
    )
    disks: list[VirtualMachineDisk] = Field(
        default_factory=list,
        description="Virtual disks, each on a shared volume, a pass-through LUN or local storage. Names are "
        f"unique; at most {MAX_VM_DISKS}.",
        max_length=MAX_VM_DISKS,
        json_schema_extra=list_map("name"),
    )
    priority: int = Field(
        0,
        description="Importance of the VM: higher is more important. Evacuations move VMs in descending "
        "priority, and EvacuateCritical remediation moves those at or above its threshold. Default 0; "
        "0 to 1000000.",
        ge=0,
        le=1000000,
    )
    workload: Workload = Field(default_factory=Workload, description="How the simulated guest writes memory.")
    placement: Placement = Field(default_factory=Placement, description="Where the VM may and should run.")
    migration: VirtualMachineMigrationSettings = Field(
        default_factory=VirtualMachineMigrationSettings, description="How the VM prefers to be moved."
    )

    @model_validator(mode="after")
    def _working_set_fits(self) -> VirtualMachineSpec:
        if self.workload.workingSetMiB is not None and self.workload.workingSetMiB > self.memoryMiB:
            raise ValueError(WORKING_SET_FITS_MEMORY.message)
        return self


class VirtualMachinePhase(StrEnum):
    """The VM's life cycle in one word."""

    Pending = "Pending"
    Scheduling = "Scheduling"
    Starting = "Starting"
    Running = "Running"
    Migrating = "Migrating"
    Stopped = "Stopped"
    Failed = "Failed"


class ProcessorBaseline(ApiModel):
    """In compatibility mode, the fleet's baseline: the features every host the VM may run on offers
    (as vSphere's EVC mode), per vendor."""

    vendor: Literal["Intel", "AMD"] | None = Field(None, description="The vendor whose hosts the baseline spans.")
    features: list[str] = Field(
        default_factory=list,
        description="The features common to every host of that vendor that spec.placement allows, sorted: "
        "what the guest sees when it next starts.",
        json_schema_extra=list_atomic(),
    )
    hostCount: int = Field(
        0,
        ge=0,
        description="How many hosts the baseline spans (those of that vendor spec.placement allows): the guest "
        "can move to any of them. A count, not the list of names: at 1,000 hosts the list would be most of "
        "every VM's status, written and watched 10,000 times over.",
    )


class GuestProcessor(ApiModel):
    """The processor the guest was started with; fixed until it restarts."""

    model: str | None = Field(None, description="Microarchitecture of the host the guest started on.")
    vendor: Literal["Intel", "AMD"] | None = Field(None, description="Processor vendor: Intel or AMD.")
    features: list[str] = Field(
        default_factory=list,
        description="Instruction-set features the guest sees, sorted. A target host must have them all.",
        json_schema_extra=list_atomic(),
    )
    compatibility: bool | None = Field(None, description="Whether the guest started in compatibility mode.")
    baseline: ProcessorBaseline | None = Field(
        None,
        description="In compatibility mode, the fleet's baseline now. When the fleet changes it, the running "
        "guest keeps its features until it restarts (condition ProcessorBaseline, reason "
        "ProcessorBaselineChanged).",
    )


class MigrationInFlight(ApiModel):
    """The migration moving the VM right now."""

    name: str = Field(description="Name of the VirtualMachineMigration.", min_length=1, max_length=253)
    phase: MigrationPhase | None = Field(None, description="Its phase.")
    targetHost: str | None = Field(None, description="The host the VM is moving to.")


class LastMigration(ApiModel):
    """How the VM's last migration ended."""

    name: str = Field(description="Name of the VirtualMachineMigration.", min_length=1, max_length=253)
    mode: MigrationMode | None = Field(None, description="The mode used: Live or Quick.")
    result: MigrationPhase | None = Field(None, description="How it ended: Succeeded, Failed or Cancelled.")
    sourceHost: str | None = Field(None, description="Where the VM was.")
    targetHost: str | None = Field(None, description="Where the VM went (or was to go).")
    downtimeMs: float | None = Field(None, description="How long the guest was paused, in milliseconds.", ge=0)
    durationMs: float | None = Field(None, description="How long the migration took, in milliseconds.", ge=0)
    finishedAt: datetime | None = Field(None, description="When it ended.")


class IoCeilings(ApiModel):
    """I/O throughput the guest's drivers allow."""

    networkMbps: int | None = Field(None, description="Network throughput ceiling in megabits per second.", ge=0)
    diskMBps: int | None = Field(None, description="Disk throughput ceiling in megabytes per second.", ge=0)


class VirtualMachineStatus(ConditionsStatus):
    """Where the VM runs and how it is. Conditions: Ready, Placed, Migratable, Reconciling, Stalled."""

    phase: VirtualMachinePhase | None = Field(
        None,
        description="Pending, Scheduling, Starting, Running, Migrating, Stopped or Failed.",
    )
    host: str | None = Field(None, description="The host the VM runs on (the agents are the truth).")
    processor: GuestProcessor | None = Field(None, description="The processor the guest was started with.")
    migration: MigrationInFlight | None = Field(None, description="The migration in flight, if any.")
    lastMigration: LastMigration | None = Field(None, description="How the last migration ended.")
    drivers: list[str] = Field(
        default_factory=list,
        description="Drivers installed in the guest (e.g. vmbus, netvsc, storvsc, e1000).",
        json_schema_extra=list_atomic(),
    )
    ioCeilings: IoCeilings | None = Field(None, description="I/O throughput the guest's drivers allow.")
    startedAt: datetime | None = Field(None, description="When the guest last started.")
    reason: str | None = Field(None, description="A CamelCase word for the phase, e.g. why it Failed.",
                               max_length=1024)
    message: str | None = Field(None, description="What happened and what a person can do.", max_length=32768)


class VirtualMachine(Resource):
    """A virtual machine: its size, disks, placement and migration wishes."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="virtualmachines",
        singular="virtualmachine",
        scope="Namespaced",
        shortNames=("vsvm",),
        printerColumns=(
            PrinterColumn("Phase", "string", ".status.phase", "The VM's life cycle in one word."),
            PrinterColumn("Host", "string", ".status.host", "The host the VM runs on."),
            PrinterColumn("CPUs", "integer", ".spec.cpus", "Virtual processors."),
            PrinterColumn("Memory", "integer", ".spec.memoryMiB", "Guest memory in MiB."),
            PrinterColumn("Priority", "integer", ".spec.priority", "Importance of the VM.", priority=1),
            PrinterColumn("Desired", "string", ".spec.placement.host", "Desired host.", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["VirtualMachine"] = Field("VirtualMachine", description="VirtualMachine.")
    spec: VirtualMachineSpec = Field(description="The VM as its owner wants it.")
    status: VirtualMachineStatus | None = Field(None, description="Where the VM runs and how it is.")
