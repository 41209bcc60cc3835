"""The drain planner: order, targets, blocked VMs, retries, limits, and how it compares with fixed-2."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.common import Selector
from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.processor import missing_features
from vmshift.scheduling.drain import (
    Blocked,
    DrainLimits,
    Failure,
    Move,
    fixed_parallelism_plan,
    next_attempt,
    plan_drain,
    simulate_drain,
)
from vmshift.scheduling.fleet import Disk, Fleet, HostView, VMView
from vmshift.scheduling.policy import MigrationPolicyView, Rung

from .strategies import fleets, host, vm

QUICK_OK = MigrationPolicyView("quick-ok", ladder=(Rung.PreCopy, Rung.AutoConverge, Rung.Quick))


def drained_fleet(vms: list[tuple[str, int, int, float]], *, targets: int = 3, slots: int = 4) -> Fleet:
    """A source ``src`` (in maintenance) holding ``vms`` (name, priority, memory MiB, dirty MiB/s)."""
    src = host("src", schedulable=False, unschedulable_reason="maintenance", max_concurrent_migrations=slots)
    dsts = [host(f"t{i}", max_concurrent_migrations=slots) for i in range(targets)]
    guests = [vm(name, on=src, priority=p, memory_mib=m, dirty_rate_mibps=d, working_set_mib=m / 4)
              for name, p, m, d in vms]
    return Fleet([src, *dsts], guests)


def test_order_is_priority_then_longest_then_name() -> None:
    fleet = drained_fleet([("a", 0, 4096, 10), ("b", 100, 2048, 10), ("c", 0, 16_384, 10), ("d", 0, 4096, 10),
                           ("e", 100, 8192, 10)])
    plan = plan_drain("src", fleet)
    assert [m.vm for m in plan.moves] == ["default/e", "default/b", "default/c", "default/a", "default/d"]
    assert [m.order for m in plan.moves] == [0, 1, 2, 3, 4]
    assert all(m.expected_finish > m.expected_start for m in plan.moves)
    assert plan.expected_makespan_seconds >= plan.lower_bound_seconds * (1 - 1e-9)
    assert plan.blocked == () and plan.skipped == ()


def test_only_filter_skips_and_blocked_vms_say_why() -> None:
    fleet = drained_fleet([("crit", 100, 4096, 10), ("low", 0, 4096, 10)])
    src = fleet.hosts["src"]
    stuck = vm("stuck", on=src, priority=100, host_selector=Selector.from_labels({"zone": "nowhere"}))
    local = vm("local", on=src, priority=100, disks=(Disk("tmp", 10, local=True),))
    fleet = Fleet(fleet, [*fleet.vms.values(), stuck, local])
    plan = plan_drain("src", fleet, only=lambda v: v.priority >= 100)
    assert [m.vm for m in plan.moves] == ["default/crit"]
    assert plan.skipped == ("default/low",)
    reasons = {b.vm: b for b in plan.blocked}
    assert reasons["default/stuck"].reason is FailureReason.PlacementConstraint
    assert "No host can take stuck for the drain of src" in reasons["default/stuck"].message
    assert reasons["default/local"].reason is FailureReason.StorageNotShared
    assert "does not allow Quick" in reasons["default/local"].message
    with_quick = plan_drain("src", fleet, only=lambda v: v.priority >= 100, policy=QUICK_OK)
    local_move = with_quick.move_of("default/local")
    assert local_move is not None and local_move.mode is MigrationMode.Quick


def test_targets_account_for_capacity_already_planned() -> None:
    src = host("src", schedulable=False)
    small = [host(f"t{i}", memory_mib=10_240) for i in range(2)]
    guests = [vm(f"v{i}", on=src, memory_mib=4096) for i in range(5)]
    plan = plan_drain("src", Fleet([src, *small], guests))
    assert len(plan.moves) == 4
    assert Counter(m.target for m in plan.moves) == {"t0": 2, "t1": 2}
    [blocked] = plan.blocked
    assert blocked.reason is FailureReason.InsufficientResources


def test_planner_beats_fixed_two_when_one_stream_cannot_fill_the_link() -> None:
    src = host("src", schedulable=False, bandwidth_mbps=25_000, max_concurrent_migrations=4)
    dsts = [host(f"t{i}", bandwidth_mbps=10_000, max_concurrent_migrations=4) for i in range(4)]
    guests = [vm(f"v{i:02d}", on=src, memory_mib=4096 * (1 + i % 4), dirty_rate_mibps=20.0 * (i % 5),
                 working_set_mib=1024) for i in range(16)]
    fleet = Fleet([src, *dsts], guests)
    plan = plan_drain("src", fleet)
    ours = simulate_drain(plan, fleet)
    base = simulate_drain(fixed_parallelism_plan("src", fleet), fleet)
    assert ours.makespan_seconds == pytest.approx(plan.expected_makespan_seconds)
    assert ours.makespan_seconds <= 1.15 * plan.lower_bound_seconds
    assert ours.makespan_seconds <= 0.8 * base.makespan_seconds
    assert plan.parallelism + plan.prepare_ahead <= 4


def test_planner_never_worse_than_fixed_two_on_a_uniform_fleet() -> None:
    fleet = drained_fleet([(f"v{i}", i % 3, 2048 * (1 + i % 5), 30.0 * (i % 7)) for i in range(12)])
    ours = simulate_drain(plan := plan_drain("src", fleet), fleet)
    base = simulate_drain(fixed_parallelism_plan("src", fleet), fleet)
    assert ours.makespan_seconds <= base.makespan_seconds * (1 + 1e-9)
    assert ours.makespan_seconds <= 1.15 * plan.lower_bound_seconds


def test_path_caps_are_respected_and_avoided() -> None:
    fleet = drained_fleet([(f"v{i}", 0, 4096, 10) for i in range(4)], targets=2)
    capped = DrainLimits(link_mbps={("src", "t0"): 1_000})
    plan = plan_drain("src", fleet, capped)
    assert {m.target for m in plan.moves} == {"t1"}  # t1 has room for all; the slow path is avoided
    forced = plan_drain("src", Fleet([h for h in fleet if h.name != "t1"], fleet.vms.values()), capped)
    result = simulate_drain(forced, fleet, limits=capped)
    assert all(m.target == "t0" for m in forced.moves)
    assert max(result.first_rate_mbps.values()) == pytest.approx(1_000)


def test_next_attempt_tries_alternates_then_gives_up() -> None:
    move = Move(vm="ns/web", source="src", target="t1", mode=MigrationMode.Live, order=0, alternates=("t2", "t3"))
    first = Failure("t1", FailureReason.TargetLost, "t1 stopped answering")
    retry = next_attempt(move, [first])
    assert isinstance(retry, Move) and retry.target == "t2" and retry.attempt == 2
    assert retry.failed_targets == ("t1",) and retry.alternates == ("t3",)
    second = Failure("t2", FailureReason.NotConverging)
    third = Failure("t3", FailureReason.Timeout, "took too long")
    gave_up = next_attempt(retry, [first, second, third])
    assert isinstance(gave_up, Blocked) and gave_up.reason is FailureReason.Timeout
    assert "after 3 failed attempts" in gave_up.message and "t1 (TargetLost)" in gave_up.message
    fatal = next_attempt(move, [Failure("t1", FailureReason.SourceLost, "src died")])
    assert isinstance(fatal, Blocked) and fatal.reason is FailureReason.SourceLost
    no_alt = Move(vm="ns/web", source="src", target="t1", mode=MigrationMode.Live, order=0)
    again = next_attempt(no_alt, [Failure("t1", FailureReason.AgentUnreachable)])
    assert isinstance(again, Move) and again.target == "t1" and again.attempt == 2
    assert isinstance(next_attempt(no_alt, [Failure("t1", FailureReason.IncompatibleProcessor)]), Blocked)
    assert next_attempt(move, []) is move


def test_unknown_host() -> None:
    with pytest.raises(ValueError, match="no Host named nope"):
        plan_drain("nope", Fleet([]))


def _check_plan_invariants(fleet: Fleet, source: HostView, limits: DrainLimits, threshold: int) -> None:
    plan = plan_drain(source.name, fleet, limits, only=lambda v: v.priority >= threshold)
    on_source = {v.key for v in fleet.vms_on(source.name)}
    movable = {v.key for v in fleet.vms_on(source.name) if v.priority >= threshold and not v.migrating}
    moved = [m.vm for m in plan.moves]
    blocked = [b.vm for b in plan.blocked]
    # Every movable VM exactly once; the others skipped.
    assert len(moved) == len(set(moved)) and not set(moved) & set(blocked)
    assert set(moved) | set(blocked) == movable
    assert set(plan.skipped) == on_source - movable
    # Targets: compatible, never overbooked by the plan, anti-affinity kept.
    memory: Counter[str] = Counter()
    cpus: Counter[str] = Counter()
    groups: Counter[tuple[str, str]] = Counter()
    for m in plan.moves:
        v: VMView = fleet.vms[m.vm]
        target = fleet.hosts[m.target]
        assert m.target != source.name and target.schedulable and target.healthy and target.reachable
        assert v.guest_features is not None and v.guest_vendor == target.vendor
        assert missing_features(v.guest_features, target.cpu_model) == []
        assert m.mode is MigrationMode.Live and not v.local_disks
        memory[m.target] += v.memory_mib
        cpus[m.target] += v.cpus
        if v.anti_affinity_group:
            groups[(v.anti_affinity_group, m.target)] += 1
            assert not fleet.group_members_on(v.anti_affinity_group, m.target) - {v.key}
    for name, mib in memory.items():
        assert mib <= fleet.hosts[name].free_memory_mib and cpus[name] <= fleet.hosts[name].free_cpus
    assert all(count == 1 for count in groups.values())
    # The simulated run never exceeds the source's, targets' or cluster's slots.
    result = simulate_drain(plan, fleet, limits=limits)
    slots = source.max_concurrent_migrations - source.migrations_in_flight
    assert result.peak_outbound <= plan.parallelism + plan.prepare_ahead <= max(slots, 1)
    if limits.cluster_available is not None:
        assert result.peak_cluster <= max(limits.cluster_available, 1)
    for name, peak in result.peak_inbound.items():
        assert peak <= fleet.hosts[name].free_migration_slots
    assert set(result.finish) == set(moved)
    assert result.makespan_seconds >= plan.lower_bound_seconds * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(fleet=fleets(max_vms=10), threshold=st.sampled_from([0, 10, 100]),
       cluster=st.sampled_from([None, 1, 3]))
def test_drain_plan_invariants(fleet: Fleet, threshold: int, cluster: int | None) -> None:
    _check_plan_invariants(fleet, fleet.hosts["h0"], DrainLimits(cluster_available=cluster), threshold)
