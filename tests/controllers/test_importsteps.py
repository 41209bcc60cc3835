"""The import's pure decisions: step bookkeeping, source resolution, the VM manifest, driver changes, conditions."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conversion.conftest import shared_dir
from vmshift import drivers as catalog
from vmshift.api.labels import DRIVERS_ANNOTATION
from vmshift.api.vmimport import MAX_OVF_BYTES, ImportStepName, StepState
from vmshift.controllers import importsteps as steps_mod
from vmshift.controllers.importsteps import (
    EXECUTION_ORDER,
    IMPORT_UID_LABEL,
    ConfigMapKey,
    ImportFailed,
    ImportFailure,
    PatchPacer,
    SourceMissing,
    Steps,
    configmap_key,
    conversion_target,
    failed,
    finished,
    imported_vm,
    inspect_source,
    is_tar,
    make_plan,
    owned_by,
    progressing,
    succeeded,
    vm_manifest,
    waiting,
)
from vmshift.conversion import plan_report
from vmshift.conversion.driversteps import (
    DRIVER_STEPS,
    agent_change,
    apply_change,
    driver_problems,
    planned_messages,
    synthetic_change,
    third_party_change,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CONVERTED = ["vmshift-agent", "vmbus", "netvsc", "storvsc"]


@pytest.fixture(scope="module")
def vmware() -> str:
    return (shared_dir() / "testdata" / "ovf" / "vmware.ovf").read_text()


@pytest.fixture(scope="module")
def invalid() -> str:
    return (shared_dir() / "testdata" / "ovf" / "invalid.ovf").read_text()


def ovf_spec(**ovf: object) -> dict[str, object]:
    return {"source": {"ovf": ovf}, "target": {"name": "app", "volume": "csv-1"}}


PHYSICAL = {
    "hostname": "fs01", "cpus": {"cores": 2}, "memoryMiB": 2048,
    "disks": [{"name": "sda", "sizeGiB": 20, "bus": "SAS"}],
    "nics": [{"name": "eth0", "macAddress": "00:11:22:33:44:55", "speedMbps": 1000, "driver": "e1000"}],
    "drivers": ["hpsa", "e1000"], "os": "Ubuntu 22.04 LTS",
}


# -- steps --------------------------------------------------------------------------------------


def test_new_steps_are_all_pending_in_design_order() -> None:
    dumped = Steps().dump()
    assert [s["name"] for s in dumped] == [n.value for n in ImportStepName]
    assert all(s == {"name": s["name"], "state": "Pending"} for s in dumped)
    assert Steps().next() is ImportStepName.Inspect


def test_steps_run_in_execution_order_and_keep_their_times() -> None:
    book = Steps()
    for i, name in enumerate(EXECUTION_ORDER):
        assert book.next() is name
        book.start(name, f"doing {name}", now=T0 + timedelta(seconds=2 * i))
        assert book.running() is name
        book.succeed(name, f"did {name}", now=T0 + timedelta(seconds=2 * i + 1))
    assert book.next() is None and book.running() is None
    by_name = {s["name"]: s for s in book.dump()}
    create = by_name["CreateVirtualMachine"]
    assert create == {"name": "CreateVirtualMachine", "state": "Succeeded", "startedAt": "2026-01-02T03:04:07Z",
                      "finishedAt": "2026-01-02T03:04:08Z", "message": "did CreateVirtualMachine"}
    # the API lists CreateVirtualMachine after the driver steps; it ran before them
    assert by_name["InstallAgent"]["startedAt"] > create["finishedAt"]


def test_steps_resume_from_a_previous_status() -> None:
    previous = [
        {"name": "Verify", "state": "Pending"},
        {"name": "Inspect", "state": "Succeeded", "startedAt": "2026-01-02T03:04:05Z",
         "finishedAt": "2026-01-02T03:04:06Z", "message": "ok"},
        {"name": "CreateVirtualMachine", "state": "Running", "startedAt": "2026-01-02T03:04:06Z", "message": "x"},
        {"name": "Bogus", "state": "Running"},
        {"name": "InstallAgent", "state": "Weird"},
    ]
    book = Steps(previous)
    assert book.state(ImportStepName.InstallAgent) is StepState.Pending
    assert book.running() is ImportStepName.CreateVirtualMachine
    assert book.next() is ImportStepName.CreateVirtualMachine
    book.start(ImportStepName.CreateVirtualMachine, "resumed", now=T0 + timedelta(minutes=5))
    created = {s["name"]: s for s in book.dump()}["CreateVirtualMachine"]
    assert created["startedAt"] == "2026-01-02T03:04:06Z", "a resumed step keeps when it really started"
    assert [s["name"] for s in book.dump()] == [n.value for n in ImportStepName]


def test_skip_fail_and_plan() -> None:
    book = Steps()
    book.plan(ImportStepName.Verify, "will verify")
    book.skip(ImportStepName.RemoveThirdPartyDrivers, "nothing", now=T0)
    book.fail(ImportStepName.Inspect, "broken", now=T0)
    book.plan(ImportStepName.Inspect, "ignored: not pending")
    by_name = {s["name"]: s for s in book.dump()}
    assert by_name["Verify"] == {"name": "Verify", "state": "Pending", "message": "will verify"}
    assert by_name["RemoveThirdPartyDrivers"]["state"] == "Skipped"
    assert by_name["RemoveThirdPartyDrivers"]["startedAt"] == by_name["RemoveThirdPartyDrivers"]["finishedAt"]
    assert by_name["Inspect"]["state"] == "Failed" and by_name["Inspect"]["message"] == "broken"
    assert book.done(ImportStepName.RemoveThirdPartyDrivers) and not book.done(ImportStepName.Inspect)


def test_patch_pacer_spaces_patches_by_the_interval() -> None:
    pacer = PatchPacer(1.0)
    assert pacer.delay(100.0) == 0.0
    pacer.mark(100.0)
    assert pacer.delay(100.25) == pytest.approx(0.75)
    assert pacer.delay(101.5) == 0.0


def test_finished() -> None:
    assert not finished(None) and not finished({}) and not finished({"phase": "Running"})
    assert finished({"phase": "Succeeded"}) and finished({"phase": "Failed"})


# -- source resolution ------------------------------------------------------------------------------


def test_inline_and_configmap_text_read_alike(vmware: str) -> None:
    inline = inspect_source(ovf_spec(inline=vmware), "ns")
    spec = ovf_spec(configMapRef={"name": "cm", "key": "vm.ovf"})
    assert configmap_key(spec, "ns") == ConfigMapKey("ns", "cm", "vm.ovf")
    assert configmap_key(ovf_spec(inline=vmware), "ns") is None
    from_text = inspect_source(spec, "ns", vmware)
    from_bytes = inspect_source(spec, "ns", vmware.encode())
    for got in (inline, from_text, from_bytes):
        assert (got.name, got.cpus, got.memory_mib) == ("vmw", 2, 1536)
        assert "vmware-tools" in got.drivers


def test_binary_data_may_hold_an_ova(vmware: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("vmw.ovf", vmware.encode()), ("input.vmdk", b"\x00disk\x00" * 64)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ova = buffer.getvalue()
    assert is_tar(ova) and not is_tar(vmware.encode())
    got = inspect_source(ovf_spec(configMapRef={"name": "cm", "key": "vm.ova"}), "ns", ova)
    assert got.name == "vmw" and got.package is not None and got.package.descriptor == "vmw.ovf"


def test_a_missing_configmap_waits() -> None:
    with pytest.raises(SourceMissing, match=r"ConfigMap ns/cm key vm\.ovf does not exist"):
        inspect_source(ovf_spec(configMapRef={"name": "cm", "key": "vm.ovf"}), "ns", None)


def test_an_invalid_descriptor_is_refused_with_its_location(invalid: str) -> None:
    with pytest.raises(ImportFailed) as caught:
        inspect_source(ovf_spec(configMapRef={"name": "cm", "key": "bad.ovf"}), "ns", invalid)
    assert caught.value.reason is ImportFailure.InvalidDescriptor
    assert "ConfigMap ns/cm key bad.ovf refused" in caught.value.message
    assert "line 10 (/Envelope/DiskSection/Disk[2])" in caught.value.message
    assert "Nothing was created" in caught.value.message


def test_descriptors_over_the_api_limit_are_refused(vmware: str) -> None:
    padded = vmware.replace("<ovf:References>", "<!--" + "x" * MAX_OVF_BYTES + "--><ovf:References>", 1)
    with pytest.raises(ImportFailed) as caught:
        inspect_source(ovf_spec(inline=padded), "ns")
    assert caught.value.reason is ImportFailure.InvalidDescriptor


def test_physical_inventories() -> None:
    got = inspect_source({"source": {"physical": PHYSICAL}}, "ns")
    assert got.name == "fs01" and got.drivers == ["hpsa", "e1000"]
    with pytest.raises(ImportFailed) as caught:
        inspect_source({"source": {"physical": {**PHYSICAL, "memoryMiB": 0}}}, "ns")
    assert caught.value.reason is ImportFailure.InvalidInventory and "memoryMiB" in caught.value.message


def test_too_large_a_source_is_refused() -> None:
    spec = {"source": {"physical": {**PHYSICAL, "cpus": {"sockets": 16, "cores": 64}}},
            "target": {"name": "big", "volume": "csv-1"}}
    with pytest.raises(ImportFailed) as caught:
        make_plan(spec, "ns")
    assert caught.value.reason is ImportFailure.SourceTooLarge


def test_conversion_target_defaults_the_namespace() -> None:
    target = conversion_target({"target": {"name": "a", "volume": "csv-1", "memoryMiB": 512, "cpus": 2,
                                           "placement": {"host": "h1"}}}, "home")
    assert (target.namespace, target.memory_mib, target.cpus, target.placement) == ("home", 512, 2, {"host": "h1"})
    assert conversion_target({"target": {"name": "a", "volume": "v", "namespace": "elsewhere"}}, "home").namespace \
        == "elsewhere"


# -- the VirtualMachine -----------------------------------------------------------------------------


def test_the_manifest_carries_the_source_drivers_and_the_owner(vmware: str) -> None:
    plan = make_plan(ovf_spec(inline=vmware), "ns")
    manifest = vm_manifest(plan, "imp", "ns", "uid-1")
    meta = manifest["metadata"]
    assert (manifest["kind"], meta["name"], meta["namespace"]) == ("VirtualMachine", "app", "ns")
    assert meta["annotations"][DRIVERS_ANNOTATION] == ",".join(plan.drivers_before)
    assert meta["labels"] == {IMPORT_UID_LABEL: "uid-1"}
    assert meta["ownerReferences"][0]["controller"] is True and meta["ownerReferences"][0]["uid"] == "uid-1"
    assert manifest["spec"]["cpus"] == 2 and manifest["spec"]["running"] is True
    assert owned_by(manifest, "uid-1") and not owned_by(manifest, "uid-2")
    assert not owned_by({"metadata": {"name": "app"}}, "uid-1")


def test_no_owner_reference_across_namespaces(vmware: str) -> None:
    spec = ovf_spec(inline=vmware)
    spec["target"] = {"name": "app", "volume": "csv-1", "namespace": "other"}
    manifest = vm_manifest(make_plan(spec, "ns"), "imp", "ns", "uid-1")
    assert "ownerReferences" not in manifest["metadata"]
    assert manifest["metadata"]["namespace"] == "other" and owned_by(manifest, "uid-1")


def test_indexed_vm_view() -> None:
    vm = imported_vm({"metadata": {"name": "a", "namespace": "n", "uid": "u", "labels": {IMPORT_UID_LABEL: "i"},
                                   "deletionTimestamp": "2026-01-01T00:00:00Z"},
                      "spec": {"cpus": 2, "memoryMiB": 512},
                      "status": {"phase": "Pending", "reason": "InsufficientResources", "message": "full"}})
    assert (vm.key, vm.uid, vm.import_uid, vm.deleting, vm.cpus, vm.memory_mib) == ("n/a", "u", "i", True, 2, 512)
    assert (vm.phase, vm.reason, vm.message, vm.host) == ("Pending", "InsufficientResources", "full", None)


# -- driver changes -------------------------------------------------------------------------------


def convert(drivers: list[str]) -> list[str]:
    for decide in DRIVER_STEPS.values():
        change = decide(drivers)
        if change is not None:
            drivers = apply_change(drivers, change)
    return drivers


def test_the_vmware_guest_ends_on_synthetic_drivers_only() -> None:
    source = ["virtio-scsi", "lsilogic", "ide", "vmci", "e1000", "vmware-tools"]
    agent = agent_change(source)
    assert agent is not None and agent.install == ["vmshift-agent"] and agent.remove == []
    third = third_party_change(source)
    assert third is not None and third.remove == ["virtio-scsi", "vmci", "vmware-tools"]
    synthetic = synthetic_change(["lsilogic", "ide", "e1000", "vmshift-agent"])
    assert synthetic is not None
    assert synthetic.install == ["vmbus", "netvsc", "storvsc"] and synthetic.remove == ["lsilogic", "ide", "e1000"]
    assert convert(source) == CONVERTED
    assert driver_problems(source) == [
        "missing vmshift-agent, vmbus, netvsc, storvsc", "third-party drivers remain: virtio-scsi, vmci, vmware-tools",
        "emulated drivers remain: lsilogic, ide, e1000"]


names = st.sampled_from([*catalog.CATALOG, "hpsa", "bnx2x", "hp-ilo"])


@given(st.lists(names, max_size=12, unique=True))
def test_conversion_always_verifies_and_a_second_run_changes_nothing(source: list[str]) -> None:
    converted = convert(source)
    assert driver_problems(converted) == []
    assert set(converted) == set(CONVERTED)
    assert all(decide(converted) is None for decide in DRIVER_STEPS.values()), "a step run twice does nothing"
    assert catalog.io_ceilings(converted) == (10_000, 2_000)


def test_planned_messages_simulate_the_changes(vmware: str) -> None:
    plan = make_plan(ovf_spec(inline=vmware), "ns")
    messages = planned_messages(plan, plan_report(plan))
    assert set(messages) == set(EXECUTION_ORDER) - {ImportStepName.Inspect}
    assert messages[ImportStepName.InstallAgent] == "Will install vmshift-agent on the guest of ns/app once it runs."
    assert "remove virtio-scsi, vmci, vmware-tools" in messages[ImportStepName.RemoveThirdPartyDrivers]
    assert "network 1000 -> 10000 Mbit/s, disk 300 -> 2000 MB/s" in messages[ImportStepName.Verify]
    assert "Create VirtualMachine ns/app" in messages[ImportStepName.CreateVirtualMachine]


# -- conditions -----------------------------------------------------------------------------------


def test_conditions_follow_kstatus() -> None:
    def by_type(conditions: list[dict[str, object]]) -> dict[object, tuple[object, object]]:
        return {c["type"]: (c["status"], c["reason"]) for c in conditions}

    running = progressing([], "Inspect", "Inspect: reading", 1, now=T0)
    assert by_type(running) == {"Ready": ("False", "Inspect"), "Reconciling": ("True", "Inspect")}
    stuck = waiting(running, "SourceNotFound", "no ConfigMap", 1, now=T0)
    assert by_type(stuck)["Stalled"] == ("True", "SourceNotFound")
    assert "Reconciling" not in by_type(stuck)  # the abnormal-true pair is there only while True
    done = succeeded(stuck, "runs", 1, now=T0)
    assert by_type(done) == {"Ready": ("True", "Succeeded")}
    broken = failed(running, ImportFailure.InvalidDescriptor, "bad", 1, now=T0)
    assert by_type(broken) == {"Ready": ("False", "InvalidDescriptor"), "Stalled": ("True", "InvalidDescriptor")}


def test_shared_testdata_is_there() -> None:
    assert Path(shared_dir(), "testdata", "ovf", "vmware.ovf").is_file()


def test_an_import_creates_its_vm_in_its_own_namespace_only() -> None:
    assert steps_mod.target_namespace_refusal({"target": {"name": "vm"}}, "team-a") is None
    assert steps_mod.target_namespace_refusal({"target": {"name": "vm", "namespace": "team-a"}}, "team-a") is None
    refusal = steps_mod.target_namespace_refusal({"target": {"name": "vm", "namespace": "kube-system"}}, "team-a")
    assert refusal is not None and refusal.reason is steps_mod.ImportFailure.TargetNamespaceNotAllowed
    assert "kube-system" in refusal.message and "team-a" in refusal.message
