"""The conversion planner: source and target to the ordered steps and the VM spec. Pure: no I/O.

``plan_conversion`` decides everything a VirtualMachineImport will do (which drivers
go, which come, which emulated or foreign devices become synthetic ones, the VirtualMachine to
create) and ``vm_spec`` renders the VirtualMachine spec in the API's camelCase shape. The steps
are part of the API: Inspect, InstallAgent, RemoveThirdPartyDrivers,
InstallSyntheticDrivers, CreateVirtualMachine, Verify. The driver inventory and the I/O ceilings
before and after come from the driver catalog, so the benefit of the conversion shows in numbers.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from vmshift import drivers as catalog
from vmshift import limits
from vmshift.conversion.source import OsFamily, OvfDescriptor, SourceKind, SourceMachine

GiB = 1024**3
AGENT = "vmshift-agent"
#: Names the API accepts: an RFC 1123 label (namespace, volume, disk) and subdomain (VM).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: The largest VM the API accepts (vmshift.limits: a Hyper-V generation 2 VM, and the VHDX size limit).
MAX_CPUS = limits.MAX_VM_CPUS
MAX_MEMORY_MIB = limits.MAX_VM_MEMORY_MIB
MAX_DISK_GIB = limits.MAX_DISK_GIB


class StepName(StrEnum):
    Inspect = "Inspect"
    InstallAgent = "InstallAgent"
    RemoveThirdPartyDrivers = "RemoveThirdPartyDrivers"
    InstallSyntheticDrivers = "InstallSyntheticDrivers"
    CreateVirtualMachine = "CreateVirtualMachine"
    Verify = "Verify"


STEP_ORDER = tuple(StepName)
_SYNTHETIC_BY_FAMILY = {
    OsFamily.Windows: "Windows guest: install the integration components (VMBus, network and storage drivers)",
    OsFamily.Linux: "Linux guest: load the in-kernel Hyper-V modules (hv_vmbus, hv_netvsc, hv_storvsc) and "
                    "add them to the initramfs so the guest boots from synthetic SCSI",
    OsFamily.Other: "guest OS family not recognised: install the synthetic drivers the agent offers for it",
}
_KIND_WORDS = {SourceKind.Ovf: "OVF", SourceKind.Physical: "physical"}
_DRIVER_KIND_WORDS = {
    catalog.DriverKind.Synthetic: "synthetic", catalog.DriverKind.Emulated: "emulated",
    catalog.DriverKind.ThirdParty: "third-party", catalog.DriverKind.Agent: "agent",
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConversionTarget(_Model):
    """Where and how the converted machine should run (the API's spec.target, namespace resolved)."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="The VirtualMachine to create.")
    namespace: str = Field(max_length=63, pattern=DNS_LABEL, description="Its namespace.")
    volume: str = Field(max_length=63, pattern=DNS_LABEL, description="The shared volume that holds its disks.")
    compatibility: bool = Field(default=False, description="Processor compatibility mode for the new VM.")
    placement: dict[str, Any] = Field(default_factory=dict, description="The VM's spec.placement, as given.")
    priority: int = Field(default=0, ge=0, le=1_000_000, description="The VM's spec.priority.")
    cpus: int | None = Field(default=None, ge=1, le=MAX_CPUS, description="Override the source's vCPUs.")
    memory_mib: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MIB, description="Override its memory.")


class ConversionRefused(ValueError):
    """The source cannot become a VirtualMachine (too large for the API); the message says why."""


class ExpectedIo(_Model):
    network_mbps: int = Field(description="Network throughput the guest can reach, Mbit/s.")
    disk_mbps: int = Field(description="Disk throughput the guest can reach, MB/s.")

    @classmethod
    def of(cls, drivers: list[str]) -> ExpectedIo:
        network, disk = catalog.io_ceilings(drivers)
        return cls(network_mbps=network, disk_mbps=disk)


class DeviceChange(_Model):
    """One source device and what the converted VM uses instead."""

    device: str
    device_class: catalog.DeviceClass
    before: str
    after: str


class PlannedDisk(_Model):
    name: str
    size_gib: int
    volume: str
    source: str
    capacity_bytes: int


class PlanStep(_Model):
    name: StepName
    summary: str = Field(description="One sentence: what the step does.")
    details: list[str] = Field(default_factory=list, description="Each action or check, one per line.")
    drivers_removed: list[str] = Field(default_factory=list)
    drivers_installed: list[str] = Field(default_factory=list)
    device_changes: list[DeviceChange] = Field(default_factory=list)


