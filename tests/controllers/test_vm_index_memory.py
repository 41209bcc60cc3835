"""The VM index keeps one parsed copy of a ``status.processor`` that many VMs show: thousands of VMs
on one CPU model show the same features and baseline."""

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
