"""VirtualMachineImport end to end: kubectl apply of an import on the real API server, the operator process
converting the guest on real agents, and the agents asked afterwards what the guest runs with."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.api.vmimport import ImportStepName
from vmshift.controllers.importsteps import EXECUTION_ORDER, IMPORT_UID_LABEL
from vmshift.hypervisor.protocol import DriverChange

pytestmark = pytest.mark.e2e

SHARED = Path(os.environ.get("VMSHIFT_SHARED") or Path(__file__).resolve().parents[2].parent / "shared")
OVF = SHARED / "testdata" / "ovf"
FINISHED = {"Succeeded", "Failed"}
CONVERTED = {"vmshift-agent", "vmbus", "netvsc", "storvsc"}


def _configmap(ns: str, name: str, key: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {key: text}}


def _import(ns: str, name: str, source: dict[str, Any], target: str, **target_extra: Any) -> dict[str, Any]:
    return {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineImport",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"source": source, "target": {"name": target, "volume": "csv-1", **target_extra}}}


def _follow(fleet: Fleet, ns: str, name: str, timeout: float = 240,
            on_status: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """Poll the import until it ends; return its last status and every (step, state) seen on the way."""
    seen: set[tuple[str, str]] = set()

    def check() -> dict[str, Any] | None:
        status = fleet.status("vsimp", name, ns)
        seen.update((s["name"], s["state"]) for s in status.get("steps") or [])
        if on_status is not None:
            on_status(status)
        return status if status.get("phase") in FINISHED else None

    status = wait_for(check, f"import {ns}/{name} to finish", timeout, interval=0.2,
                      describe=lambda: f"{json.dumps(fleet.status('vsimp', name, ns))[:3000]}\n"
                                       f"operator log:\n{fleet.stack.operator_log_tail(30)}")
    return status, seen


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def _assert_steps_ran_in_order(status: dict[str, Any]) -> None:
    steps = {s["name"]: s for s in status["steps"]}
    assert [s["name"] for s in status["steps"]] == [n.value for n in ImportStepName], "status lists the API's order"
    for step in steps.values():
        assert step["state"] in ("Succeeded", "Skipped"), step
        assert step["startedAt"] <= step["finishedAt"], step
    ran = [steps[n.value] for n in EXECUTION_ORDER]
    for earlier, later in itertools.pairwise(ran):
        assert earlier["finishedAt"] <= later["startedAt"], (earlier, later)


def _assert_converted(fleet: Fleet, ns: str, vm_name: str, status: dict[str, Any]) -> str:
    """The VM runs on exactly one host, with synthetic drivers only, and faster than before; its uid."""
    reference = status["virtualMachine"]
    assert reference["name"] == vm_name and reference["namespace"] == ns
    fleet.wait_phase("vsvm", vm_name, ns, {"Running"})
    vm = fleet.get("vsvm", vm_name, ns)
    uid = str(vm["metadata"]["uid"])
    assert reference["uid"] == uid
    copies = fleet.copies(uid)
    assert list(copies) == [vm["status"]["host"]], f"agents hold {list(copies)}, status says {vm['status']['host']}"
    guest = next(iter(copies.values()))
    assert guest.state.value == "Running"
    assert set(guest.drivers) == CONVERTED, f"the guest still has {guest.drivers}"
    before, after = status["throughputBefore"], status["throughputAfter"]
    assert after == {"networkMbps": guest.io_ceilings.network_mbps, "diskMBps": guest.io_ceilings.disk_mbps}
    assert after["networkMbps"] > before["networkMbps"] and after["diskMBps"] > before["diskMBps"], (before, after)
    return uid


def test_ovf_import_from_a_configmap_converts_the_guest_and_shows_each_step(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(_configmap(ns, "vmw-ovf", "vmware.ovf", (OVF / "vmware.ovf").read_text()),
                _import(ns, "vmw", {"ovf": {"configMapRef": {"name": "vmw-ovf", "key": "vmware.ovf"}}}, "vmw-app",
                        compatibility=True, priority=10))
    status, seen = _follow(fleet, ns, "vmw")
    assert status["phase"] == "Succeeded", status
    running = {step for step, state in seen if state == "Running"}
    assert running, f"no step was ever seen Running; seen {sorted(seen)}"
    _assert_steps_ran_in_order(status)
    conditions = _conditions(status)
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "Succeeded"
    assert "Reconciling" not in conditions and "Stalled" not in conditions  # there only while True
    fleet.kube.kubectl("wait", "--for=condition=Ready", "vsimp/vmw", "-n", ns, "--timeout=30s")

    uid = _assert_converted(fleet, ns, "vmw-app", status)
    assert status["throughputBefore"] == {"networkMbps": 1000, "diskMBps": 300}
    steps = {s["name"]: s for s in status["steps"]}
    assert "2 vCPU(s), 1536 MiB" in steps["Inspect"]["message"]
    assert "vmware-tools" in steps["CreateVirtualMachine"]["message"], "the guest arrived with the source's drivers"
    assert "removed" in steps["RemoveThirdPartyDrivers"]["message"]
    assert "vmware-tools" in steps["RemoveThirdPartyDrivers"]["message"]

    vm = fleet.get("vsvm", "vmw-app", ns)
    owners = vm["metadata"]["ownerReferences"]
    assert owners == [{"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineImport", "name": "vmw",
                       "uid": fleet.get("vsimp", "vmw", ns)["metadata"]["uid"], "controller": True,
                       "blockOwnerDeletion": True}]
    assert vm["spec"]["cpus"] == 2 and vm["spec"]["memoryMiB"] == 1536
    assert vm["spec"]["disks"] == [{"name": "hard-disk-1", "sizeGiB": 1, "volume": "csv-1"}]
    assert set(vm["metadata"]["annotations"]["vmshift.io/initial-drivers"].split(",")) == CONVERTED, \
        "the annotation follows the converted inventory, so a guest defined again comes back converted"
    events = fleet.kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=vmw").stdout
    assert "StepStarted" in events and "Succeeded" in events
    assert list(fleet.copies(uid)) == [vm["status"]["host"]]


def test_physical_import_removes_vendor_drivers_and_runs_on_synthetic_ones(fleet: Fleet) -> None:
    ns = fleet.namespace()
    physical = {
        "hostname": "fs01.corp.example.com", "manufacturer": "HP", "model": "ProLiant DL380 Gen9",
        "cpus": {"sockets": 1, "cores": 2, "threads": 1, "model": "Intel Xeon E5-2667 v3"},
        "memoryMiB": 4096,
        "disks": [{"name": "system", "sizeGiB": 40, "bus": "SAS"}, {"name": "usb-stick", "sizeGiB": 8, "bus": "USB"}],
        "nics": [{"name": "nic1", "macAddress": "3c:a8:2a:10:4f:01", "speedMbps": 1000, "driver": "e1000"},
                 {"name": "nic2", "macAddress": "3c:a8:2a:10:4f:02", "speedMbps": 10000, "driver": "bnx2x"}],
        "drivers": ["hpsa", "bnx2x", "e1000", "hp-ilo"],
        "os": "Windows Server 2016 Standard",
    }
    fleet.apply(_import(ns, "fs01", {"physical": physical}, "fileserver", memoryMiB=1024, compatibility=True))
    status, _ = _follow(fleet, ns, "fs01")
    assert status["phase"] == "Succeeded", status
    _assert_steps_ran_in_order(status)
    _assert_converted(fleet, ns, "fileserver", status)
    steps = {s["name"]: s for s in status["steps"]}
    for vendor in ("hpsa", "bnx2x", "hp-ilo"):
        assert vendor in steps["RemoveThirdPartyDrivers"]["message"]
    assert "e1000" in steps["InstallSyntheticDrivers"]["message"], "the emulated NIC driver goes with the swap"
    assert any("USB disk usb-stick" in w for w in status["warnings"]), status["warnings"]
    vm = fleet.get("vsvm", "fileserver", ns)
    assert vm["spec"]["memoryMiB"] == 1024 and vm["spec"]["cpus"] == 2
    assert [d["name"] for d in vm["spec"]["disks"]] == ["system"]


def test_invalid_descriptor_fails_with_the_reason_and_creates_nothing(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(_configmap(ns, "bad-ovf", "invalid.ovf", (OVF / "invalid.ovf").read_text()),
                _import(ns, "bad", {"ovf": {"configMapRef": {"name": "bad-ovf", "key": "invalid.ovf"}}}, "bad-vm"))
    status, _ = _follow(fleet, ns, "bad")
    assert status["phase"] == "Failed", status
    conditions = _conditions(status)
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "InvalidDescriptor"
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "InvalidDescriptor"
    assert "Reconciling" not in conditions
    message = status["message"]
    assert f"ConfigMap {ns}/bad-ovf key invalid.ovf" in message, message
    assert "line 10 (/Envelope/DiskSection/Disk[2])" in message and "flash2" in message, message
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["Inspect"]["state"] == "Failed" and "flash2" in steps["Inspect"]["message"]
    assert all(s["state"] == "Pending" for n, s in steps.items() if n != "Inspect"), steps
    assert not status.get("virtualMachine")
    assert fleet.kube.get_json("vsvm", "-n", ns)["items"] == []
    warnings = fleet.kube.kubectl("get", "events", "-n", ns, "--field-selector", "type=Warning").stdout
    assert "InvalidDescriptor" in warnings


def test_a_missing_configmap_stalls_the_import_until_it_appears(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(_import(ns, "later", {"ovf": {"configMapRef": {"name": "late-ovf", "key": "vm.ovf"}}}, "later-vm",
                        compatibility=True))

    def stalled() -> dict[str, Any] | None:
        status = fleet.status("vsimp", "later", ns)
        return status if _conditions(status).get("Stalled", {}).get("reason") == "SourceNotFound" else None

    status = wait_for(stalled, "the import to stall on the missing ConfigMap", 60,
                      describe=lambda: json.dumps(fleet.status("vsimp", "later", ns))[:2000])
    assert _conditions(status)["Stalled"]["status"] == "True" and status["phase"] == "Running"
    assert f"ConfigMap {ns}/late-ovf" in status["message"]
    fleet.apply(_configmap(ns, "late-ovf", "vm.ovf", (OVF / "vmware.ovf").read_text()))
    status, _ = _follow(fleet, ns, "later")
    assert status["phase"] == "Succeeded", status
    _assert_converted(fleet, ns, "later-vm", status)


def test_an_import_survives_an_operator_kill_without_a_second_vm(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(_import(ns, "crashy", {"ovf": {"inline": (OVF / "vmware.ovf").read_text()}}, "crashy-vm",
                        compatibility=True))

    def created() -> dict[str, Any] | None:
        status = fleet.status("vsimp", "crashy", ns)
        return status if (status.get("virtualMachine") or {}).get("uid") else None

    before = wait_for(created, "the import to create its VirtualMachine", 120,
                      describe=lambda: json.dumps(fleet.status("vsimp", "crashy", ns))[:2000])
    fleet.stack.stop_operator(kill=True)
    time.sleep(0.5)  # the fault: the operator is gone for a moment
    fleet.stack.start_operator("--keep-finished-migrations", "50")
    status, _ = _follow(fleet, ns, "crashy")
    assert status["phase"] == "Succeeded", status
    uid = _assert_converted(fleet, ns, "crashy-vm", status)
    assert uid == before["virtualMachine"]["uid"], "the restarted operator made another VirtualMachine"
    imported = fleet.kube.get_json("vsvm", "-n", ns, "-l", IMPORT_UID_LABEL)["items"]
    assert [v["metadata"]["name"] for v in imported] == ["crashy-vm"]


def test_a_taken_target_name_fails_and_leaves_the_existing_vm_alone(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "taken", compatibility=True)
    uid = fleet.uid(ns, "taken")
    fleet.apply(_import(ns, "clash", {"ovf": {"inline": (OVF / "vmware.ovf").read_text()}}, "taken"))
    status, _ = _follow(fleet, ns, "clash")
    assert status["phase"] == "Failed" and _conditions(status)["Ready"]["reason"] == "TargetExists", status
    assert fleet.uid(ns, "taken") == uid and fleet.status("vsvm", "taken", ns)["phase"] == "Running"
    assert len(fleet.copies(uid)) == 1


def test_an_unschedulable_vm_stalls_the_import_and_deleting_it_removes_the_vm(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(_import(ns, "stuck", {"ovf": {"inline": (OVF / "vmware.ovf").read_text()}}, "stuck-vm",
                        compatibility=True, placement={"host": "h-cordoned"}))

    def stalled() -> dict[str, Any] | None:
        status = fleet.status("vsimp", "stuck", ns)
        stall = _conditions(status).get("Stalled") or {}
        return status if stall.get("status") == "True" and status.get("virtualMachine") else None

    status = wait_for(stalled, "the import to stall on its unschedulable VirtualMachine", 120,
                      describe=lambda: json.dumps(fleet.status("vsimp", "stuck", ns))[:2500])
    assert status["phase"] == "Running"
    assert _conditions(status)["Stalled"]["reason"] == fleet.status("vsvm", "stuck-vm", ns)["reason"]
    assert "h-cordoned" in status["message"], status["message"]
    assert {s["name"]: s["state"] for s in status["steps"]}["CreateVirtualMachine"] == "Running"
    fleet.kube.kubectl("delete", "vsimp", "stuck", "-n", ns, "--wait=false")
    wait_for(lambda: not fleet.get("vsimp", "stuck", ns) and fleet.kube.get_json("vsvm", "-n", ns)["items"] == [],
             "the import and its VM to be gone", 60,
             describe=lambda: f"{json.dumps(fleet.get('vsimp', 'stuck', ns))[:1500]}\n"
                              f"{fleet.kube.kubectl('get', 'vsvm', '-n', ns, '-o', 'yaml').stdout[-1500:]}\n"
                              f"operator log:\n{fleet.stack.operator_log_tail(40)}")


def test_a_failure_after_the_vm_exists_deletes_it(fleet: Fleet) -> None:
    """Someone puts VMware Tools back into the guest behind the import's back: Verify fails, the VM goes."""
    ns = fleet.namespace()
    fleet.apply(_import(ns, "spoiled", {"ovf": {"inline": (OVF / "vmware.ovf").read_text()}}, "spoiled-vm",
                        compatibility=True))
    tampered: list[str] = []

    def tamper(status: dict[str, Any]) -> None:
        states = {s["name"]: s["state"] for s in status.get("steps") or []}
        if states.get("RemoveThirdPartyDrivers") not in ("Running", "Succeeded") or states.get("Verify") != "Pending":
            return
        uid = (status.get("virtualMachine") or {}).get("uid")
        for host, guest in fleet.copies(uid).items() if uid else ():
            if "vmware-tools" not in guest.drivers and "vmshift-agent" in guest.drivers:
                async def put_back(host: str = host) -> None:
                    async with fleet.stack.agents[host].client() as client:
                        await client.change_drivers(uid, DriverChange(install=["vmware-tools"]))
                asyncio.run(put_back())
                tampered.append(host)

    status, _ = _follow(fleet, ns, "spoiled", on_status=tamper)
    assert tampered, "the test never got to put VMware Tools back"
    assert status["phase"] == "Failed", status
    conditions = _conditions(status)
    assert conditions["Ready"]["reason"] == "VerificationFailed" and conditions["Stalled"]["status"] == "True"
    assert "vmware-tools" in status["message"] and "was deleted" in status["message"], status["message"]
    assert {s["name"]: s["state"] for s in status["steps"]}["Verify"] == "Failed"
    assert not status.get("virtualMachine")
    wait_for(lambda: fleet.kube.get_json("vsvm", "-n", ns)["items"] == [], "the half-made VM to be deleted", 90)


def test_an_import_into_another_namespace_is_refused(fleet: Fleet) -> None:
    """Whoever may create an import in one namespace must not get VMs made for them in another."""
    ns = fleet.namespace()
    other = fleet.namespace()  # exists: the refusal is about rights, not about the namespace missing
    fleet.apply(_import(ns, "away", {"ovf": {"inline": (OVF / "vmware.ovf").read_text()}}, "away-vm",
                        namespace=other, compatibility=True))
    status, _ = _follow(fleet, ns, "away")
    assert status["phase"] == "Failed", status
    conditions = _conditions(status)
    assert conditions["Ready"]["reason"] == "TargetNamespaceNotAllowed", conditions
    assert conditions["Stalled"]["status"] == "True"
    assert other in status["message"] and ns in status["message"], status["message"]
    assert not status.get("virtualMachine")
    assert fleet.kube.get_json("vsvm", "-n", other)["items"] == [], "a VM was created in the other namespace"
    events = fleet.kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=away",
                                "-o", "jsonpath={.items[*].reason}").stdout
    assert "TargetNamespaceNotAllowed" in events, events
