"""Argo CD's health scripts and Flux's kstatus rules on real objects of the e2e fleet.

The objects are read back from the real API server after the operator has written their status.
With ``VMSHIFT_CAPTURE_DIR`` set, they are also saved there (that is how
``tests/ops/testdata/captured/`` was made, which the unit tests judge without a cluster).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import HOSTS, Fleet
from tests.kube import wait_for
from tests.ops.argocd import health
from tests.ops.kstatus import kstatus

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("managedFields", "uid", "resourceVersion")}
    return {**obj, "metadata": meta}


def _save(name: str, obj: dict[str, Any]) -> None:
    directory = os.environ.get("VMSHIFT_CAPTURE_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{name}.json").write_text(json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def _judge(name: str, obj: dict[str, Any], argo: str, flux: str) -> None:
    _save(name, obj)
    got = health(obj)
    assert got["status"] == argo, f"{name}: Argo CD says {got}, expected {argo}; status {obj.get('status')}"
    state, why = kstatus(obj)
    assert state == flux, f"{name}: kstatus says {state} ({why}), expected {flux}; status {obj.get('status')}"


def test_the_fleets_real_objects_are_healthy_and_current_and_failures_degraded(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(
        {"apiVersion": "vmshift.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": "gitops-health"},
         "spec": {"precedence": 7, "selector": {"namespaces": [ns]}, "maxDowntimeMs": 300}},
        {"apiVersion": "vmshift.io/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "gitops-health"},
         "spec": {"match": {"alertname": "GitopsHealthNever"}, "action": "Quarantine"}},
    )
    fleet.running_vm(ns, "running", host="h-icelake-1", compatibility=True, dirty=5)
    fleet.apply(fleet.vm(ns, "unplaceable", placement={"hostSelector": {"matchLabels": {"rack": "nowhere"}}}))
    fleet.apply(fleet.migration(ns, "moved", "running", "h-icelake-2"))
    fleet.apply(fleet.migration(ns, "refused", "running", "h-no-such-host"))
    assert fleet.wait_phase("vsmig", "moved", ns, FINISHED, timeout=120)["phase"] == "Succeeded"
    assert fleet.wait_phase("vsmig", "refused", ns, FINISHED, timeout=120)["phase"] == "Failed"

    def stalled() -> dict[str, Any] | None:
        vm = fleet.get("vsvm", "unplaceable", ns)
        conditions = {c["type"]: c["status"] for c in (vm.get("status") or {}).get("conditions") or []}
        return vm if conditions.get("Stalled") == "True" else None
    unplaceable = wait_for(stalled, "VM unplaceable to be Stalled (no host matches its selector)", 60,
                           describe=lambda: json.dumps(fleet.status("vsvm", "unplaceable", ns)))

    def policy_ready() -> dict[str, Any] | None:
        policy = fleet.get("remediationpolicy", "gitops-health")
        return policy if (policy.get("status") or {}).get("conditions") else None
    remediation = wait_for(policy_ready, "RemediationPolicy gitops-health to get a status", 60)

    for plan in HOSTS:
        _judge(f"host-{plan.name}", fleet.get("host", plan.name), "Healthy", "Current")
    _judge("vm-running", fleet.get("vsvm", "running", ns), "Healthy", "Current")
    _judge("vm-unplaceable", unplaceable, "Degraded", "Failed")
    _judge("migration-succeeded", fleet.get("vsmig", "moved", ns), "Healthy", "Current")
    _judge("migration-failed", fleet.get("vsmig", "refused", ns), "Degraded", "Failed")
    _judge("remediationpolicy", remediation, "Healthy", "Current")
    _judge("migrationpolicy", fleet.get("migrationpolicy", "gitops-health"), "Healthy", "Current")
    fleet.kube.kubectl("delete", "migrationpolicy,remediationpolicy", "gitops-health", "--wait=false")
