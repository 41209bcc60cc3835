"""The evacuation engine's pass: progress, order, budget, retries, blocked VMs, narrowing goals, winding down."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.host import DrainState
from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.scheduling.evacuation import (
    Attempt,
    Goal,
    episode_id,
    evacuation_step,
    goal_of,
    migration_name,
    wind_down,
)
from vmshift.scheduling.fleet import Disk, Fleet, VMView

from .strategies import host, vm

EP = episode_id("src", "2030-01-01T00:00:00.000000Z")


def fleet_of(specs: list[tuple[str, int]], *, targets: int = 2, slots: int = 2, moved: tuple[str, ...] = (),
             extra: list[VMView] | None = None) -> Fleet:
    """``src`` holding VMs (name, priority); ``moved`` ones already sit on t0."""
    src = host("src", schedulable=False, max_concurrent_migrations=slots)
    dsts = [host(f"t{i}", max_concurrent_migrations=slots) for i in range(targets)]
    guests = [vm(n, on=dsts[0] if n in moved else src, priority=p, memory_mib=1024, dirty_rate_mibps=5,
                 working_set_mib=64) for n, p in specs]
    return Fleet([src, *dsts], [*guests, *(extra or [])])


def attempt(name: str, phase: MigrationPhase, n: int = 1, *, target: str = "t0",
            reason: FailureReason | None = None, episode: str = EP) -> Attempt:
    return Attempt("default", migration_name(name, episode, n), f"default/{name}", episode, n, phase, target, reason,
                   f"{name} failed on {target}" if reason else "")


ALL = Goal("src", "spec.maintenance")


def test_first_pass_starts_the_most_important_within_the_plans_parallelism() -> None:
    fleet = fleet_of([("a", 0), ("b", 500), ("c", 100), ("d", 0)])
    step = evacuation_step(ALL, EP, fleet, [])
    assert step.plan is not None
    budget = step.plan.parallelism + step.plan.prepare_ahead
    assert 1 <= len(step.create) == budget <= 2
    assert [c.move.vm for c in step.create] == ["default/b", "default/c"][:budget]
    assert all(c.attempt == 1 and c.name == migration_name(c.vm_name, EP, 1) for c in step.create)
    p = step.progress
    assert (p.state, p.total, p.moved, p.in_flight, p.failed) == (DrainState.Running, 4, 0, budget, 0)


def test_queued_migrations_use_up_the_budget_and_moved_vms_count() -> None:
    fleet = fleet_of([("a", 0), ("b", 500), ("c", 100), ("d", 0)], moved=("b",))
    attempts = [attempt("b", MigrationPhase.Succeeded), attempt("c", MigrationPhase.Pending),
                attempt("a", MigrationPhase.Pending)]
    step = evacuation_step(ALL, EP, fleet, attempts)
    assert step.create == ()
    p = step.progress
    assert (p.state, p.total, p.moved, p.in_flight) == (DrainState.Running, 4, 1, 2)


def test_the_drains_own_migrations_cap_the_window_when_the_indexes_disagree() -> None:
    # The fleet (migration index) shows the source idle, this drain's index two moves under way.
    fleet = fleet_of([("a", 0), ("b", 0), ("c", 0), ("d", 0)])
    attempts = [attempt("a", MigrationPhase.Transferring), attempt("b", MigrationPhase.Validating)]
    step = evacuation_step(ALL, EP, fleet, attempts)
    assert len(step.create) == 1 and step.progress.in_flight == 3


def test_a_success_the_vm_index_does_not_show_yet_still_counts_as_moved() -> None:
    fleet = fleet_of([("a", 0)])  # the VM still reads as on src
    step = evacuation_step(ALL, EP, fleet, [attempt("a", MigrationPhase.Succeeded)])
    assert step.create == () and step.progress.state is DrainState.Completed
    assert (step.progress.total, step.progress.moved) == (1, 1)


def test_a_vm_shown_on_its_target_before_its_migration_ends_is_still_in_flight() -> None:
    # The migration writes the VM's new host before its own Succeeded: a pass in between must not
    # read the drain as Blocked (or Completed) with that VM neither moved nor in flight.
    fleet = fleet_of([("a", 0), ("stuck", 0)], moved=("a",))
    fleet = Fleet(list(fleet), [v if v.name != "stuck" else replace(v, disks=(Disk("scratch", 5, local=True),))
                               for v in fleet.vms.values()])
    attempts = [attempt("a", MigrationPhase.SwitchingOver)]
    p = evacuation_step(ALL, EP, fleet, attempts).progress
    assert (p.state, p.total, p.moved, p.in_flight) == (DrainState.Running, 2, 0, 1), p
    done = evacuation_step(ALL, EP, fleet, [attempt("a", MigrationPhase.Succeeded)]).progress
    assert (done.state, done.total, done.moved, done.in_flight) == (DrainState.Blocked, 2, 1, 0), done


def test_a_failed_move_is_retried_on_another_target_then_blocked_at_the_limit() -> None:
    fleet = fleet_of([("a", 0)], targets=3)
    first = evacuation_step(ALL, EP, fleet, [])
    [create] = first.create
    failed = attempt("a", MigrationPhase.Failed, target=create.move.target, reason=FailureReason.NotConverging)
    second = evacuation_step(ALL, EP, fleet, [failed])
    [retry] = second.create
    assert retry.attempt == 2 and retry.move.target != create.move.target
    assert retry.move.failed_targets == (create.move.target,)
    assert second.progress.failed == 1
    tries = [replace(failed, attempt=i + 1, name=f"x{i}", target=f"t{i}") for i in range(3)]
    third = evacuation_step(ALL, EP, fleet, tries)
    assert third.create == ()
    [blocked] = third.progress.blocked
    assert blocked.vm == "default/a" and blocked.reason is FailureReason.NotConverging
    assert "3 failed attempts" in blocked.message
    assert third.progress.state is DrainState.Blocked and third.progress.failed == 3


def test_a_cancelled_move_is_not_retried() -> None:
    fleet = fleet_of([("a", 0)])
    step = evacuation_step(ALL, EP, fleet, [attempt("a", MigrationPhase.Cancelled)])
    assert step.create == ()
    assert [b.reason for b in step.progress.blocked] == [FailureReason.Cancelled]


def test_vms_no_host_can_take_are_blocked_with_the_reason_and_the_rest_completes() -> None:
    src = host("src", schedulable=False)
    local = vm("local", on=src, disks=(Disk("tmp", 5, local=True),))
    fleet = fleet_of([("a", 0)], extra=[local])
    step = evacuation_step(ALL, EP, fleet, [])
    assert [c.move.vm for c in step.create] == ["default/a"]
    assert [b.reason for b in step.progress.blocked] == [FailureReason.StorageNotShared]
    assert step.progress.state is DrainState.Running
    done = fleet_of([("a", 0)], moved=("a",), extra=[local])
    step = evacuation_step(ALL, EP, done, [attempt("a", MigrationPhase.Succeeded)])
    assert step.create == () and step.progress.state is DrainState.Blocked
    assert (step.progress.total, step.progress.moved, step.progress.in_flight) == (2, 1, 0)


def test_evacuate_critical_moves_only_the_vms_at_or_above_the_threshold() -> None:
    fleet = fleet_of([("low", 10), ("mid", 100), ("top", 900)])
    goal = Goal("src", "RemediationPolicy fan (EvacuateCritical)", min_priority=100)
    step = evacuation_step(goal, EP, fleet, [])
    assert [c.move.vm for c in step.create] == ["default/top", "default/mid"][: len(step.create)]
    assert step.progress.total == 2


def test_a_narrowed_goal_withdraws_queued_moves_it_no_longer_needs() -> None:
    fleet = fleet_of([("low", 10), ("top", 900)])
    queued = attempt("low", MigrationPhase.Pending)
    running = attempt("top", MigrationPhase.Transferring)
    step = evacuation_step(Goal("src", "x", min_priority=100), EP, fleet, [queued, running])
    assert step.cancel == (queued,)


def test_winding_down_withdraws_queued_moves_and_lets_admitted_ones_finish() -> None:
    fleet = fleet_of([("a", 0), ("b", 0), ("c", 0)], moved=("a",))
    attempts = [attempt("a", MigrationPhase.Succeeded), attempt("b", MigrationPhase.Transferring),
                attempt("c", MigrationPhase.Pending), attempt("old", MigrationPhase.Succeeded, episode="before")]
    step = wind_down(DrainState.Running, EP, fleet, "src", attempts)
    assert [a.vm for a in step.cancel] == ["default/c"]
    assert [a.vm for a in step.stale] == ["default/old"]
    p = step.progress
    assert (p.state, p.moved, p.in_flight, p.total) == (DrainState.Cancelled, 1, 1, 3)
    assert wind_down(DrainState.Completed, EP, fleet, "src", []).progress.state is DrainState.Completed
    assert wind_down(DrainState.Blocked, EP, fleet, "src", attempts, min_priority=1).progress.total == 1


def test_earlier_drains_do_not_count() -> None:
    fleet = fleet_of([("a", 0)])
    old = attempt("a", MigrationPhase.Failed, reason=FailureReason.Timeout, episode="earlier")
    step = evacuation_step(ALL, EP, fleet, [old])
    assert [c.attempt for c in step.create] == [1] and step.progress.failed == 0
    assert step.stale == (old,)


def test_goal_from_spec_and_remediation() -> None:
    assert goal_of("h", {"maintenance": True}, {"remediation": {"action": "EvacuateCritical"}}) == ALL.__class__(
        "h", "spec.maintenance")
    evac = goal_of("h", {}, {"remediation": {"policy": "fan", "action": "EvacuateCritical", "priorityThreshold": 5}})
    assert evac == Goal("h", "RemediationPolicy fan (EvacuateCritical)", 5)
    assert goal_of("h", {}, {"remediation": {"policy": "m", "action": "Maintenance"}}) == Goal(
        "h", "RemediationPolicy m (Maintenance)")
    assert goal_of("h", {}, {"remediation": {"policy": "q", "action": "Quarantine"}}) is None
    assert goal_of("h", {"unschedulable": True}, {}) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(MigrationPhase))), max_size=12),
       st.integers(1, 4))
def test_passes_never_exceed_the_plan_nor_move_a_vm_twice(history: list[tuple[int, MigrationPhase]],
                                                         slots: int) -> None:
    """Whatever the history, a pass never creates a migration for a VM that has one unfinished or
    one that succeeded, creates at most the plan's window, and accounts for every VM exactly once."""
    names = [f"v{i}" for i in range(4)]
    fleet = fleet_of([(n, i * 10) for i, n in enumerate(names)], slots=slots)
    attempts = []
    for i, (which, phase) in enumerate(history):
        reason = FailureReason.Timeout if phase is MigrationPhase.Failed else None
        attempts.append(replace(attempt(names[which], phase, reason=reason), attempt=i + 1, name=f"m{i}"))
    step = evacuation_step(ALL, EP, fleet, attempts)
    busy = {a.vm for a in attempts if not a.finished or a.phase is MigrationPhase.Succeeded}
    assert not {c.move.vm for c in step.create} & busy
    assert len({c.move.vm for c in step.create}) == len(step.create)
    if step.plan is not None:
        assert len(step.create) <= step.plan.parallelism + step.plan.prepare_ahead
    unfinished = sum(1 for a in attempts if not a.finished and a not in step.cancel)
    assert not step.create or unfinished + len(step.create) <= slots + 1
    assert step.progress.state is not DrainState.Completed or not step.progress.in_flight
    p = step.progress
    assert p.total == len(names)
    blocked = {b.vm for b in p.blocked}
    assert not blocked & {c.move.vm for c in step.create}
    assert p.state is not DrainState.Completed or p.moved == p.total
