"""How a drain and a remediation read on the Host (phase, Draining, Reconciling, Stalled, Schedulable), and the
migration objects a drain creates."""

from __future__ import annotations

from typing import Any

from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.drains import ATTEMPT_ANNOTATION, EPISODE_LABEL, EVACUATION_LABEL, attempt_of, migration_body
from vmshift.controllers.hosts import HostInputs, host_status
from vmshift.controllers.views import MANAGED_BY, MANAGED_BY_LABEL, VMEntry
from vmshift.hypervisor.client import HypervisorClient
from vmshift.hypervisor.protocol import HostInfo
from vmshift.scheduling.evacuation import Create
from vmshift.scheduling.moves import Move

#: A valid Host spec (the model requires processor and memory).
HOST_SPEC = {"cpu": {"model": "icelake", "cores": 32}, "memoryMiB": 65536}


def link(*, healthy: bool = True) -> AgentLink:
    problems = [] if healthy else [{"signal": "Fan", "severity": "Warning", "message": "fan 1 has failed"}]
    info = HostInfo.model_validate({
        "name": "h1", "cpuModel": "icelake", "vendor": "Intel", "features": ["avx2"], "cores": 8, "memoryMiB": 8192,
        "migrationBandwidthMbps": 10000, "sharedVolumes": [], "passthroughLuns": [],
        "allocated": {"cpus": 0, "memoryMiB": 0}, "reserved": {"cpus": 0, "memoryMiB": 0}, "vms": 0,
        "sensors": {"fans": [{"index": 0, "ok": healthy}], "powerSupplies": [], "temperatureC": 30,
                    "correctedMemoryErrors": 0},
        "health": {"healthy": healthy, "problems": problems}, "bootId": "b", "migrationPort": 1,
    })
    return AgentLink(host="h1", endpoint="http://127.0.0.1:1", token="t", client=HypervisorClient("http://x", "t"),
                     info=info, reachable=True)


def status(spec: dict[str, Any], previous: dict[str, Any], *, healthy: bool = True) -> dict[str, Any]:
    return host_status("h1", HostInputs.of({**HOST_SPEC, **spec}, 3), previous, link(healthy=healthy), None)


def conditions(s: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in s["conditions"]}


RUNNING = {"state": "Running", "trigger": "spec.maintenance", "total": 4, "moved": 1, "inFlight": 2, "failed": 0}


def test_a_running_drain_reads_draining_and_reconciling() -> None:
    s = status({"maintenance": True}, {"drain": RUNNING})
    assert s["phase"] == "Draining"
    c = conditions(s)
    assert c["Draining"] == ("True", "Draining") and c["Reconciling"] == ("True", "Draining")
    assert "Stalled" not in c and c["Schedulable"] == ("False", "Cordoned")
    assert "1 of 4 VM(s) moved, 2 in flight" in next(x["message"] for x in s["conditions"] if x["type"] == "Draining")


def test_a_blocked_drain_stalls_and_names_the_vm() -> None:
    blocked = {**RUNNING, "state": "Blocked", "inFlight": 0,
               "blocked": [{"vm": "ns/db", "reason": "StorageNotShared", "message": "db has a local disk"}]}
    s = status({"maintenance": True}, {"drain": blocked})
    c = conditions(s)
    assert s["phase"] == "Draining" and c["Stalled"] == ("True", "DrainBlocked") and "Reconciling" not in c
    assert c["Draining"] == ("False", "DrainBlocked")
    assert "ns/db (StorageNotShared)" in next(x["message"] for x in s["conditions"] if x["type"] == "Stalled")


def test_a_completed_drain_is_maintenance_only_while_its_trigger_holds() -> None:
    done = {**RUNNING, "state": "Completed", "moved": 4, "inFlight": 0}
    assert status({"maintenance": True}, {"drain": done})["phase"] == "Maintenance"
    closed = {**done, "trigger": None}
    assert status({"maintenance": True}, {"drain": closed})["phase"] == "Draining"  # a new drain is about to open
    s = status({}, {"drain": closed})
    assert s["phase"] == "Ready" and conditions(s)["Draining"] == ("False", "NotDraining")


def test_remediation_quarantines_and_an_evacuation_reads_draining() -> None:
    remediation = {"policy": "fan", "action": "EvacuateCritical", "priorityThreshold": 100}
    evacuating = {**RUNNING, "trigger": "RemediationPolicy fan (EvacuateCritical)", "minPriority": 100}
    s = status({}, {"remediation": remediation, "drain": evacuating}, healthy=False)
    assert s["phase"] == "Draining"
    assert conditions(s)["HardwareHealthy"] == ("False", "FanFailure")
    done = {**evacuating, "state": "Completed", "inFlight": 0}
    s = status({}, {"remediation": remediation, "drain": done}, healthy=False)
    assert s["phase"] == "Degraded" and conditions(s)["Schedulable"] == ("False", "Cordoned")
    assert "RemediationPolicy fan (EvacuateCritical) quarantined it" in next(
        x["message"] for x in s["conditions"] if x["type"] == "Schedulable")
    s = status({}, {"remediation": {"policy": "m", "action": "Maintenance"}, "drain": {**done, "trigger": "m"}})
    assert s["phase"] == "Maintenance"
    s = status({}, {"drain": {**done, "trigger": None}, "lastRemediation": {"policy": "fan"}})
    assert s["phase"] == "Ready" and conditions(s)["Schedulable"][0] == "True"


def test_the_migration_a_drain_creates_is_labelled_owned_and_reads_back() -> None:
    vm = VMEntry("ns", "db", "uid-1", {}, VirtualMachineSpec(cpus=1, memoryMiB=256), "h1", Phase.Running, None, 1)
    move = Move("ns/db", "h1", "h2", MigrationMode.Live, order=0, priority=900, bandwidth_mbps=9000,
                failed_targets=("h3",))
    body = migration_body(Create(move, "db-evac-abc123-2", 2, 3), "h1", "abc123xyz0", "spec.maintenance", vm)
    meta = body["metadata"]
    assert meta["labels"] == {EVACUATION_LABEL: "h1", EPISODE_LABEL: "abc123xyz0", "vmshift.io/vm": "db",
                              MANAGED_BY_LABEL: MANAGED_BY}
    assert meta["annotations"][ATTEMPT_ANNOTATION] == "2"
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["kind"] == "VirtualMachine"
    assert body["spec"]["targetHost"] == "h2" and "after h3 failed" in body["spec"]["reason"]
    body["status"] = {"phase": "Failed", "targetHost": "h2", "failure": {"reason": "Timeout", "message": "slow"}}
    attempt = attempt_of(body)
    assert (attempt.vm, attempt.attempt, attempt.phase, attempt.target, attempt.episode) == (
        "ns/db", 2, MigrationPhase.Failed, "h2", "abc123xyz0")
    assert attempt.reason is not None and attempt.reason.value == "Timeout"
