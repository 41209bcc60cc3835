"""API objects (plain dicts, as the API server returns them) for the plugin's unit tests."""

from __future__ import annotations

from typing import Any

from vmshift.processor import processor_info


def host(name: str, cpu: str = "icelake", *, memory: int = 65536, cores: int = 32, phase: str = "Ready",
         volumes: tuple[str, ...] = ("csv-1",), labels: dict[str, str] | None = None, bandwidth: int = 10000,
         **status: Any) -> dict[str, Any]:
    info = processor_info(cpu)
    return {
        "apiVersion": "vmshift.io/v1alpha1", "kind": "Host",
        "metadata": {"name": name, "labels": labels or {}, "uid": f"uid-{name}"},
        "spec": {"cpu": {"model": cpu, "cores": cores}, "memoryMiB": memory, "migrationBandwidthMbps": bandwidth,
                 "storage": {"sharedVolumes": list(volumes)}},
        "status": {"phase": phase, "processor": {"model": cpu, "vendor": info.vendor,
                                                 "features": sorted(info.features)}, **status},
    }


def vm(name: str, on: str | None, *, ns: str = "ns", cpu: str = "icelake", compatibility: bool = False,
       memory: int = 1024, priority: int = 0, dirty: float = 10.0, selector: dict[str, str] | None = None
       ) -> dict[str, Any]:
    info = processor_info(cpu)
    placement: dict[str, Any] = {"hostSelector": {"matchLabels": selector}} if selector else {}
    status: dict[str, Any] = {"phase": "Running", "host": on} if on else {"phase": "Pending"}
    if on:
        features = _compat_features(cpu) if compatibility else sorted(info.features)
        status["processor"] = {"model": cpu, "vendor": info.vendor, "features": features}
    return {
        "apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}, "uid": f"uid-{name}"},
        "spec": {"cpus": 1, "memoryMiB": memory, "priority": priority, "processor": {"compatibility": compatibility},
                 "disks": [{"name": "root", "sizeGiB": 10, "volume": "csv-1"}],
                 "workload": {"dirtyRateMiBps": dirty, "workingSetMiB": 64}, "placement": placement},
        "status": status,
    }


def _compat_features(cpu: str) -> list[str]:
    from vmshift.processor import guest_features

    return sorted(guest_features(cpu, True))


def migration(name: str, vm_name: str, *, ns: str = "ns", phase: str | None = None,
              created: str = "2026-01-01T00:00:00Z", source: str | None = None, target: str | None = None,
              **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "uid": f"uid-{name}"},
        "spec": {"vmName": vm_name, **({"targetHost": target} if target else {})},
        "status": {},
    }
    if phase:
        body["status"] = {"phase": phase, "sourceHost": source, "targetHost": target, **status}
    return body
