"""Tombstones of VMs that migrated away are bounded by age and by count (Host, without HTTP)."""

from __future__ import annotations

import time

from vmshift.hypervisor.host import HostConfig, HypervisorHost
from vmshift.hypervisor.protocol import VmDefinition, VmState


def _definition(name: str) -> VmDefinition:
    return VmDefinition.model_validate({"name": name, "namespace": "ns", "cpus": 1, "memoryMiB": 4,
                                        "compatibility": False, "disks": [], "drivers": ["vmbus"]})


def _migrate_away(host: HypervisorHost, vm_id: str) -> None:
    host.define_vm(vm_id, _definition(vm_id))
    host.release_source_vm(host.vms[vm_id])


def test_tombstones_beyond_the_count_are_forgotten_oldest_first() -> None:
    host = HypervisorHost(HostConfig(name="h", cpu_model="icelake", cores=8, memory_mib=1024, bandwidth_mbps=1000,
                           max_tombstones=3))
    for i in range(10):
        _migrate_away(host, f"vm-{i}")
    assert sorted(host.vms) == ["vm-7", "vm-8", "vm-9"]
    assert all(g.state is VmState.MigratedAway for g in host.vms.values())


def test_tombstones_older_than_their_age_are_forgotten_and_live_guests_never() -> None:
    host = HypervisorHost(HostConfig(name="h", cpu_model="icelake", cores=8, memory_mib=1024, bandwidth_mbps=1000,
                           tombstone_seconds=60))
    _migrate_away(host, "old")
    _migrate_away(host, "back")
    host.define_vm("back", _definition("back"))  # the VM came back here: no longer a tombstone
    host.define_vm("live", _definition("live"))
    assert host.prune_tombstones(time.monotonic()) == 0
    assert host.prune_tombstones(time.monotonic() + 61) == 1
    assert sorted(host.vms) == ["back", "live"]
    assert host.vms["back"].state is VmState.Defined
