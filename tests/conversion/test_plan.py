"""The conversion planner: ordered steps, drivers before/after, I/O ceilings and the VirtualMachine spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vmshift import drivers as catalog
from vmshift.conversion import (
    ConversionTarget,
    StepName,
    inspect_physical,
    plan_conversion,
    plan_report,
    read_ovf,
    vm_spec,
)
from vmshift.conversion import plan as plan_module
from vmshift.conversion.plan import ConversionRefused, workload_defaults
from vmshift.conversion.source import Bus, GuestOs, OsFamily, SourceDisk, SourceKind, SourceMachine, SourceNic

GiB = 1024**3
TARGET = ConversionTarget(name="web-1", namespace="apps", volume="csv-1", compatibility=True,
                      placement={"host": "h2", "antiAffinityGroup": "web"}, priority=50)
STEPS = ["Inspect", "InstallAgent", "RemoveThirdPartyDrivers", "InstallSyntheticDrivers", "CreateVirtualMachine",
         "Verify"]


@pytest.mark.parametrize(
    ("filename", "removed"),
    [
        ("vmware.ovf", ["virtio-scsi", "vmci", "vmware-tools"]),
        ("ubuntu.2.0.ovf", ["vbox-guest-additions"]),
        ("v0.9.ovf", []),
        ("csr1000v.ovf", ["virtio-scsi", "vmxnet3", "virtio-net"]),
        ("input.ovf", ["vmxnet3"]),
    ],
)
def test_plan_over_the_shared_descriptors(ovf_dir: Path, filename: str, removed: list[str]) -> None:
    source = read_ovf(ovf_dir / filename)
    plan = plan_conversion(source, TARGET)
    assert [s.name for s in plan.steps] == STEPS
    assert plan.drivers_before == source.drivers
    assert plan.drivers_removed == removed
    assert plan.step(StepName.RemoveThirdPartyDrivers).drivers_removed == removed
    assert plan.drivers_after == [d for d in source.drivers if d not in removed] + ["vmshift-agent", "vmbus",
                                                                                    "netvsc", "storvsc"]
    assert not set(plan.drivers_after) & set(removed)
    # before: foreign paravirtual drivers find no device here, so the guest runs on emulated hardware
    assert (plan.io_before.network_mbps, plan.io_before.disk_mbps) == (1000, 300)
    assert (plan.io_after.network_mbps, plan.io_after.disk_mbps) == (10000, 2000)
    assert catalog.io_ceilings(plan.drivers_after) == (10000, 2000)
    assert plan.warnings[: len(source.warnings)] == source.warnings


def test_vmware_plan_in_detail(ovf_dir: Path) -> None:
    plan = plan_conversion(read_ovf(ovf_dir / "vmware.ovf"), TARGET)
    remove = plan.step(StepName.RemoveThirdPartyDrivers)
    assert remove.summary == "Remove 3 third-party driver(s): virtio-scsi, vmci, vmware-tools."
    assert "remove vmci (VMware VMCI communication device); evidence: VMCI device InstanceID 7" in remove.details[1]
    synthetic = plan.step(StepName.InstallSyntheticDrivers)
    assert synthetic.drivers_installed == ["vmbus", "netvsc", "storvsc"]
    changes = [(c.device, c.before, c.after) for c in synthetic.device_changes]
    assert changes[0] == ("network adapter Network adapter 1", "E1000 (e1000: emulated)",
                          "synthetic network adapter (netvsc)")
    assert len([c for c in synthetic.device_changes if c.device_class is catalog.DeviceClass.Network]) == 4
    assert ("storage controller SCSI controller 0",
            "SCSI controller virtio (virtio-scsi: third-party; lsilogic: emulated)",
            "synthetic SCSI controller (storvsc)") in changes
    assert ("storage controller IDE 0", "IDE controller (ide: emulated)",
            "none: it holds no disk, so the VM does not need it") in changes
    assert plan.step(StepName.InstallAgent).drivers_installed == ["vmshift-agent"]
    verify = plan.step(StepName.Verify)
    assert "network ceiling 1000 -> 10000 Mbit/s, disk ceiling 300 -> 2000 MB/s" in verify.summary
    assert "none of virtio-scsi, vmci, vmware-tools remains" in verify.details


def test_vm_spec_shape(ovf_dir: Path) -> None:
    plan = plan_conversion(read_ovf(ovf_dir / "ubuntu.2.0.ovf"), TARGET)
    assert vm_spec(plan) == {
        "cpus": 1,
        "memoryMiB": 512,
        "processor": {"compatibility": True},
        "disks": [{"name": "disk1", "sizeGiB": 8, "volume": "csv-1"}],
        "priority": 50,
        "workload": {"dirtyRateMiBps": 4, "workingSetMiB": 128},
        "placement": {"host": "h2", "antiAffinityGroup": "web"},
        "running": True,
    }
    vm_spec(plan)["placement"]["host"] = "elsewhere"
    assert plan.target.placement["host"] == "h2"  # the spec is a copy


def test_disk_sizes_round_up_and_names_become_unique_labels() -> None:
    source = SourceMachine(
        kind=SourceKind.Ovf, name="x", os=GuestOs(name="Linux", family=OsFamily.Linux), cpus=1, memory_mib=1024,
        disks=[SourceDisk(name="Hard disk 1", capacity_bytes=128 * 1024**2, bus=Bus.SCSI),
               SourceDisk(name="Hard disk 1", capacity_bytes=GiB + 1, bus=Bus.SCSI),
               SourceDisk(name="***", capacity_bytes=5 * GiB)],
    )
    plan = plan_conversion(source, TARGET)
    assert [(d["name"], d["sizeGiB"]) for d in vm_spec(plan)["disks"]] == [
        ("hard-disk-1", 1), ("hard-disk-1-2", 2), ("disk2", 5)]
    assert sum("rounded up to whole GiB" in w for w in plan.warnings) == 2
    orphans = plan.step(StepName.InstallSyntheticDrivers).device_changes[-1]
    assert orphans.device.startswith("disk(s) Hard disk 1, Hard disk 1, *** without a stated controller")


def test_physical_plan() -> None:
    source = inspect_physical({
        "hostname": "app01", "cpus": {"sockets": 1, "cores": 4}, "memoryMiB": 8192, "os": "Ubuntu 22.04",
        "disks": [{"name": "nvme0n1", "sizeGiB": 256, "bus": "NVMe"}],
        "nics": [{"name": "eth0", "macAddress": "52:54:00:12:34:56", "speedMbps": 1000, "driver": "e1000e"}],
        "drivers": ["nvme", "e1000e"],
    })
    plan = plan_conversion(source, ConversionTarget(name="app01", namespace="default", volume="csv-2"))
    assert plan.drivers_removed == []
    assert plan.step(StepName.RemoveThirdPartyDrivers).summary == (
        "Nothing to remove: the guest has no third-party drivers.")
    assert plan.drivers_after == ["nvme", "e1000e", "vmshift-agent", "vmbus", "netvsc", "storvsc"]
    spec = vm_spec(plan)
    assert (spec["cpus"], spec["memoryMiB"], spec["disks"]) == (4, 8192, [
        {"name": "nvme0n1", "sizeGiB": 256, "volume": "csv-2"}])
    assert spec["placement"] == {} and spec["priority"] == 0 and spec["processor"] == {"compatibility": False}
    assert plan.step(StepName.Inspect).summary.startswith("Inspect physical source 'app01': 4 vCPU(s)")


def test_plan_report_is_plain_camel_case(ovf_dir: Path) -> None:
    report = plan_report(plan_conversion(read_ovf(ovf_dir / "input.ovf"), TARGET))
    assert [s["name"] for s in report["steps"]] == STEPS
    assert report["driversRemoved"] == ["vmxnet3"]
    assert report["throughputBefore"] == {"networkMbps": 1000, "diskMBps": 300}
    assert report["throughputAfter"] == {"networkMbps": 10000, "diskMBps": 2000}
    assert "configuration '4CPU-4GB-3NIC'" in report["steps"][0]["details"][0]
    remove = report["steps"][2]
    assert remove["message"] == "Remove 1 third-party driver(s): vmxnet3.\n" + remove["details"][0]


def test_plan_report_fits_the_status_limits() -> None:
    source = SourceMachine(kind=SourceKind.Ovf, name="x", os=GuestOs(name="l", family=OsFamily.Linux), cpus=1,
                           memory_mib=512, warnings=[f"serial port {i} is not carried over" for i in range(500)],
                           nics=[SourceNic(name=f"nic{i}" * 20) for i in range(500)])
    report = plan_report(plan_conversion(source, TARGET))
    assert len(report["warnings"]) == 64
    assert report["warnings"][-1] == "... and 437 more warnings"
    assert all(len(s["message"]) <= 32768 for s in report["steps"])
    assert report["steps"][3]["message"].endswith("(cut short)")


def test_plan_keeps_the_source_kind_when_dumped(ovf_dir: Path) -> None:
    dumped = plan_conversion(read_ovf(ovf_dir / "csr1000v.ovf"), TARGET).model_dump()
    assert dumped["source"]["configuration"] == "1CPU-4GB"
    assert dumped["source"]["third_party_drivers"] == ["virtio-scsi", "vmxnet3", "virtio-net"]


def test_an_agent_already_present_is_not_installed_twice() -> None:
    source = SourceMachine(kind=SourceKind.Physical, name="x", os=GuestOs(name="w", family=OsFamily.Other),
                           cpus=1, memory_mib=512, drivers=["vmshift-agent", "netvsc"],
                           nics=[SourceNic(name="n", drivers=["netvsc"])])
    plan = plan_conversion(source, TARGET)
    assert plan.step(StepName.InstallAgent).drivers_installed == []
    assert plan.drivers_installed == ["vmbus", "storvsc"]
    assert plan.io_before.network_mbps == 10000


@pytest.mark.parametrize(
    ("memory", "expected"),
    [(256, {"dirtyRateMiBps": 2, "workingSetMiB": 64}), (48, {"dirtyRateMiBps": 1, "workingSetMiB": 48}),
     (65536, {"dirtyRateMiBps": 32, "workingSetMiB": 1024})],
)
def test_workload_defaults_are_modest(memory: int, expected: dict[str, int]) -> None:
    assert workload_defaults(memory) == expected


def test_target_overrides_size(ovf_dir: Path) -> None:
    target = TARGET.model_copy(update={"cpus": 8, "memory_mib": 16384})
    plan = plan_conversion(read_ovf(ovf_dir / "vmware.ovf"), target)
    assert (vm_spec(plan)["cpus"], vm_spec(plan)["memoryMiB"]) == (8, 16384)
    assert "vCPUs set by the target: 8 instead of the source's 2" in plan.warnings
    assert "memory set by the target: 16384 MiB instead of the source's 1536 MiB" in plan.warnings
    assert vm_spec(plan)["workload"] == {"dirtyRateMiBps": 32, "workingSetMiB": 1024}


def test_too_large_for_a_virtual_machine_is_refused() -> None:
    source = inspect_physical({"hostname": "big", "cpus": {"sockets": 16, "cores": 64, "threads": 2},
                               "memoryMiB": 16 * 1024 * 1024, "os": "Linux",
                               "disks": [{"name": "array", "sizeGiB": 70000, "bus": "SAS"}]})
    with pytest.raises(ConversionRefused) as err:
        plan_conversion(source, TARGET)
    message = str(err.value)
    assert "'big' cannot become VirtualMachine apps/web-1" in message
    assert "2048 vCPUs (at most 240)" in message
    assert "16777216 MiB of memory (at most 12582912)" in message
    assert "disk 'array' of 70000 GiB (at most 65536, the VHDX limit)" in message


def test_limits_match_the_api() -> None:
    api = pytest.importorskip("vmshift.api.virtualmachine")
    assert (plan_module.MAX_CPUS, plan_module.MAX_MEMORY_MIB) == (api.MAX_CPUS, api.MAX_MEMORY_MIB)
    disk = api.VirtualMachineDisk.model_json_schema()["properties"]["sizeGiB"]
    assert disk["maximum"] == plan_module.MAX_DISK_GIB


def test_vm_spec_is_a_valid_virtual_machine_spec(ovf_dir: Path) -> None:
    api = pytest.importorskip("vmshift.api.virtualmachine")
    for filename in ("vmware.ovf", "ubuntu.2.0.ovf", "v0.9.ovf", "csr1000v.ovf", "input.ovf"):
        api.VirtualMachineSpec.model_validate(vm_spec(plan_conversion(read_ovf(ovf_dir / filename), TARGET)))


@pytest.mark.parametrize("field", [{"name": "Web_1"}, {"namespace": ""}, {"volume": ""}, {"colour": "x"},
                                   {"priority": -1}, {"cpus": 0}])
def test_target_is_validated(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConversionTarget(**{"name": "web-1", "namespace": "apps", "volume": "csv-1", **field})
