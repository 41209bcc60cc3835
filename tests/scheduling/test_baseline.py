"""The EVC-like processor baseline: the features common to every host of the guest's vendor that its
placement rules allow; a fleet change shows as ProcessorBaselineChanged until the guest restarts."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings

from vmshift.api.common import Selector
from vmshift.controllers.views import VMEntry, index_vm
from vmshift.controllers.vmstatus import baseline_stale, start_baseline
from vmshift.processor import baseline_features, guest_features, processor_info
from vmshift.scheduling.baseline import Baseline, allowed_hosts, baseline_condition, baseline_in, fleet_baseline
from vmshift.scheduling.compatibility import blocking, check_target
from vmshift.scheduling.fleet import Fleet, HostView, VMView

from .strategies import host, hosts, vm

ICELAKE, HASWELL, CASCADELAKE = (processor_info(m).features for m in ("icelake", "haswell", "cascadelake"))


def test_the_baseline_is_what_every_allowed_host_of_the_vendor_offers() -> None:
    fleet = Fleet([host("a", "icelake", labels={"rack": "r1"}), host("b", "cascadelake", labels={"rack": "r1"}),
                   host("c", "haswell", labels={"rack": "r2"}), host("z", "zen3", labels={"rack": "r1"})])
    anywhere = vm("v", compatibility=True)
    intel = fleet_baseline(anywhere, fleet, "Intel")
    assert intel == Baseline("Intel", ICELAKE & CASCADELAKE & HASWELL, ("a", "b", "c"))
    rack1 = fleet_baseline(vm("v", compatibility=True, host_selector=Selector.from_labels({"rack": "r1"})),
                           fleet, "Intel")
    assert rack1 is not None and rack1.hosts == ("a", "b") and rack1.features == ICELAKE & CASCADELAKE
    assert "avx512f" in rack1.features and not rack1.features <= baseline_features(), "more than x86_64_v2"
    amd = fleet_baseline(anywhere, fleet, "AMD")
    assert amd is not None and amd.hosts == ("z",)
    assert fleet_baseline(vm("v", host_selector=Selector.from_labels({"rack": "r9"})), fleet, "Intel") is None


def test_a_pin_does_not_narrow_the_baseline() -> None:
    fleet = Fleet([host("a", "icelake"), host("c", "haswell")])
    pinned = vm("v", compatibility=True, desired_host="a")
    assert [h.name for h in allowed_hosts(pinned, fleet)] == ["a", "c"]


def test_a_guest_started_with_the_baseline_can_move_to_every_host_it_spans() -> None:
    a, c = host("a", "icelake"), host("c", "haswell")
    fleet = Fleet([a, c])
    compat = vm("v", compatibility=True)
    features = start_baseline(compat, "a", fleet)
    assert features == ICELAKE & HASWELL
    started = compat.started_on(a)
    started = replace(started, guest_features=guest_features("icelake", True, features))
    assert not blocking(check_target(started, "c", Fleet([a, c], [started]), moving=True))
    assert start_baseline(vm("strict"), "a", fleet) is None, "only in compatibility mode"


def test_the_condition_says_when_the_fleet_changed_the_baseline() -> None:
    a = host("a", "icelake")
    running = ICELAKE & CASCADELAKE  # what it started with on a fleet of icelake and cascadelake
    same = Baseline("Intel", running, ("a", "b"))
    assert baseline_condition("v", running, same, a).current
    shrunk = Baseline("Intel", running & HASWELL, ("a", "b", "c"))  # a haswell joined
    check = baseline_condition("v", running, shrunk, a)
    assert not check.current and check.reason == "ProcessorBaselineChanged"
    assert "cannot move to the hosts that lack them" in check.message and "restart it" in check.message
    grown = Baseline("Intel", ICELAKE, ("a",))  # the older hosts left
    check = baseline_condition("v", running, grown, a)
    assert not check.current and "more feature(s)" in check.message


def test_a_stale_baseline_in_status_is_found_by_the_resync() -> None:
    fleet = Fleet([host("a", "icelake"), host("c", "haswell")])
    current = fleet_baseline(vm("v"), fleet, "Intel")
    assert current is not None

    def entry(baseline: object) -> VMEntry:
        return index_vm({
            "metadata": {"namespace": "ns", "name": "v", "uid": "u1", "generation": 1},
            "spec": {"cpus": 1, "memoryMiB": 256, "processor": {"compatibility": True}},
            "status": {"host": "a", "phase": "Running", "processor": {
                "compatibility": True, "features": sorted(current.features), "baseline": baseline}}})
    assert not baseline_stale(entry(current.to_status()), fleet)
    assert baseline_stale(entry({"vendor": "Intel", "features": sorted(ICELAKE), "hostCount": 1}), fleet)


@settings(max_examples=60, deadline=None)
@given(fleet_hosts=hosts())
def test_the_baseline_fits_every_host_it_spans_and_no_larger_set_would(fleet_hosts: list[HostView]) -> None:
    fleet = Fleet(fleet_hosts)
    compat = VMView(namespace="ns", name="v", cpus=1, memory_mib=256, compatibility=True)
    for vendor in {h.vendor for h in fleet_hosts}:
        baseline = fleet_baseline(compat, fleet, vendor)
        assert baseline is not None
        spanned = [h for h in fleet_hosts if h.vendor == vendor]
        assert all(baseline.features <= h.features for h in spanned)
        # maximal: every feature outside the baseline is missing on some spanned host
        extra = frozenset().union(*(h.features for h in spanned)) - baseline.features
        assert all(any(f not in h.features for h in spanned) for f in extra)


def test_the_baseline_is_computed_once_per_set_of_hosts() -> None:
    fleet = Fleet([host("a", "icelake"), host("c", "haswell")])
    compat = vm("v", compatibility=True)
    first = baseline_in(compat, fleet, "Intel")
    assert first is baseline_in(vm("w", compatibility=True), fleet, "Intel"), "same selector, same answer"
    planned = fleet.with_planned(compat, "a")  # a reservation: the hosts' features and labels are unchanged
    assert baseline_in(compat, planned, "Intel") == first
    newer = fleet.with_host(host("c", "icelake"))  # the haswell replaced by an icelake
    changed = baseline_in(compat, newer, "Intel")
    assert changed is not None and changed.features == ICELAKE