class ConversionPlan(_Model):
    source: SerializeAsAny[SourceMachine]
    target: ConversionTarget
    cpus: int = Field(description="The VM's vCPUs: the source's, or the target's override.")
    memory_mib: int = Field(description="The VM's memory: the source's, or the target's override.")
    steps: list[PlanStep]
    disks: list[PlannedDisk]
    drivers_before: list[str]
    drivers_after: list[str]
    drivers_removed: list[str]
    drivers_installed: list[str]
    io_before: ExpectedIo
    io_after: ExpectedIo
    warnings: list[str]

    def step(self, name: StepName | str) -> PlanStep:
        return next(s for s in self.steps if s.name == name)


def _label(text: str, fallback: str) -> str:
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or fallback


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in seen:
            suffix = f"-{n}"
            candidate = name[: 63 - len(suffix)].rstrip("-") + suffix
            n += 1
        seen.add(candidate)
        out.append(candidate)
    return out


def _gib(capacity_bytes: int) -> int:
    return max(1, -(-capacity_bytes // GiB))


def _describe(name: str) -> str:
    entry = catalog.driver(name)
    known = name in catalog.CATALOG
    return f"{name} ({entry.description})" if known else f"{name} (not in the catalog: treated as third-party)"


def plan_conversion(source: SourceMachine, target: ConversionTarget) -> ConversionPlan:
    """The ordered steps that turn ``source`` into a running VirtualMachine ``target``."""
    before = list(dict.fromkeys(source.drivers))
    removed = catalog.third_party(before)
    kept = [d for d in before if d not in removed]
    installed = [d for d in (AGENT, *catalog.SYNTHETIC_SET) if d not in kept]
    after = kept + installed
    io_before, io_after = ExpectedIo.of(before), ExpectedIo.of(after)
    warnings = list(source.warnings)

    names = _unique([_label(d.name, f"disk{i}") for i, d in enumerate(source.disks)])
    disks = [
        PlannedDisk(name=n, size_gib=_gib(d.capacity_bytes), volume=target.volume, source=d.name,
                    capacity_bytes=d.capacity_bytes)
        for n, d in zip(names, source.disks, strict=True)
    ]
    for disk in disks:
        if disk.size_gib * GiB != disk.capacity_bytes:
            warnings.append(f"disk {disk.source!r} of {disk.capacity_bytes} bytes is created as {disk.name} "
                            f"of {disk.size_gib} GiB (rounded up to whole GiB)")

    cpus = target.cpus or source.cpus
    memory_mib = target.memory_mib or source.memory_mib
    if target.cpus and target.cpus != source.cpus:
        warnings.append(f"vCPUs set by the target: {target.cpus} instead of the source's {source.cpus}")
    if target.memory_mib and target.memory_mib != source.memory_mib:
        warnings.append(f"memory set by the target: {target.memory_mib} MiB instead of the source's "
                        f"{source.memory_mib} MiB")
    too_big = [
        *([f"{cpus} vCPUs (at most {MAX_CPUS})"] if cpus > MAX_CPUS else []),
        *([f"{memory_mib} MiB of memory (at most {MAX_MEMORY_MIB})"] if memory_mib > MAX_MEMORY_MIB else []),
        *(f"disk {d.source!r} of {d.size_gib} GiB (at most {MAX_DISK_GIB}, the VHDX limit)"
          for d in disks if d.size_gib > MAX_DISK_GIB),
    ]
    if too_big:
        raise ConversionRefused(
            f"{source.name!r} cannot become VirtualMachine {target.namespace}/{target.name}: it has "
            + ", ".join(too_big) + ", beyond what a VirtualMachine may have. Set target.cpus or "
            "target.memoryMiB to fit; a disk cannot be shrunk by an import."
        )
    changes = _device_changes(source)
    total_gib = sum(d.size_gib for d in disks)
    ref = f"{target.namespace}/{target.name}"

    inspect_details = [
        f"{source.cpus} vCPU(s), {source.memory_mib} MiB memory, guest OS {source.os.name} ({source.os.family})",
        *(f"disk {d.name}: {d.capacity_bytes} bytes on {d.bus or 'no'} bus"
          + (f" ({d.controller})" if d.controller else "") + (f", data in {d.file}" if d.file else "")
          for d in source.disks),
        *(f"NIC {n.name}: {n.adapter or 'model not stated'}" + (f" on network {n.network}" if n.network else "")
          for n in source.nics),
        f"drivers found: {', '.join(before) or 'none'}",
        *(f"{name}: {why}" for name, why in source.driver_evidence.items()),
    ]
    if isinstance(source, OvfDescriptor):
        inspect_details.insert(0, f"OVF {source.ovf_version} descriptor"
                               + (f", hardware family {source.hardware_family}" if source.hardware_family else "")
                               + (f", configuration {source.configuration!r} of {', '.join(source.configurations)}"
                                  if source.configuration else ""))
    inspect_details += [f"warning: {w}" for w in source.warnings]

    steps = [
        PlanStep(
            name=StepName.Inspect,
            summary=(f"Inspect {_KIND_WORDS.get(source.kind, source.kind)} source {source.name!r}: "
                     f"{source.cpus} vCPU(s), {source.memory_mib} MiB, {len(source.disks)} disk(s) of {total_gib} GiB, "
                     f"{len(source.nics)} NIC(s), {len(warnings)} warning(s)."),
            details=inspect_details,
        ),
        PlanStep(
            name=StepName.InstallAgent,
            summary=(f"Install the vmshift guest agent ({AGENT}) in the guest: it carries out the driver "
                     "changes and reports the guest's driver inventory."
                     if AGENT not in kept else f"The vmshift guest agent ({AGENT}) is already installed."),
            details=[f"install {AGENT}"] if AGENT not in kept else [],
            drivers_installed=[AGENT] if AGENT not in kept else [],
        ),
        PlanStep(
            name=StepName.RemoveThirdPartyDrivers,
            summary=(f"Remove {len(removed)} third-party driver(s): {', '.join(removed)}." if removed else
                     "Nothing to remove: the guest has no third-party drivers."),
            details=[f"remove {_describe(d)}; evidence: {source.driver_evidence.get(d, 'the inventory')}"
                     for d in removed],
            drivers_removed=removed,
        ),
        PlanStep(
            name=StepName.InstallSyntheticDrivers,
            summary=(f"Install the synthetic drivers {', '.join(catalog.SYNTHETIC_SET)} and move "
                     f"{sum(c.device_class is catalog.DeviceClass.Network for c in changes)} network adapter(s) "
                     f"and {len(disks)} disk(s) onto synthetic VMBus devices."),
            details=[
                _SYNTHETIC_BY_FAMILY[source.os.family],
                *(f"install {_describe(d)}" for d in catalog.SYNTHETIC_SET if d not in kept),
                *(f"{c.device}: {c.before} -> {c.after}" for c in changes),
                *(f"keep {_describe(d)} installed: unused once the synthetic device is in place"
                  for d in kept if catalog.driver(d).kind is catalog.DriverKind.Emulated),
            ],
            drivers_installed=[d for d in catalog.SYNTHETIC_SET if d not in kept],
            device_changes=changes,
        ),
        PlanStep(
            name=StepName.CreateVirtualMachine,
            summary=(f"Create VirtualMachine {ref} with {cpus} vCPU(s), {memory_mib} MiB and "
                     f"{len(disks)} disk(s) on volume {target.volume}, and start it."),
            details=[
                f"{cpus} vCPU(s), {memory_mib} MiB memory",
                *(f"disk {d.name}: {d.size_gib} GiB on volume {d.volume} (from {d.source!r})" for d in disks),
                f"processor compatibility {'on' if target.compatibility else 'off'}",
                f"priority {target.priority}",
                f"placement {target.placement}" if target.placement else "placement left to the scheduler",
            ],
        ),
        PlanStep(
            name=StepName.Verify,
            summary=(f"Verify that {ref} runs on synthetic devices: network ceiling {io_before.network_mbps} -> "
                     f"{io_after.network_mbps} Mbit/s, disk ceiling {io_before.disk_mbps} -> "
                     f"{io_after.disk_mbps} MB/s."),
            details=[
                f"the VM is Running with {cpus} vCPU(s), {memory_mib} MiB and {len(disks)} disk(s)",
                f"the guest's drivers include {', '.join([AGENT, *catalog.SYNTHETIC_SET])}",
                *([f"none of {', '.join(removed)} remains"] if removed else []),
                f"I/O ceilings reach {io_after.network_mbps} Mbit/s network and {io_after.disk_mbps} MB/s disk",
            ],
        ),
    ]
    return ConversionPlan(
        source=source, target=target, cpus=cpus, memory_mib=memory_mib, steps=steps, disks=disks,
        drivers_before=before, drivers_after=after,
        drivers_removed=removed, drivers_installed=installed, io_before=io_before, io_after=io_after,
        warnings=warnings,
    )


def _device_changes(source: SourceMachine) -> list[DeviceChange]:
    """Each NIC becomes a synthetic adapter; each controller's disks move to synthetic SCSI."""
    changes: list[DeviceChange] = []
    for nic in source.nics:
        drivers = "; ".join(_kind_of(d) for d in nic.drivers) or "driver not inferred"
        changes.append(DeviceChange(
            device=f"network adapter {nic.name}", device_class=catalog.DeviceClass.Network,
            before=f"{nic.adapter or 'model not stated'} ({drivers})",
            after="synthetic network adapter (netvsc)",
        ))
    used = {d.controller for d in source.disks if d.controller}
    for controller in source.controllers:
        drivers = "; ".join(_kind_of(d) for d in controller.drivers) or "driver not inferred"
        before = f"{controller.bus} controller" + (f" {controller.model}" if controller.model else "") + f" ({drivers})"
        after = ("synthetic SCSI controller (storvsc)" if controller.name in used
                 else "none: it holds no disk, so the VM does not need it")
        changes.append(DeviceChange(device=f"storage controller {controller.name}",
                                    device_class=catalog.DeviceClass.Storage, before=before, after=after))
    orphans = [d for d in source.disks if not d.controller]
    if orphans:
        changes.append(DeviceChange(
            device=f"disk(s) {', '.join(d.name for d in orphans)} without a stated controller",
            device_class=catalog.DeviceClass.Storage, before="unknown controller",
            after="synthetic SCSI controller (storvsc)",
        ))
    return changes


def _kind_of(name: str) -> str:
    if name not in catalog.CATALOG:
        return f"{name}: not in the catalog"
    return f"{name}: {_DRIVER_KIND_WORDS[catalog.driver(name).kind]}"


def workload_defaults(memory_mib: int) -> dict[str, int]:
    """A modest simulated workload: a working set of a quarter of memory (64 MiB to 1 GiB) dirtied slowly."""
    working_set = min(memory_mib, max(64, min(1024, memory_mib // 4)))
    return {"dirtyRateMiBps": max(1, min(32, working_set // 32)), "workingSetMiB": working_set}


def vm_spec(plan: ConversionPlan) -> dict[str, Any]:
    """The VirtualMachine spec the CreateVirtualMachine step creates, in the API's camelCase shape."""
    return {
        "cpus": plan.cpus,
        "memoryMiB": plan.memory_mib,
        "processor": {"compatibility": plan.target.compatibility},
        "disks": [{"name": d.name, "sizeGiB": d.size_gib, "volume": d.volume} for d in plan.disks],
        "priority": plan.target.priority,
        "workload": workload_defaults(plan.memory_mib),
        "placement": dict(plan.target.placement),
        "running": True,
    }


#: What a VirtualMachineImport's status holds at most: 64 warnings, 32768 characters per step message.
MAX_REPORTED_WARNINGS = 64
MAX_STEP_MESSAGE = 32768


def plan_report(plan: ConversionPlan) -> dict[str, Any]:
    """The plan as a VirtualMachineImport's status can hold it (camelCase, plain data, within its limits).

    ``throughputBefore``/``throughputAfter`` match the status fields of those names; each step's
    ``message`` is its summary and details, cut to fit ``status.steps[].message``.
    """
    def io(c: ExpectedIo) -> dict[str, int]:
        return {"networkMbps": c.network_mbps, "diskMBps": c.disk_mbps}

    warnings = list(plan.warnings)
    if len(warnings) > MAX_REPORTED_WARNINGS:
        more = len(warnings) - (MAX_REPORTED_WARNINGS - 1)
        warnings = [*warnings[: MAX_REPORTED_WARNINGS - 1], f"... and {more} more warnings"]
    return {
        "steps": [
            {"name": str(s.name), "summary": s.summary, "details": list(s.details),
             "message": _clip("\n".join([s.summary, *s.details]), MAX_STEP_MESSAGE)}
            for s in plan.steps
        ],
        "driversBefore": list(plan.drivers_before),
        "driversAfter": list(plan.drivers_after),
        "driversRemoved": list(plan.drivers_removed),
        "driversInstalled": list(plan.drivers_installed),
        "throughputBefore": io(plan.io_before),
        "throughputAfter": io(plan.io_after),
        "warnings": warnings,
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n... (cut short)"
