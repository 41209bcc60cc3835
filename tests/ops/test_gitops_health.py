"""Argo CD's health scripts (run in Lua 5.1, as Argo CD runs them) and Flux's kstatus rules on the
objects captured from the end-to-end fleet (tests/ops/testdata/captured, written by
tests/e2e/test_gitops_health.py), and on the statuses the operator's own status builders write for
the states that one run does not catch (a drain under way, a host cut off, a migration moving).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.argocd import REPO, health, scripts
from tests.ops.kstatus import kstatus
from vmshift.api.reasons import MigrationPhase
from vmshift.controllers import importsteps
from vmshift.controllers.hosts import HostInputs, host_status
from vmshift.controllers.migration_decisions import migration_conditions
from vmshift.gitops import KINDS, health_key

CAPTURED = Path(__file__).parent / "testdata" / "captured"

#: file -> (Argo CD health, kstatus)
EXPECTED = {
    "host-h-icelake-1": ("Healthy", "Current"),
    "host-h-icelake-2": ("Healthy", "Current"),
    "host-h-haswell": ("Healthy", "Current"),
    "host-h-zen3": ("Healthy", "Current"),
    "host-h-small": ("Healthy", "Current"),
    "host-h-slow": ("Healthy", "Current"),
    "host-h-cordoned": ("Healthy", "Current"),
    "vm-running": ("Healthy", "Current"),
    "vm-unplaceable": ("Degraded", "Failed"),
    "migration-succeeded": ("Healthy", "Current"),
    "migration-failed": ("Degraded", "Failed"),
    "remediationpolicy": ("Healthy", "Current"),
    "migrationpolicy": ("Healthy", "Current"),
}


def captured(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((CAPTURED / f"{name}.json").read_text())
    return obj


def test_every_captured_object_has_an_expectation() -> None:
    assert {p.stem for p in CAPTURED.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_objects(name: str) -> None:
    obj = captured(name)
    argo, flux = EXPECTED[name]
    got = health(obj)
    assert got["status"] == argo, f"{name}: {got}"
    assert got["message"], f"{name}: Argo CD would show no message"
    assert kstatus(obj)[0] == flux, f"{name}: {kstatus(obj)}"


def test_a_degraded_message_says_what_a_person_must_do() -> None:
    got = health(captured("migration-failed"))
    stalled = next(c for c in captured("migration-failed")["status"]["conditions"] if c["type"] == "Stalled")
    assert got["message"] == f"Failed. {stalled['reason']}: {stalled['message']}"


def test_a_spec_change_the_operator_has_not_seen_is_progressing() -> None:
    obj = captured("vm-running")
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    assert health(obj)["status"] == "Progressing"
    assert kstatus(obj)[0] == "InProgress"


def test_an_object_without_status_yet_is_progressing_except_a_migration_policy() -> None:
    for name in ("vm-running", "migration-succeeded", "host-h-haswell", "remediationpolicy"):
        obj = captured(name)
        del obj["status"]
        assert health(obj)["status"] == "Progressing", name
    assert health(captured("migrationpolicy"))["status"] == "Healthy"


def test_an_object_being_deleted_is_progressing() -> None:
    obj = captured("vm-running")
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert health(obj)["status"] == "Progressing"
    assert kstatus(obj)[0] == "Terminating"


def _host(previous: dict[str, Any], spec_change: dict[str, Any]) -> dict[str, Any]:
    """The captured Host as the operator writes it once its agent is lost (no AgentLink)."""
    obj = captured("host-h-icelake-1")
    spec = {**obj["spec"], **spec_change}
    obj["status"] = host_status(obj["metadata"]["name"], HostInputs.of(spec, obj["metadata"]["generation"]),
                                {**obj["status"], **previous}, None, None)
    return obj


def test_a_host_whose_agent_is_cut_off_is_degraded_and_in_progress() -> None:
    """Ready=False without Stalled: Argo CD shows it Degraded at once; for kstatus the operator is
    still trying (it polls the agent), so Flux waits and reports the Ready message at its timeout."""
    obj = _host({}, {})
    assert obj["status"]["phase"] == "Unreachable"
    assert health(obj)["status"] == "Degraded" and kstatus(obj)[0] == "InProgress"


def test_a_migration_under_way_is_progressing_and_in_progress() -> None:
    obj = captured("migration-succeeded")
    obj["status"]["phase"] = "Transferring"
    obj["status"]["conditions"] = migration_conditions(
        {}, MigrationPhase.Transferring, "Transferring", "Round 2: 120 MiB sent.", obj["metadata"]["generation"])
    assert health(obj)["status"] == "Progressing" and kstatus(obj)[0] == "InProgress"


def test_the_configmap_holds_one_script_for_every_kind_and_nothing_else() -> None:
    data = scripts()
    assert set(data) == {health_key(k) for k in KINDS}
    lua = (REPO / "manifests" / "gitops" / "argocd" / "health.lua").read_text()
    assert all(script == lua for script in data.values())


def test_the_flux_example_waits_for_the_operator_and_the_fleet() -> None:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "gitops" / "flux" / "kustomization.yaml").read_text()))
    kustomizations = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Kustomization"}
    operator, fleet = kustomizations["vmshift"], kustomizations["vmshift-fleet"]
    assert operator["spec"]["path"] == "./manifests/install/default" and operator["spec"]["wait"] is True
    assert fleet["spec"]["dependsOn"] == [{"name": "vmshift"}]
    checked = {(h["kind"], h["name"]) for h in fleet["spec"]["healthChecks"]}
    samples = [d for p in sorted((REPO / "manifests" / "samples").glob("*.yaml")) if p.name != "kustomization.yaml"
               for d in yaml.safe_load_all(p.read_text()) if d]
    hosts = {("Host", d["metadata"]["name"]) for d in samples if d["kind"] == "Host"}
    assert hosts and hosts <= checked, f"the Flux example does not wait for {sorted(hosts - checked)}"
    assert all(h["apiVersion"] == "vmshift.io/v1alpha1" for h in fleet["spec"]["healthChecks"])


def _import(status: dict[str, Any]) -> dict[str, Any]:
    """The sample VirtualMachineImport of manifests/samples with ``status`` as the operator writes it."""
    docs = yaml.safe_load_all((REPO / "manifests" / "samples" / "import-ovf.yaml").read_text())
    obj: dict[str, Any] = next(d for d in docs if d and d["kind"] == "VirtualMachineImport")
    obj["metadata"]["generation"] = 1
    obj["status"] = {"observedGeneration": 1, **status}
    return obj


@pytest.mark.parametrize(("phase", "conditions", "argo", "flux"), [
    ("Running", importsteps.progressing([], "Converting", "Converting disk 1 of 2.", 1), "Progressing", "InProgress"),
    ("Failed", importsteps.failed([], importsteps.ImportFailure.InvalidDescriptor, "The OVF names no disk.", 1),
     "Degraded", "Failed"),
    ("Succeeded", importsteps.succeeded([], "crm-app runs as VirtualMachine crm-app.", 1), "Healthy", "Current"),
])
def test_an_import_as_the_operator_writes_it(phase: str, conditions: list[dict[str, Any]], argo: str,
                                            flux: str) -> None:
    obj = _import({"phase": phase, "conditions": conditions})
    assert health(obj)["status"] == argo
    assert kstatus(obj)[0] == flux
