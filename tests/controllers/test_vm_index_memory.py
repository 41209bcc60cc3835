"""The VM index keeps one parsed copy of a ``status.processor`` that many VMs show: thousands of VMs
on one CPU model show the same features and baseline; and one parsed spec that VMs alike share."""

from __future__ import annotations

from typing import Any

from vmshift.controllers.views import index_vm

FEATURES = sorted(f"feature-{i:03d}" for i in range(60))


def vm(name: str, features: list[str]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 1},
            "spec": {"cpus": 2, "memoryMiB": 4096, "processor": {"compatibility": True}},
            "status": {"host": "h-0000", "phase": "Running", "processor": {
                "model": "icelake", "vendor": "Intel", "compatibility": True, "features": features,
                "baseline": {"vendor": "Intel", "features": features, "hostCount": 750}}}}


def test_vms_showing_the_same_processor_share_one_parsed_copy() -> None:
    a, b = index_vm(vm("a", list(FEATURES))), index_vm(vm("b", list(FEATURES)))
    assert a.processor is not None and a.processor is b.processor
    assert a.processor.features == FEATURES
    c = index_vm(vm("c", FEATURES[:10]))
    assert c.processor is not a.processor and c.processor is not None
    assert c.processor.features == FEATURES[:10]


def test_a_malformed_processor_reads_as_none_every_time() -> None:
    bad = vm("d", FEATURES)
    bad["status"]["processor"]["vendor"] = "Cyrix"
    assert index_vm(bad).processor is None
    assert index_vm(bad).processor is None


def test_vms_with_the_same_spec_share_one_parsed_model() -> None:
    """A restart parsed every one of 10,000 VMs' specs (a tenth of its CPU) and kept a model and a copy
    of the raw spec per VM; VMs alike share one, and a spec that differs gets its own."""
    def body(name: str, cpus: int) -> dict[str, object]:
        return {"metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}", "generation": 1},
                "spec": {"memoryMiB": 4096, "cpus": cpus, "disks": [{"name": "os", "sizeGiB": 20, "volume": "c"}]}}

    a, b, c = index_vm(body("a", 2)), index_vm(body("b", 2)), index_vm(body("c", 4))
    assert a.spec is b.spec and a.spec is not c.spec
    assert (a.spec.cpus, c.spec.cpus) == (2, 4)
    reordered = {"metadata": {"namespace": "ns", "name": "d", "uid": "u-d"},
                 "spec": {"disks": [{"volume": "c", "sizeGiB": 20, "name": "os"}], "cpus": 2, "memoryMiB": 4096}}
    assert index_vm(reordered).spec is a.spec
