"""The VM index keeps one parsed copy of a ``status.processor`` that many VMs show: at 1,000 hosts its
baseline lists ~750 host names, and one copy per VM cost hundreds of MiB at 10,000 VMs."""

from __future__ import annotations

from typing import Any

from vmshift.controllers.views import index_vm

HOSTS = [f"h-{i:04d}" for i in range(750)]


def vm(name: str, hosts: list[str]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 1},
            "spec": {"cpus": 2, "memoryMiB": 4096, "processor": {"compatibility": True}},
            "status": {"host": "h-0000", "phase": "Running", "processor": {
                "model": "icelake", "vendor": "Intel", "compatibility": True, "features": ["sse", "sse2"],
                "baseline": {"vendor": "Intel", "features": ["sse", "sse2"], "hosts": hosts}}}}


def test_vms_showing_the_same_processor_share_one_parsed_copy() -> None:
    a, b = index_vm(vm("a", list(HOSTS))), index_vm(vm("b", list(HOSTS)))
    assert a.processor is not None and a.processor is b.processor
    assert a.processor.baseline is not None and a.processor.baseline.hosts == HOSTS
    c = index_vm(vm("c", HOSTS[:10]))
    assert c.processor is not a.processor and c.processor is not None
    assert c.processor.baseline is not None and c.processor.baseline.hosts == HOSTS[:10]


def test_a_malformed_processor_reads_as_none_every_time() -> None:
    bad = vm("d", HOSTS)
    bad["status"]["processor"]["vendor"] = "Cyrix"
    assert index_vm(bad).processor is None
    assert index_vm(bad).processor is None
