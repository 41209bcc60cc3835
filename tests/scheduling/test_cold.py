"""A stopped VM moves cold: its last processor features and local disks do not hold it back; capacity,
storage, selectors and schedulability still do."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.common import Selector
from vmshift.api.reasons import FailureReason
from vmshift.scheduling.cold import ColdMove, ColdRefusal, decide_cold_move
from vmshift.scheduling.compatibility import blocking, check_target
from vmshift.scheduling.fleet import Disk, Fleet, HostView

from .strategies import host, hosts, vm


def test_a_stopped_vm_moves_cold_where_it_could_not_move_live() -> None:
    src, old = host("h1", "icelake"), host("h2", "haswell")
    guest = vm("db", on=src)  # started on icelake without compatibility: icelake's features
    fleet = Fleet([src, old], [guest])
    live = blocking(check_target(guest, "h2", fleet, moving=True), quick=True)
    assert [p.reason for p in live] == [FailureReason.IncompatibleProcessor]
    move = decide_cold_move(guest, fleet, "h2")
    assert isinstance(move, ColdMove) and move.target == "h2"
    assert "moves cold from h1 to h2" in move.message and "no memory is copied" in move.message


def test_local_disks_move_with_the_definition_and_no_target_is_picked_among_the_best() -> None:
    src, dst = host("h1"), host("h2", memory_mib=524_288)
    guest = vm("scratch", on=src, disks=(Disk("root", 20, local=True),))
    move = decide_cold_move(guest, Fleet([src, dst], [guest]), None)
    assert isinstance(move, ColdMove) and move.target == "h2"


def test_capacity_selectors_and_schedulability_still_refuse() -> None:
    src = host("h1", labels={"zone": "a"})
    small = host("h2", memory_mib=2048, labels={"zone": "a"})
    elsewhere = host("h3", labels={"zone": "b"})
    cordoned = host("h4", schedulable=False, labels={"zone": "a"})
    guest = vm("big", on=src, memory_mib=4096, host_selector=Selector.from_labels({"zone": "a"}))
    fleet = Fleet([src, small, elsewhere, cordoned], [guest])
    for target, reason in (("h2", FailureReason.InsufficientResources), ("h3", FailureReason.PlacementConstraint),
                           ("h4", FailureReason.TargetUnschedulable), ("h1", FailureReason.PlacementConstraint)):
        refused = decide_cold_move(guest, fleet, target)
        assert isinstance(refused, ColdRefusal) and refused.reason is reason, (target, refused)
    nowhere = decide_cold_move(guest, fleet, None)
    assert isinstance(nowhere, ColdRefusal) and "No host can take big" in nowhere.message


@settings(max_examples=60, deadline=None)
@given(fleet_hosts=hosts(), index=st.integers(0, 5))
def test_a_cold_move_goes_only_where_a_fresh_start_could(fleet_hosts: list[HostView], index: int) -> None:
    src = fleet_hosts[index % len(fleet_hosts)]
    guest = vm("v", on=src, memory_mib=2048, cpus=1)
    fleet = Fleet(fleet_hosts, [guest])
    move = decide_cold_move(guest, fleet, None)
    if isinstance(move, ColdMove):
        target = fleet.host(move.target)
        assert target is not None and move.target != src.name
        fresh = vm("v", memory_mib=2048, cpus=1)  # never started: the checks a placement makes
        assert not blocking(check_target(fresh, target, fleet, moving=False), quick=True)
