"""The CRD generator: structural schemas with descriptions everywhere, CEL rules, columns, names, CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from tests.api.manifests import MODELS
from vmshift.api import crdgen
from vmshift.api.common import ApiModel, Resource, ResourceInfo
from vmshift.cli.main import main

CRDS = {k.__name__: crdgen.crd(k) for k in crdgen.KINDS}
KUBEVIRT_SHORT_NAMES = {"vm", "vms", "vmi", "vmis", "vmim", "vmims", "vmpool", "vmrs", "vmirs", "kv"}


def _schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{*}}")


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural_and_described(kind: str) -> None:
    schema = _schema(kind)
    for path, node in _nodes(schema):
        for word in ("$ref", "anyOf", "allOf", "oneOf", "not", "$defs", "title",
                     "x-kubernetes-preserve-unknown-fields"):
            assert word not in node, f"{kind}{path}: {word}"
        if path == ".metadata":
            continue
        assert "type" in node, f"{kind}{path}: no type"
        if node["type"] == "object":
            assert ("properties" in node) != ("additionalProperties" in node), f"{kind}{path}"
            assert node.get("additionalProperties") is not False
        for name, sub in node.get("properties", {}).items():
            # metadata may carry nothing but name restrictions (the API server's rule)
            assert sub.get("description") or f"{path}.{name}" == ".metadata", f"{kind}{path}.{name}: no description"
        for key in node.get("x-kubernetes-list-map-keys", []):
            item = node["items"]
            assert key in item.get("required", []) or "default" in item["properties"][key], f"{kind}{path}"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_status_has_conditions_as_a_map_keyed_by_type(kind: str) -> None:
    status = _schema(kind)["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert "observedGeneration" in status["properties"]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_served_with_status_subresource_columns_and_names(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert version["served"] and version["storage"]
    assert spec["names"]["categories"] == ["vmshift"]
    assert not set(spec["names"]["shortNames"]) & KUBEVIRT_SHORT_NAMES
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    assert all(c["description"] for c in version["additionalPrinterColumns"])


def test_short_names_are_unique_across_kinds() -> None:
    names = [n for crd in CRDS.values() for n in crd["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("kind", "columns"), [
    ("Host", ["Phase", "CPU", "Vendor", "VMs", "Ready", "Age"]),
    ("VirtualMachine", ["Phase", "Host", "CPUs", "Memory", "Ready", "Age"]),
    ("VirtualMachineMigration", ["VM", "Phase", "Source", "Target", "Progress", "Downtime", "Age"]),
    ("RemediationPolicy", ["Action", "Alert", "Threshold", "Ready", "Age"]),
    ("MigrationPolicy", ["Ladder", "MaxDowntime", "Quick", "Age"]),
    ("VirtualMachineImport", ["Phase", "Step", "Target", "Ready", "Age"]),
])
def test_default_columns(kind: str, columns: list[str]) -> None:
    shown = [c["name"] for c in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
             if not c.get("priority")]
    assert [c for c in shown if c in columns] == columns


def _rules(kind: str) -> dict[str, str]:
    """Every CEL rule of a kind, message → path of the node it sits on."""
    return {
        rule["message"]: path
        for path, node in _nodes(_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    }


@pytest.mark.parametrize(("kind", "path", "message"), [
    ("Host", "", "a Host's name must be a DNS label"),
    ("VirtualMachine", ".spec.disks[*]", "a disk needs exactly one of volume"),
    ("VirtualMachine", ".spec", "workload.workingSetMiB must not exceed memoryMiB"),
    ("VirtualMachine", ".spec.placement.hostSelector.matchExpressions[*]", "values must be non-empty"),
    ("VirtualMachineMigration", ".spec.vmName", "vmName is immutable"),
    ("VirtualMachineMigration", ".spec.mode", "mode is immutable"),
    ("VirtualMachineMigration", ".spec", "targetHost is immutable"),
    ("MigrationPolicy", ".spec.ladder", "ladder must not name a strategy twice"),
    ("MigrationPolicy", ".spec.ladder", "Quick always finishes"),
    ("MigrationPolicy", ".spec.ladder", "PostCopy always finishes"),
    ("MigrationPolicy", ".spec", "ladder names Quick but allowQuick is false"),
    ("MigrationPolicy", ".spec", "parallelOutboundMigrationsPerHost must not exceed"),
    ("MigrationPolicy", ".spec", "switchoverThresholdMs must not exceed maxDowntimeMs"),
    ("MigrationPolicy", ".spec", "stallRounds must not exceed maxRounds"),
    ("MigrationPolicy", ".spec.autoConverge", "initialPercent must not exceed maxPercent"),
    ("MigrationPolicy", ".spec.selector", "use either namespaces or namespaceSelector"),
    ("RemediationPolicy", ".spec.match", "match needs at least one of alertname"),
    ("RemediationPolicy", ".spec", "priorityThreshold is required when action is EvacuateCritical"),
    ("RemediationPolicy", ".spec.correlation", "correlation needs at least two signals"),
    ("VirtualMachineImport", ".spec.source", "source needs exactly one of ovf or physical"),
    ("VirtualMachineImport", ".spec.source.ovf", "ovf needs exactly one of inline or configMapRef"),
    ("VirtualMachineImport", ".spec", "spec is immutable"),
])
def test_cel_rule_sits_where_it_belongs(kind: str, path: str, message: str) -> None:
    found = {m: p for m, p in _rules(kind).items() if m.startswith(message)}
    assert found, f"no rule starting {message!r} in {kind}: {sorted(_rules(kind))}"
    assert path in found.values()


def test_defaults_of_nested_objects_are_valid_model_values() -> None:
    spec = _schema("MigrationPolicy")["properties"]["spec"]
    from vmshift.api.migrationpolicy import MigrationPolicySpec

    assert MigrationPolicySpec.model_validate(spec["default"]) == MigrationPolicySpec()
    assert _schema("VirtualMachine")["properties"]["spec"]["properties"]["migration"]["default"] == {"mode": "Auto"}


def test_cpu_model_is_an_enum_of_archspec_names() -> None:
    model = _schema("Host")["properties"]["spec"]["properties"]["cpu"]["properties"]["model"]
    assert {"haswell", "cascadelake", "icelake", "sapphirerapids", "zen2", "zen3", "zen4"} <= set(model["enum"])


def test_exclusive_bounds_become_openapi_v3_0_minimums() -> None:
    disk = _schema("VirtualMachineImport")["properties"]["spec"]["properties"]["source"]["properties"][
        "physical"]["properties"]["disks"]["items"]["properties"]["sizeGiB"]
    assert disk["minimum"] == 0 and disk["exclusiveMinimum"] is True


class _Union(ApiModel):
    value: int | str = Field(description="Either.")


class _Undocumented(ApiModel):
    value: int


class _Probe(Resource):
    """A kind for generator tests."""

    resource: ClassVar[ResourceInfo] = ResourceInfo("probes", "probe", "Cluster", ("pr",), ())
    kind: Literal["Probe"] = Field("Probe", description="Probe.")


def test_a_union_is_refused_naming_the_field() -> None:
    class UnionProbe(_Probe):
        """Union."""

        spec: _Union = Field(description="Spec.")
        status: _Union | None = Field(None, description="Status.")

    with pytest.raises(crdgen.SchemaError, match=r"spec\.value: a union of 2 types"):
        crdgen.openapi_schema(UnionProbe)


def test_a_missing_description_is_refused_naming_the_field() -> None:
    class QuietProbe(_Probe):
        """Quiet."""

        spec: _Undocumented = Field(description="Spec.")
        status: _Undocumented | None = Field(None, description="Status.")

    with pytest.raises(crdgen.SchemaError, match=r"spec\.value: every field needs a description"):
        crdgen.openapi_schema(QuietProbe)


def test_rendering_is_stable_and_sorted() -> None:
    first, second = crdgen.generate(), crdgen.generate()
    assert first == second
    text = first["hosts.vmshift.io.yaml"]
    assert text.startswith(crdgen.HEADER)
    assert text.index("\napiVersion:") < text.index("\nkind:") < text.index("\nmetadata:") < text.index("\nspec:")


def test_cli_check_write_and_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--check", "--dir", str(tmp_path)]) == 1
    assert "+kind: CustomResourceDefinition" in capsys.readouterr().out
    stale = tmp_path / "oldthings.vmshift.io.yaml"
    stale.write_text("old\n")
    assert main(["crds", "--write", "--dir", str(tmp_path)]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.generate())
    assert main(["crds", "--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "hosts.vmshift.io.yaml").write_text("edited by hand\n")
    assert main(["crds", "--check", "--dir", str(tmp_path)]) == 1
    assert "-edited by hand" in capsys.readouterr().out


def test_cli_prints_every_crd_without_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    assert capsys.readouterr().out.count("kind: CustomResourceDefinition") == len(MODELS)
