"""The API as a person meets it through kubectl: samples apply, explain reads well, get shows columns.

End to end against the embedded control plane with crds/ installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.manifests import MODELS, SAMPLES, sample_files, sample_objects
from tests.kube import Kube
from vmshift.api import conditions as cond
from vmshift.api.host import Host, HostProcessor, HostStatus
from vmshift.api.migration import MigrationProgress, VirtualMachineMigrationStatus
from vmshift.api.reasons import MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase, VirtualMachineStatus

pytestmark = pytest.mark.e2e


def _where(obj: dict[str, Any]) -> list[str]:
    args = [f"{MODELS[obj['kind']].resource.plural}.vmshift.io", obj["metadata"]["name"]]
    if "namespace" in obj["metadata"]:
        args += ["-n", obj["metadata"]["namespace"]]
    return args


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        pairs = ((k, _compact(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v not in (None, [], {})}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _table(api: Kube, *args: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows of column → value (columns are split on runs of 2+ spaces)."""
    lines = api.kubectl("get", *args).stdout.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


@pytest.fixture(scope="module")
def samples(api: Kube) -> Kube:
    """The samples applied server-side, as GitOps tools apply them."""
    api.kubectl("apply", "--server-side", "-k", str(SAMPLES))
    return api


def test_samples_apply_server_side_with_kustomize(samples: Kube) -> None:
    proc = samples.kubectl("apply", "--server-side", "-k", str(SAMPLES))
    assert "serverside-applied" in proc.stdout


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.name)
def test_each_sample_file_applies_client_side(api: Kube, path: Path) -> None:
    api.kubectl("apply", "-f", str(SAMPLES / "namespace.yaml"))
    api.kubectl("apply", "-f", str(path))


