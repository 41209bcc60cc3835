"""One source of limits: whatever the VirtualMachine CRD admits, the controllers can define on an agent.

The CRD's bounds are read from the generated schema in crds/ (what the API server enforces), not
from the models, so a limit lowered in one place and not the other fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift import limits
from vmshift.api.labels import DRIVERS_ANNOTATION
from vmshift.controllers.views import index_vm
from vmshift.controllers.vmstatus import DefinitionError, definition
from vmshift.hypervisor.protocol import DriverChange, VmDefinition

CRD = Path(__file__).parents[2] / "crds" / "virtualmachines.vmshift.io.yaml"


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


SPEC = _spec_schema()
MAX_CPUS = int(SPEC["properties"]["cpus"]["maximum"])
MAX_MEMORY = int(SPEC["properties"]["memoryMiB"]["maximum"])
MAX_DIRTY = float(SPEC["properties"]["workload"]["properties"]["dirtyRateMiBps"]["maximum"])
MAX_DISKS = int(SPEC["properties"]["disks"]["maxItems"])
MAX_DISK_GIB = int(SPEC["properties"]["disks"]["items"]["properties"]["sizeGiB"]["maximum"])


def _vm(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    body = {"metadata": {"name": "vm-1", "namespace": "ns", "uid": "u-1", "generation": 1,
                         "annotations": annotations or {}}, "spec": spec}
    return index_vm(body), annotations or {}


@settings(max_examples=200, deadline=None)
@given(cpus=st.integers(1, MAX_CPUS), memory=st.integers(1, MAX_MEMORY), dirty=st.floats(0, MAX_DIRTY),
       disks=st.integers(0, MAX_DISKS), size=st.integers(1, MAX_DISK_GIB))
def test_every_size_the_crd_admits_the_agent_protocol_accepts(cpus: int, memory: int, dirty: float, disks: int,
                                                              size: int) -> None:
    spec = {"cpus": cpus, "memoryMiB": memory, "workload": {"dirtyRateMiBps": dirty},
            "disks": [{"name": f"d{i}", "sizeGiB": size, "volume": "csv-1"} for i in range(disks)]}
    got = definition(*_vm(spec))
    assert (got.cpus, got.memory_mib, got.workload.dirty_rate_mib_ps, len(got.disks)) == (cpus, memory, dirty, disks)


def test_the_crd_bounds_are_the_shared_limits() -> None:
    assert (MAX_CPUS, MAX_MEMORY, MAX_DIRTY, MAX_DISKS, MAX_DISK_GIB) == (
        limits.MAX_VM_CPUS, limits.MAX_VM_MEMORY_MIB, limits.MAX_DIRTY_RATE_MIBPS, limits.MAX_VM_DISKS,
        limits.MAX_DISK_GIB)
    schema = VmDefinition.model_json_schema(by_alias=True)
    assert schema["properties"]["cpus"]["maximum"] == limits.MAX_VM_CPUS
    assert schema["properties"]["memoryMiB"]["maximum"] == limits.MAX_VM_MEMORY_MIB


def test_the_largest_drivers_annotation_allowed_is_defined() -> None:
    names = [f"drv-{i}" for i in range(limits.MAX_DRIVERS)]
    got = definition(*_vm({"cpus": 1, "memoryMiB": 64}, {DRIVERS_ANNOTATION: ", ".join(names)}))
    assert got.drivers == names
    DriverChange(install=names)  # the conversion agent's calls take the same lists


@pytest.mark.parametrize(("annotation", "needle"), [
    (",".join(f"d{i}" for i in range(limits.MAX_DRIVERS + 1)), f"at most {limits.MAX_DRIVERS} are allowed"),
    ("netvsc,bad driver(x)", "invalid driver name(s): 'bad driver(x)'"),
    ("netvsc," + "x" * 64, "at most 63 characters"),
    ("a," * 20_000, "characters long"),
])
def test_a_drivers_annotation_outside_the_limits_is_refused_with_a_message(annotation: str, needle: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        definition(*_vm({"cpus": 1, "memoryMiB": 64}, {DRIVERS_ANNOTATION: annotation}))
    assert needle in str(caught.value) and DRIVERS_ANNOTATION in str(caught.value)


def test_a_spec_stored_before_a_limit_was_lowered_is_refused_not_raised() -> None:
    """The CRD refuses 1,048,576 MiB/s now; an object the API server stored earlier says why it cannot start."""
    with pytest.raises(DefinitionError, match=r"spec\.workload\.dirtyRateMiBps: Input should be less than or equal "
                                              r"to 65536"):
        definition(*_vm({"cpus": 1, "memoryMiB": 64, "workload": {"dirtyRateMiBps": 1048576}}))
    with pytest.raises(DefinitionError, match=r"spec\.cpus: Field required"):
        definition(*_vm({"memoryMiB": 64}))
