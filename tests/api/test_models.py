"""The API models: defaults, limits, the Python twins of the CEL rules, and the samples."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.api.manifests import INVALID, MODELS, VALID, Invalid, changed, sample_objects
from vmshift.api import conditions as cond
from vmshift.api.common import LabelSelector, LabelSelectorRequirement, SelectorOperator
from vmshift.api.host import Host, HostStatus
from vmshift.api.migration import VirtualMachineMigration
from vmshift.api.migrationpolicy import MigrationPolicy, MigrationPolicySpec, MigrationStrategy
from vmshift.api.reasons import MigrationMode
from vmshift.api.remediationpolicy import ReleaseMode, RemediationPolicySpec
from vmshift.api.virtualmachine import VirtualMachine, VirtualMachineDisk
from vmshift.api.vmimport import VirtualMachineImport


def _parse(manifest: dict[str, Any]) -> Any:
    return MODELS[manifest["kind"]].model_validate(manifest)


@pytest.mark.parametrize("manifest", sample_objects(), ids=lambda m: f"{m['kind']}/{m['metadata']['name']}")
def test_every_sample_parses(manifest: dict[str, Any]) -> None:
    _parse(manifest)


@pytest.mark.parametrize("manifest", VALID, ids=lambda m: m["metadata"]["name"])
def test_valid_bases_parse(manifest: dict[str, Any]) -> None:
    _parse(manifest)


@pytest.mark.parametrize("case", [c for c in INVALID if c.python], ids=lambda c: c.id)
def test_models_refuse_what_the_api_server_refuses(case: Invalid) -> None:
    with pytest.raises(ValidationError) as error:
        _parse(case.named())
    if case.message:
        assert case.message in str(error.value)


def test_host_defaults_follow_hyper_v() -> None:
    host = Host.model_validate({"metadata": {"name": "h"}, "spec": {"cpu": {"model": "zen3", "cores": 8},
                                                                    "memoryMiB": 1024}})
    assert host.spec.maxConcurrentMigrations == 2
    assert host.spec.migrationBandwidthMbps == 10000
    assert not host.spec.unschedulable and not host.spec.maintenance
    assert host.spec.storage.sharedVolumes == []
    assert host.kind == "Host" and host.apiVersion == "vmshift.io/v1alpha1"


def test_unknown_cpu_model_is_refused_with_examples() -> None:
    with pytest.raises(ValidationError, match="expected an x86-64 microarchitecture known to archspec"):
        Host.model_validate({"spec": {"cpu": {"model": "pentium4", "cores": 8}, "memoryMiB": 1024}})


def test_vm_defaults() -> None:
    vm = VirtualMachine.model_validate({"metadata": {"name": "v"}, "spec": {"cpus": 1, "memoryMiB": 512}})
    assert vm.spec.running is True
    assert vm.spec.processor.compatibility is False
    assert vm.spec.migration.mode is MigrationMode.Auto
    assert vm.spec.priority == 0 and vm.spec.workload.dirtyRateMiBps == 0


@pytest.mark.parametrize("disk", [
    {"name": "a", "sizeGiB": 1, "volume": "csv-01"},
    {"name": "a", "sizeGiB": 1, "passthroughLun": "lun-1"},
    {"name": "a", "sizeGiB": 1, "local": True},
    {"name": "a", "sizeGiB": 1, "volume": "csv-01", "local": False},
])
def test_a_disk_with_one_backing_is_accepted(disk: dict[str, Any]) -> None:
    VirtualMachineDisk.model_validate(disk)


def test_migration_policy_defaults_follow_hyper_v_qemu_and_kubevirt() -> None:
    spec = MigrationPolicySpec()
    assert spec.switchoverThresholdMs == 1
    assert spec.maxDowntimeMs == 300
    assert spec.ladder == [MigrationStrategy.PreCopy, MigrationStrategy.AutoConverge]
    assert spec.allowQuick is False
    assert (spec.parallelMigrationsPerCluster, spec.parallelOutboundMigrationsPerHost) == (5, 2)
    assert (spec.progressTimeoutSeconds, spec.completionTimeoutPerGiBSeconds) == (150, 150)
    assert MigrationPolicy.model_validate({"metadata": {"name": "p"}}).spec == spec


def test_remediation_policy_defaults() -> None:
    spec = RemediationPolicySpec.model_validate({"match": {"alertname": "X"}, "action": "Quarantine"})
    assert spec.match.hostLabel == "host"
    assert spec.release.mode is ReleaseMode.AlertResolved
    assert (spec.debounceSeconds, spec.cooldownSeconds) == (60, 600)


def test_to_api_leaves_out_unset_fields_and_writes_enums_as_words() -> None:
    vm = VirtualMachine.model_validate({"metadata": {"name": "v"}, "spec": {"cpus": 1, "memoryMiB": 512}})
    dumped = vm.spec.to_api()
    assert "host" not in dumped["placement"]
    assert dumped["migration"] == {"mode": "Auto"}


def test_an_object_as_the_api_server_returns_it_parses() -> None:
    status = HostStatus(
        phase="Ready", vms=3, observedGeneration=1,
        conditions=cond.first_look([], "looking", observed_generation=1),
    ).to_api()
    stored = {
        "apiVersion": "vmshift.io/v1alpha1", "kind": "Host",
        "metadata": {"name": "h-1", "uid": "u", "generation": 1, "resourceVersion": "7",
                     "creationTimestamp": "2025-01-01T00:00:00Z",
                     "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"cpu": {"model": "icelake", "cores": 8}, "memoryMiB": 1024, "maxConcurrentMigrations": 2},
        "status": status,
    }
    host = Host.model_validate(stored)
    assert host.metadata.generation == 1
    assert host.status is not None and cond.is_true(host.status.conditions, "Reconciling")
    assert host.status.to_api() == status


def test_migration_and_import_parse_from_the_bases() -> None:
    migration = VirtualMachineMigration.model_validate(VALID[2])
    assert migration.spec.mode is MigrationMode.Live
    imported = VirtualMachineImport.model_validate(VALID[6])
    assert imported.spec.source.physical is not None and imported.spec.source.ovf is None


def test_label_selector_semantics() -> None:
    selector = LabelSelector(
        matchLabels={"tier": "database"},
        matchExpressions=[
            LabelSelectorRequirement(key="zone", operator=SelectorOperator.In, values=["a", "b"]),
            LabelSelectorRequirement(key="legacy", operator=SelectorOperator.DoesNotExist),
        ],
    )
    assert selector.matches({"tier": "database", "zone": "a"})
    assert not selector.matches({"tier": "database", "zone": "c"})
    assert not selector.matches({"tier": "database", "zone": "a", "legacy": "yes"})
    assert not selector.matches({"zone": "a"})
    assert LabelSelector().matches({})
    assert LabelSelectorRequirement(key="x", operator=SelectorOperator.NotIn, values=["1"]).matches({})
    assert LabelSelectorRequirement(key="x", operator=SelectorOperator.Exists).matches({"x": ""})


def test_selector_requirement_values_follow_operator() -> None:
    with pytest.raises(ValidationError, match="values must be non-empty"):
        LabelSelectorRequirement(key="x", operator=SelectorOperator.In)
    with pytest.raises(ValidationError, match="values must be non-empty"):
        LabelSelectorRequirement(key="x", operator=SelectorOperator.Exists, values=["a"])


def test_changed_helper_sets_and_deletes_paths() -> None:
    base = {"spec": {"disks": [{"name": "a", "volume": "v"}]}}
    result = changed(base, **{"spec.disks[0].local": True, "spec.disks[0].volume": None})
    assert result["spec"]["disks"][0] == {"name": "a", "volume": None, "local": True}
    assert base == {"spec": {"disks": [{"name": "a", "volume": "v"}]}}