@pytest.mark.parametrize("obj", sample_objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_server_defaults_match_the_models(samples: Kube, obj: dict[str, Any]) -> None:
    """What the API server stores (its defaults applied) is what the pydantic model makes of the sample."""
    stored = samples.get_json(*_where(obj))
    model = MODELS[obj["kind"]].model_validate(obj)
    assert _compact(stored["spec"]) == _compact(model.model_dump(mode="json")["spec"])


def test_explain_host_cpu_prints_the_descriptions(api: Kube) -> None:
    out = api.kubectl("explain", "host.spec.cpu").stdout
    assert "The host's processor: model and logical cores." in out
    assert "microarchitecture, as archspec names it" in " ".join(out.split())
    assert "Logical processors the host offers to guests" in " ".join(out.split())


def test_explain_reads_nested_status_fields(api: Kube) -> None:
    out = " ".join(api.kubectl("explain", "virtualmachinemigration.status.failure.reason").stdout.split())
    assert "IncompatibleProcessor" in out and "NotConverging" in out
    out = " ".join(api.kubectl("explain", "virtualmachine.spec.disks").stdout.split())
    assert "Exactly one of volume, passthroughLun and local" in out


def test_short_names_and_category_work(samples: Kube) -> None:
    assert "h-icelake-1" in samples.kubectl("get", "hv").stdout
    assert "web-1" in samples.kubectl("get", "vsvm", "-n", "vmshift-demo").stdout
    assert "web-1-to-cascadelake" in samples.kubectl("get", "vsmig", "-n", "vmshift-demo").stdout
    everything = samples.kubectl("get", "vmshift", "-A").stdout
    for name in ("h-zen3-1", "db-1", "databases", "fan-failure-quarantine", "fileserver-1"):
        assert name in everything


def _patch_status(api: Kube, where: list[str], status: dict[str, Any]) -> None:
    api.kubectl("patch", *where, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


def test_host_columns_show_status(samples: Kube) -> None:
    conditions = cond.ready(cond.first_look([], "checking the agent"), True, "AgentReady",
                            "the agent of h-icelake-1 answers", observed_generation=1)
    conditions = cond.reconciling(conditions, False, "Reconciled", "nothing to do", observed_generation=1)
    status = HostStatus(phase="Ready", vms=3, observedGeneration=1, conditions=conditions,
                        processor=HostProcessor(model="icelake", vendor="Intel", features=["avx512f", "sse4_2"]))
    _patch_status(samples, ["host", "h-icelake-1"], status.to_api())

    rows = {r["NAME"]: r for r in _table(samples, "hosts")}
    assert list(rows["h-icelake-1"]) == ["NAME", "PHASE", "CPU", "VENDOR", "VMS", "READY", "AGE"]
    row = rows["h-icelake-1"]
    assert (row["PHASE"], row["CPU"], row["VENDOR"], row["VMS"], row["READY"]) == ("Ready", "icelake", "Intel",
                                                                                   "3", "True")
    samples.kubectl("wait", "--for=condition=Ready", "host/h-icelake-1", "--timeout=10s")
    stored = Host.model_validate(samples.get_json("host", "h-icelake-1"))
    assert stored.status is not None and stored.status.conditions == conditions


def test_vm_columns_show_status(samples: Kube) -> None:
    status = VirtualMachineStatus(phase=VirtualMachinePhase.Running, host="h-icelake-1",
                                  conditions=cond.ready([], True, "Running", "web-1 runs on h-icelake-1"))
    _patch_status(samples, ["virtualmachine", "web-1", "-n", "vmshift-demo"], status.to_api())
    row = {r["NAME"]: r for r in _table(samples, "virtualmachines", "-n", "vmshift-demo")}["web-1"]
    assert list(row) == ["NAME", "PHASE", "HOST", "CPUS", "MEMORY", "READY", "AGE"]
    assert (row["PHASE"], row["HOST"], row["CPUS"], row["MEMORY"], row["READY"]) == (
        "Running", "h-icelake-1", "4", "8192", "True")


def test_migration_columns_show_progress(samples: Kube) -> None:
    status = VirtualMachineMigrationStatus(
        phase=MigrationPhase.Transferring, sourceHost="h-icelake-1", targetHost="h-cascadelake-1",
        progress=MigrationProgress(round=2, percent=42, remainingMiB=120.5), downtimeMs=3.5,
    )
    _patch_status(samples, ["virtualmachinemigration", "web-1-to-cascadelake", "-n", "vmshift-demo"],
                  status.to_api())
    row = {r["NAME"]: r for r in _table(samples, "virtualmachinemigrations", "-n", "vmshift-demo")}[
        "web-1-to-cascadelake"]
    assert list(row) == ["NAME", "VM", "PHASE", "SOURCE", "TARGET", "PROGRESS", "DOWNTIME", "AGE"]
    assert (row["VM"], row["PHASE"], row["SOURCE"], row["TARGET"], row["PROGRESS"], row["DOWNTIME"]) == (
        "web-1", "Transferring", "h-icelake-1", "h-cascadelake-1", "42", "3.5")


def test_policy_and_import_columns(samples: Kube) -> None:
    rows = {r["NAME"]: r for r in _table(samples, "remediationpolicies")}
    assert rows["power-and-heat-evacuate"]["ACTION"] == "EvacuateCritical"
    assert rows["power-and-heat-evacuate"]["THRESHOLD"] == "500"
    rows = {r["NAME"]: r for r in _table(samples, "migrationpolicies")}
    assert rows["batch-and-analytics"]["QUICK"] == "true"
    rows = {r["NAME"]: r for r in _table(samples, "virtualmachineimports", "-n", "vmshift-demo")}
    assert rows["crm-app"]["TARGET"] == "crm-app"


def test_null_for_an_optional_field_is_pruned(api: Kube) -> None:
    """A null sent for an optional field reads as absent (so CEL has() stays reliable)."""
    vm = yaml.safe_load("""
        apiVersion: vmshift.io/v1alpha1
        kind: VirtualMachine
        metadata: {name: nulls, namespace: vmshift-invalid}
        spec:
          cpus: 1
          memoryMiB: 512
          placement: {host: null}
          disks: [{name: os, sizeGiB: 1, volume: csv-01, passthroughLun: null}]
    """)
    api.kubectl("apply", "-f", "-", input=json.dumps(vm))
    stored = api.get_json("virtualmachine", "nulls", "-n", "vmshift-invalid")
    assert "host" not in stored["spec"]["placement"]
    assert stored["spec"]["disks"][0] == {"name": "os", "sizeGiB": 1, "volume": "csv-01"}
