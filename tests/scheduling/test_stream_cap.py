"""The drain planner given what one migration stream really carries (``HostView.stream_mbps``, measured by
the source's agent): below the link's rate it runs several moves at once instead of one after another;
unknown, it plans as before."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmshift.api.reasons import MigrationPhase
from vmshift.precopy.model import mbps_to_mibps
from vmshift.scheduling.drain import READY_RATIO, DrainLimits, drain_lower_bound, plan_drain, simulate_drain
from vmshift.scheduling.evacuation import SETUP_SECONDS, Attempt, Goal, evacuation_step
from vmshift.scheduling.fleet import Fleet

from .strategies import host, vm

LINK_MBPS = 25_000.0
#: What one stream carried on the two shared cores of the bench machine: about 1,470 MiB/s.
STREAM_MBPS = 12_330.0


def bench_fleet(stream_mbps: float | None) -> Fleet:
    """The ``bench/drain.py --real`` drain: 12 guests of 1-4 GiB (28,672 MiB) on a 25 Gbit/s host with two
    migration slots, three targets on 25 Gbit/s links."""
    sizes = [4096, 2048, 1024, 4096, 2048, 1024, 4096, 2048, 2048, 1024, 4096, 1024]
    dirty = [5, 20, 60, 150, 5, 20, 60, 150, 5, 20, 60, 150]
    src = host("src", schedulable=False, unschedulable_reason="maintenance", bandwidth_mbps=LINK_MBPS,
               max_concurrent_migrations=2, stream_mbps=stream_mbps)
    targets = [host(f"t{i}", bandwidth_mbps=LINK_MBPS, max_concurrent_migrations=2) for i in range(3)]
    guests = [vm(f"g{i:02d}", on=src, memory_mib=m, dirty_rate_mibps=float(d), working_set_mib=m / 8)
              for i, (m, d) in enumerate(zip(sizes, dirty, strict=True))]
    assert sum(sizes) == 28_672
    return Fleet([src, *targets], guests)


def test_a_stream_that_cannot_fill_the_link_makes_the_plan_run_two_at_once() -> None:
    fleet = bench_fleet(STREAM_MBPS)
    plan = plan_drain("src", fleet, setup_seconds=SETUP_SECONDS)
    assert plan.parallelism == 2, plan.strategy
    serial = plan_drain("src", fleet, setup_seconds=SETUP_SECONDS, limits=DrainLimits(max_parallel=1))
    assert serial.parallelism == 1
    # two streams carry almost twice what one does: the drain takes little more than half as long
    assert plan.expected_makespan_seconds < 0.6 * serial.expected_makespan_seconds, (
        plan.expected_makespan_seconds, serial.expected_makespan_seconds)
    # each move is expected to carry no more than one stream does, and the simulation agrees with the plan
    assert max(m.bandwidth_mbps for m in plan.moves) <= STREAM_MBPS + 0.1
    result = simulate_drain(plan, fleet, setup_seconds=SETUP_SECONDS)
    assert result.makespan_seconds == pytest.approx(plan.expected_makespan_seconds)
    assert max(result.first_rate_mbps.values()) <= STREAM_MBPS + 1e-6
    assert plan.expected_makespan_seconds <= 1.15 * plan.lower_bound_seconds


def test_cpu_bound_streams_share_the_link_equally() -> None:
    plan = plan_drain("src", bench_fleet(STREAM_MBPS), setup_seconds=SETUP_SECONDS)
    # streams bound by their CPUs leave the link unfull: uneven link shares would only hold the second back
    assert plan.share_ratio == 1.0 and all(m.weight == 1.0 for m in plan.moves), plan.strategy
    # a stream at 60 % of the link: uneven weights would help on a full link, not here
    plan = plan_drain("src", bench_fleet(LINK_MBPS * 0.6), setup_seconds=SETUP_SECONDS)
    assert plan.parallelism == 2 and plan.share_ratio == 1.0, plan.strategy


def test_unknown_or_link_filling_streams_plan_as_before() -> None:
    unknown = plan_drain("src", bench_fleet(None), setup_seconds=SETUP_SECONDS)
    filling = plan_drain("src", bench_fleet(LINK_MBPS * 2), setup_seconds=SETUP_SECONDS)
    # one stream fills the link: one move sends at a time (the next one set up ahead), at the whole link
    assert unknown.parallelism == 1 and unknown.prepare_ahead == 1, unknown.strategy
    assert unknown.moves[0].bandwidth_mbps == pytest.approx(LINK_MBPS, rel=1e-3)
    assert filling == unknown


def test_the_lower_bound_counts_the_slots_each_move_holds_from_its_setup() -> None:
    fleet = bench_fleet(STREAM_MBPS)
    plan = plan_drain("src", fleet, setup_seconds=SETUP_SECONDS)
    # two slots, each move holding one for a second of setup and at least its bytes at one stream's rate
    slot_seconds = 12 * SETUP_SECONDS + 28_672 / mbps_to_mibps(STREAM_MBPS)
    assert drain_lower_bound(plan, fleet, setup_seconds=SETUP_SECONDS) >= slot_seconds / 2
    assert drain_lower_bound(plan, fleet) < slot_seconds / 2  # no setup: only the bytes count


def test_the_lower_bound_counts_what_the_source_slots_streams_can_carry() -> None:
    plan = plan_drain("src", bench_fleet(None), setup_seconds=SETUP_SECONDS)
    narrow = bench_fleet(5_000.0)  # two slots of 5 Gbit/s streams: 10 Gbit/s at most, not the 25 Gbit/s link
    unknown_bound = drain_lower_bound(plan, bench_fleet(None))
    narrow_bound = drain_lower_bound(plan, narrow)
    assert narrow_bound > 2.4 * unknown_bound
    assert narrow_bound >= 28_672 / mbps_to_mibps(10_000.0)



def test_cpu_bound_streams_go_to_a_target_no_other_stream_is_coming_in_to() -> None:
    def first_target(stream_mbps: float | None) -> str:
        fleet = bench_fleet(stream_mbps)
        busy = replace(fleet.hosts["t0"], inbound_migrations=1)  # a move of this drain already on its way
        fleet = Fleet([busy, *(h for h in fleet if h.name != "t0")], fleet.vms.values())
        return plan_drain("src", fleet, setup_seconds=SETUP_SECONDS).moves[0].target

    # one stream fills the link: sharing a target's 25 Gbit/s link costs nothing, the score decides
    assert first_target(None) == "t0"
    # streams bound by their CPUs: two into one target share its receiver's CPUs
    assert first_target(STREAM_MBPS) != "t0"


def test_a_move_planned_while_another_is_queued_goes_to_another_target() -> None:
    """The bench's later passes sent consecutive moves to one target: the queued one was not yet counted
    as coming in to it (the migration index counts a migration once admitted)."""
    fleet = bench_fleet(STREAM_MBPS)
    fleet = fleet.with_host(replace(fleet.hosts["src"], max_concurrent_migrations=3, outbound_migrations=1))
    fleet = fleet.with_host(replace(fleet.hosts["t0"], inbound_migrations=1))
    episode = "ep"
    sending = Attempt("default", "g00-m", "default/g00", episode, 1, MigrationPhase.Transferring, "t0")
    queued = Attempt("default", "g01-m", "default/g01", episode, 1, MigrationPhase.Pending, "t1")
    step = evacuation_step(Goal("src", "spec.maintenance"), episode, fleet, [sending, queued])
    # t1 looks free in the index, but g01 is queued for it: the next move goes to t2
    assert [c.move.target for c in step.create] == ["t2"], step.create


@pytest.mark.parametrize("stream_mbps, limits, ratio", [
    (STREAM_MBPS, DrainLimits(), 1.0),
    (None, DrainLimits(), READY_RATIO),
    (STREAM_MBPS, DrainLimits(max_parallel=1), READY_RATIO),
])
def test_the_last_move_shares_the_link_with_the_drains_moves_under_way_as_the_drain_runs(
        stream_mbps: float | None, limits: DrainLimits, ratio: float) -> None:
    """The plan of the one move left is "1 at once" whatever the streams carry: its ratio made the bench's last
    move trickle beside the one under way where two streams carry more than one (the last two ran one after
    the other). Where one stream fills the link, or the drain may run only one at a time, it still waits,
    prepared, for the one under way to end."""
    fleet = bench_fleet(stream_mbps)
    src = replace(fleet.hosts["src"], outbound_migrations=1)
    t0 = replace(fleet.hosts["t0"], inbound_migrations=1)
    left = [replace(v, migration_target="t0") if v.name == "g10" else v for v in fleet.vms.values()
            if v.name in ("g10", "g11")]
    fleet = Fleet([src, t0, *(h for h in fleet if h.name not in ("src", "t0"))], left)
    episode = "ep"
    moved = [Attempt("default", f"g{i:02d}-m", f"default/g{i:02d}", episode, 1, MigrationPhase.Succeeded, "t1")
             for i in range(10)]
    sending = Attempt("default", "g10-m", "default/g10", episode, 1, MigrationPhase.Transferring, "t0")
    step = evacuation_step(Goal("src", "spec.maintenance"), episode, fleet, [*moved, sending], limits=limits)
    assert [c.move.vm for c in step.create] == ["default/g11"], step.create
    assert step.create[0].ratio == ratio, step.plan
