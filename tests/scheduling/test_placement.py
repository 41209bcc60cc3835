"""plan_placement, pick_target, migratable: filters, scores, determinism, and never an unsafe host."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.reasons import FailureReason
from vmshift.processor import missing_features, processor_info
from vmshift.scheduling.fleet import Disk, Fleet, HostView, VMView
from vmshift.scheduling.placement import HostChoice, Refusal, migratable, pick_target, plan_placement

from .strategies import fleets, host, vm, vm_specs


def assert_safe(v: VMView, target: HostView, *, moving: bool) -> None:
    """Independent of check_target: the target really can run the guest and has room."""
    assert target.schedulable and target.healthy and target.reachable
    if v.guest_features is not None:
        assert v.guest_vendor == processor_info(target.cpu_model).vendor
        assert missing_features(v.guest_features, target.cpu_model) == []
    assert v.memory_mib <= target.free_memory_mib
    assert v.cpus <= target.free_cpus
    for d in v.disks:
        if d.volume:
            assert d.volume in target.shared_volumes
        if d.passthrough_lun:
            assert d.passthrough_lun in target.passthrough_luns
        if d.local and moving:
            raise AssertionError("a local disk cannot move live")
    assert v.host_selector.matches(target.labels)


def test_prefers_balance_and_ties_by_name() -> None:
    a = host("a", memory_mib=65_536, allocated_memory_mib=32_768)
    b = host("b", memory_mib=65_536, allocated_memory_mib=8192)
    c = host("c", memory_mib=65_536, allocated_memory_mib=8192)
    result = plan_placement(vm("new", compatibility=True), Fleet([c, a, b]))
    assert isinstance(result, HostChoice) and result.host == "b"


def test_non_compat_vm_prefers_the_oldest_generation_that_fits() -> None:
    old = host("old", "haswell")
    mid = host("mid", "cascadelake")
    new = host("new", "sapphirerapids")
    fleet = Fleet([new, mid, old])
    assert isinstance(placed := plan_placement(vm("fresh"), fleet), HostChoice)
    assert placed.host == "old"
    # In compatibility mode the generation does not matter: balance decides (all equal: by name).
    assert isinstance(placed := plan_placement(vm("fresh", compatibility=True), fleet), HostChoice)
    assert placed.host == "mid"


def test_desired_host_is_declarative() -> None:
    a, b = host("a"), host("b", schedulable=False)
    result = plan_placement(vm("pinned", desired_host="b"), Fleet([a, b]))
    assert isinstance(result, Refusal)
    assert result.reason is FailureReason.TargetUnschedulable
    assert list(result.problems) == ["b"]


def test_refusal_summarizes_per_reason() -> None:
    hosts_ = [host("h1", memory_mib=2048), host("h2", memory_mib=2048), host("h3", schedulable=False)]
    result = plan_placement(vm("big", memory_mib=8192), Fleet(hosts_))
    assert isinstance(result, Refusal)
    assert result.reason is FailureReason.InsufficientResources
    assert "No host can take big for placement (3 checked): 2 lack free memory" in result.message
    assert "(h1, h2)" in result.message and "1 take no new VMs" in result.message
    assert result.hosts_by_reason() == {FailureReason.InsufficientResources: ["h1", "h2"],
                                        FailureReason.TargetUnschedulable: ["h3"]}


def test_pick_target_prefers_free_slots_and_excludes_source() -> None:
    src = host("src")
    busy = host("a-busy", max_concurrent_migrations=1, inbound_migrations=1)
    free = host("b-free", allocated_memory_mib=200_000)
    web = vm("web", on=src)
    fleet = Fleet([src, busy, free], [web])
    assert isinstance(target := pick_target(web, fleet), HostChoice)
    assert target.host == "b-free" and not target.waits
    only_busy = Fleet([src, busy], [web])
    assert isinstance(target := pick_target(web, only_busy), HostChoice)
    assert target.host == "a-busy" and target.waits


def test_pick_target_with_local_disk_needs_quick() -> None:
    src, dst = host("src"), host("dst")
    v = vm("scratch", on=src, disks=(Disk("tmp", 5, local=True),))
    fleet = Fleet([src, dst], [v])
    refusal = pick_target(v, fleet)
    assert isinstance(refusal, Refusal) and refusal.reason is FailureReason.StorageNotShared
    assert isinstance(pick_target(v, fleet, quick=True), HostChoice)


def test_migratable_condition() -> None:
    src, a, b = host("src"), host("a"), host("b", "haswell")
    web = vm("web", on=src)
    m = migratable(web, Fleet([src, a, b], [web]))
    assert m.migratable and m.hosts == ["a"] and m.message == "1 host could take web now: a."
    lonely = migratable(web, Fleet([src, b], [web]))
    assert not lonely.migratable and lonely.reason == "IncompatibleProcessor"
    assert "b lacks" in lonely.message
    assert migratable(vm("off"), Fleet([a])).reason == "NotRunning"


@settings(max_examples=60, deadline=None)
@given(fleet=fleets(), data=st.data())
def test_placement_never_unsafe_and_deterministic(fleet: Fleet, data: st.DataObject) -> None:
    new = data.draw(vm_specs("new", None))
    result = plan_placement(new, fleet)
    if isinstance(result, HostChoice):
        assert_safe(new, fleet.hosts[result.host], moving=False)
        peers = fleet.group_members_on(new.anti_affinity_group, result.host) if new.anti_affinity_group else set()
        assert not peers
    else:
        assert set(result.problems) == set(fleet.host_names())
    assert plan_placement(new, Fleet(reversed(list(fleet)), fleet.vms.values())) == result


@settings(max_examples=60, deadline=None)
@given(fleet=fleets(max_vms=6))
def test_migration_targets_never_incompatible_or_overbooked(fleet: Fleet) -> None:
    for v in fleet.vms.values():
        result = pick_target(v, fleet)
        if isinstance(result, HostChoice):
            assert result.host != v.host
            assert_safe(v, fleet.hosts[result.host], moving=True)
        hosts_ok = migratable(v, fleet).hosts
        for name in hosts_ok:
            assert_safe(v, fleet.hosts[name], moving=True)
