"""Manifests for the API tests: the samples, valid bases, and the table of invalid manifests.

Pure data and small helpers, no I/O beyond reading manifests/samples. The same table drives the
end-to-end test (the real kube-apiserver must reject each case, naming the field) and the unit
test (the pydantic models must reject each case too, where the rule is not a transition rule).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmshift.api.common import Resource
from vmshift.api.crdgen import KINDS

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"
#: The namespace invalid namespaced manifests are sent to.
NAMESPACE = "vmshift-invalid"

MODELS: dict[str, type[Resource]] = {k.__name__: k for k in KINDS}


def sample_files() -> list[Path]:
    """The files the samples' kustomization lists, in its order."""
    kustomization = yaml.safe_load((SAMPLES / "kustomization.yaml").read_text())
    return [SAMPLES / name for name in kustomization["resources"]]


def sample_objects() -> list[dict[str, Any]]:
    """Every vmshift object in the samples."""
    return [
        doc
        for path in sample_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("apiVersion", "").startswith("vmshift.io/")
    ]


# --- building manifests -----------------------------------------------------------------------------

DELETE = object()
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with values set at paths like ``spec.disks[0].local``; DELETE removes."""
    result = copy.deepcopy(base)
    for path, value in changes.items():
        steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
        node: Any = result
        for step in steps[:-1]:
            if isinstance(step, str) and step not in node:
                node[step] = {}
            node = node[step]
        last = steps[-1]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return result


HOST: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "Host",
    "metadata": {"name": "h-valid"},
    "spec": {
        "cpu": {"model": "icelake", "cores": 16},
        "memoryMiB": 65536,
        "storage": {"sharedVolumes": ["csv-01"], "passthroughLuns": ["lun-1"]},
        "agent": {"endpoint": "http://127.0.0.1:9000",
                  "tokenSecretRef": {"name": "agent-token", "namespace": "vmshift-system"}},
    },
}
VM: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "VirtualMachine",
    "metadata": {"name": "vm-valid", "namespace": NAMESPACE},
    "spec": {
        "cpus": 2,
        "memoryMiB": 4096,
        "disks": [{"name": "os", "sizeGiB": 20, "volume": "csv-01"}],
        "workload": {"dirtyRateMiBps": 10, "workingSetMiB": 512},
    },
}
MIGRATION: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "VirtualMachineMigration",
    "metadata": {"name": "mig-valid", "namespace": NAMESPACE},
    "spec": {"vmName": "vm-valid", "targetHost": "h-valid", "mode": "Live"},
}
MIGRATION_POLICY: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "MigrationPolicy",
    "metadata": {"name": "mp-valid"},
    "spec": {"ladder": ["PreCopy", "AutoConverge", "Quick"], "allowQuick": True},
}
MIGRATION_POLICY_POSTCOPY: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "MigrationPolicy",
    "metadata": {"name": "mp-postcopy"},
    "spec": {"ladder": ["PreCopy", "AutoConverge", "PostCopy"]},
}
REMEDIATION_POLICY: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "RemediationPolicy",
    "metadata": {"name": "rp-valid"},
    "spec": {"match": {"alertname": "FanFailure"}, "action": "Quarantine"},
}
IMPORT_OVF: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "VirtualMachineImport",
    "metadata": {"name": "imp-ovf-valid", "namespace": NAMESPACE},
    "spec": {
        "source": {"ovf": {"configMapRef": {"name": "app-ovf", "key": "app.ovf"}}},
        "target": {"name": "app", "volume": "csv-01"},
    },
}
IMPORT_PHYSICAL: dict[str, Any] = {
    "apiVersion": "vmshift.io/v1alpha1",
    "kind": "VirtualMachineImport",
    "metadata": {"name": "imp-p2v-valid", "namespace": NAMESPACE},
    "spec": {
        "source": {"physical": {
            "hostname": "fs01", "cpus": {"sockets": 1, "cores": 4}, "memoryMiB": 8192, "os": "Ubuntu 22.04",
            "disks": [{"name": "sda", "sizeGiB": 100, "bus": "SATA"}],
            "nics": [{"name": "eth0", "macAddress": "00:11:22:33:44:55", "speedMbps": 1000, "driver": "e1000e"}],
        }},
        "target": {"name": "fs01", "volume": "csv-01"},
    },
}
VALID = [HOST, VM, MIGRATION, MIGRATION_POLICY, REMEDIATION_POLICY, IMPORT_OVF, IMPORT_PHYSICAL,
         MIGRATION_POLICY_POSTCOPY]


@dataclass(frozen=True)
class Invalid:
    """A manifest the API server must refuse, and the field path its error must name."""

    id: str
    manifest: dict[str, Any]
    field: str
    #: A valid manifest applied first: the case is an update (transition rules).
    before: dict[str, Any] | None = None
    #: Whether the pydantic models reject it too (transition and uniqueness rules are server-only).
    python: bool = True
    #: A piece of the error message, for CEL rules: proves the intended rule fired.
    message: str | None = None

    def named(self) -> dict[str, Any]:
        """The manifest, renamed after the case so that cases never meet."""
        return changed(self.manifest, **{"metadata.name": self.id})

    def before_named(self) -> dict[str, Any] | None:
        return None if self.before is None else changed(self.before, **{"metadata.name": self.id})


INVALID: list[Invalid] = [
    # Host
    Invalid("host-no-cpu", changed(HOST, **{"spec.cpu": DELETE}), "spec.cpu"),
    Invalid("host-unknown-cpu-model", changed(HOST, **{"spec.cpu.model": "pentium4"}), "spec.cpu.model"),
    Invalid("host-zero-cores", changed(HOST, **{"spec.cpu.cores": 0}), "spec.cpu.cores"),
    Invalid("host-cores-not-a-number", changed(HOST, **{"spec.cpu.cores": "many"}), "spec.cpu.cores"),
    Invalid("host-zero-memory", changed(HOST, **{"spec.memoryMiB": 0}), "spec.memoryMiB"),
    Invalid("host-zero-concurrent-migrations", changed(HOST, **{"spec.maxConcurrentMigrations": 0}),
            "spec.maxConcurrentMigrations"),
    Invalid("host-agent-endpoint-not-http", changed(HOST, **{"spec.agent.endpoint": "ftp://agent"}),
            "spec.agent.endpoint"),
    Invalid("host-token-ref-without-namespace",
            changed(HOST, **{"spec.agent.tokenSecretRef.namespace": DELETE}), "spec.agent.tokenSecretRef.namespace"),
    Invalid("host-duplicate-shared-volume", changed(HOST, **{"spec.storage.sharedVolumes": ["csv-01", "csv-01"]}),
            "spec.storage.sharedVolumes[1]", python=False),
    Invalid("host-unknown-field", changed(HOST, **{"spec.cpus": 8}), "spec.cpus"),
    Invalid("host-bandwidth-negative", changed(HOST, **{"spec.migrationBandwidthMbps": -1}),
            "spec.migrationBandwidthMbps"),
    # VirtualMachine
    Invalid("vm-no-memory", changed(VM, **{"spec.memoryMiB": DELETE}), "spec.memoryMiB"),
    Invalid("vm-zero-cpus", changed(VM, **{"spec.cpus": 0}), "spec.cpus"),
    Invalid("vm-too-many-cpus", changed(VM, **{"spec.cpus": 241}), "spec.cpus"),
    Invalid("vm-disk-two-backings", changed(VM, **{"spec.disks[0].passthroughLun": "lun-1"}),
            "spec.disks[0]", message="needs exactly one of volume"),
    Invalid("vm-disk-volume-and-local", changed(VM, **{"spec.disks[0].local": True}),
            "spec.disks[0]", message="needs exactly one of volume"),
    Invalid("vm-disk-no-backing", changed(VM, **{"spec.disks[0].volume": DELETE}),
            "spec.disks[0]", message="needs exactly one of volume"),
    Invalid("vm-disk-local-false-only",
            changed(VM, **{"spec.disks[0].volume": DELETE, "spec.disks[0].local": False}),
            "spec.disks[0]", message="needs exactly one of volume"),
    Invalid("vm-disk-zero-size", changed(VM, **{"spec.disks[0].sizeGiB": 0}), "spec.disks[0].sizeGiB"),
    Invalid("vm-disk-name-not-dns", changed(VM, **{"spec.disks[0].name": "OS Disk"}), "spec.disks[0].name"),
    Invalid("vm-duplicate-disk-names",
            changed(VM, **{"spec.disks": [{"name": "os", "sizeGiB": 1, "volume": "csv-01"},
                                          {"name": "os", "sizeGiB": 2, "volume": "csv-01"}]}),
            "spec.disks[1]", python=False),
    Invalid("vm-working-set-exceeds-memory", changed(VM, **{"spec.workload.workingSetMiB": 8192}),
            "spec.workload.workingSetMiB", message="must not exceed memoryMiB"),
    Invalid("vm-negative-dirty-rate", changed(VM, **{"spec.workload.dirtyRateMiBps": -5}),
            "spec.workload.dirtyRateMiBps"),
    Invalid("vm-unknown-migration-mode", changed(VM, **{"spec.migration.mode": "Teleport"}), "spec.migration.mode"),
    Invalid("vm-negative-priority", changed(VM, **{"spec.priority": -1}), "spec.priority"),
    Invalid("vm-placement-host-not-dns", changed(VM, **{"spec.placement.host": "Host_1"}), "spec.placement.host"),
    Invalid("vm-selector-in-without-values",
            changed(VM, **{"spec.placement.hostSelector": {"matchExpressions": [{"key": "zone", "operator": "In"}]}}),
            "spec.placement.hostSelector.matchExpressions[0].values", message="values must be non-empty"),
    # VirtualMachineMigration
    Invalid("mig-no-vm-name", changed(MIGRATION, **{"spec.vmName": DELETE}), "spec.vmName"),
    Invalid("mig-unknown-mode", changed(MIGRATION, **{"spec.mode": "Cold"}), "spec.mode"),
    Invalid("mig-zero-timeout", changed(MIGRATION, **{"spec.timeoutSeconds": 0}), "spec.timeoutSeconds"),
    Invalid("mig-vm-name-changed", changed(MIGRATION, **{"spec.vmName": "other-vm"}), "spec.vmName",
            before=MIGRATION, python=False, message="vmName is immutable"),
    Invalid("mig-target-changed", changed(MIGRATION, **{"spec.targetHost": "h-other"}), "spec.targetHost",
            before=MIGRATION, python=False, message="targetHost is immutable"),
    Invalid("mig-target-removed", changed(MIGRATION, **{"spec.targetHost": DELETE}), "spec.targetHost",
            before=MIGRATION, python=False, message="targetHost is immutable"),
    Invalid("mig-mode-changed", changed(MIGRATION, **{"spec.mode": "Quick"}), "spec.mode",
            before=MIGRATION, python=False, message="mode is immutable"),
    # MigrationPolicy
    Invalid("mp-ladder-duplicate", changed(MIGRATION_POLICY, **{"spec.ladder": ["PreCopy", "PreCopy"]}),
            "spec.ladder", message="must not name a strategy twice"),
    Invalid("mp-ladder-empty", changed(MIGRATION_POLICY, **{"spec.ladder": []}), "spec.ladder"),
    Invalid("mp-ladder-unknown", changed(MIGRATION_POLICY, **{"spec.ladder": ["StopAndCopy"]}), "spec.ladder[0]"),
    Invalid("mp-postcopy-not-last",
            changed(MIGRATION_POLICY, **{"spec.ladder": ["PreCopy", "PostCopy", "AutoConverge"],
                                          "spec.allowQuick": False}),
            "spec.ladder", message="PostCopy always finishes"),
    Invalid("mp-postcopy-and-quick", changed(MIGRATION_POLICY, **{"spec.ladder": ["PreCopy", "PostCopy", "Quick"]}),
            "spec.ladder", message="PostCopy always finishes"),
    Invalid("mp-quick-not-last",
            changed(MIGRATION_POLICY, **{"spec.ladder": ["Quick", "PreCopy"]}),
            "spec.ladder", message="only be the last rung"),
    Invalid("mp-quick-not-allowed", changed(MIGRATION_POLICY, **{"spec.allowQuick": False}),
            "spec.allowQuick", message="allowQuick is false"),
    Invalid("mp-outbound-exceeds-cluster",
            changed(MIGRATION_POLICY, **{"spec.parallelMigrationsPerCluster": 2,
                                          "spec.parallelOutboundMigrationsPerHost": 4}),
            "spec.parallelOutboundMigrationsPerHost", message="must not exceed parallelMigrationsPerCluster"),
    Invalid("mp-threshold-exceeds-downtime",
            changed(MIGRATION_POLICY, **{"spec.switchoverThresholdMs": 500, "spec.maxDowntimeMs": 100}),
            "spec.switchoverThresholdMs", message="must not exceed maxDowntimeMs"),
    Invalid("mp-stall-exceeds-rounds",
            changed(MIGRATION_POLICY, **{"spec.stallRounds": 10, "spec.maxRounds": 5}),
            "spec.stallRounds", message="must not exceed maxRounds"),
    Invalid("mp-autoconverge-initial-over-max",
            changed(MIGRATION_POLICY, **{"spec.autoConverge": {"initialPercent": 60, "maxPercent": 50}}),
            "spec.autoConverge.initialPercent", message="must not exceed maxPercent"),
    Invalid("mp-namespaces-and-selector",
            changed(MIGRATION_POLICY, **{"spec.selector": {"namespaces": ["a"],
                                                           "namespaceSelector": {"matchLabels": {"x": "y"}}}}),
            "spec.selector.namespaceSelector", message="not both"),
    # RemediationPolicy
    Invalid("rp-empty-match", changed(REMEDIATION_POLICY, **{"spec.match": {}}),
            "spec.match", message="at least one of alertname"),
    Invalid("rp-unknown-action", changed(REMEDIATION_POLICY, **{"spec.action": "Reboot"}), "spec.action"),
    Invalid("rp-evacuate-without-threshold", changed(REMEDIATION_POLICY, **{"spec.action": "EvacuateCritical"}),
            "spec.priorityThreshold", message="required when action is EvacuateCritical"),
    Invalid("rp-correlation-one-signal",
            changed(REMEDIATION_POLICY, **{"spec.correlation": {"signals": ["FanFailure"]}}),
            "spec.correlation.signals", message="at least two signals"),
    Invalid("rp-correlation-duplicate-signal",
            changed(REMEDIATION_POLICY, **{"spec.correlation": {"signals": ["Fan", "Fan"]}}),
            "spec.correlation.signals[1]"),
    Invalid("rp-unknown-release-mode", changed(REMEDIATION_POLICY, **{"spec.release": {"mode": "Never"}}),
            "spec.release.mode"),
    Invalid("rp-negative-debounce", changed(REMEDIATION_POLICY, **{"spec.debounceSeconds": -1}),
            "spec.debounceSeconds"),
    # VirtualMachineImport
    Invalid("imp-both-sources",
            changed(IMPORT_OVF, **{"spec.source.physical": IMPORT_PHYSICAL["spec"]["source"]["physical"]}),
            "spec.source", message="exactly one of ovf or physical"),
    Invalid("imp-no-source", changed(IMPORT_OVF, **{"spec.source": {}}),
            "spec.source", message="exactly one of ovf or physical"),
    Invalid("imp-ovf-inline-and-configmap", changed(IMPORT_OVF, **{"spec.source.ovf.inline": "<Envelope/>"}),
            "spec.source.ovf", message="exactly one of inline or configMapRef"),
    Invalid("imp-ovf-neither", changed(IMPORT_OVF, **{"spec.source.ovf": {"configuration": "large"}}),
            "spec.source.ovf", message="exactly one of inline or configMapRef"),
    Invalid("imp-configmap-without-key", changed(IMPORT_OVF, **{"spec.source.ovf.configMapRef.key": DELETE}),
            "spec.source.ovf.configMapRef.key"),
    Invalid("imp-bad-mac",
            changed(IMPORT_PHYSICAL, **{"spec.source.physical.nics[0].macAddress": "00:11:22:33:44"}),
            "spec.source.physical.nics[0].macAddress"),
    Invalid("imp-unknown-bus", changed(IMPORT_PHYSICAL, **{"spec.source.physical.disks[0].bus": "Floppy"}),
            "spec.source.physical.disks[0].bus"),
    Invalid("imp-no-target-volume", changed(IMPORT_PHYSICAL, **{"spec.target.volume": DELETE}),
            "spec.target.volume"),
    Invalid("imp-spec-changed", changed(IMPORT_PHYSICAL, **{"spec.target.priority": 5}), "spec",
            before=IMPORT_PHYSICAL, python=False, message="spec is immutable"),
]
