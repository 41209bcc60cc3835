"""The drain's plan decides how the source's link is shared; each migration it creates carries its share."""

from __future__ import annotations

from dataclasses import replace

from vmshift.api.reasons import MigrationPhase
from vmshift.scheduling.drain import PRIORITY_RATIO, READY_RATIO, share_ratio
from vmshift.scheduling.evacuation import Goal, evacuation_step

from .test_evacuation import EP, attempt, fleet_of

ALL = Goal("src", "spec.maintenance")


def test_the_share_ratio_follows_the_plans_weighting() -> None:
    assert share_ratio(2, "priority") == PRIORITY_RATIO
    assert share_ratio(1, "equal") == READY_RATIO  # one at a time: the one prepared ahead only trickles
    assert share_ratio(2, "equal") == 1.0


def test_created_migrations_carry_the_plans_ratio_and_ranks_in_order() -> None:
    fleet = fleet_of([("a", 0), ("b", 500), ("c", 100), ("d", 0)])
    step = evacuation_step(ALL, EP, fleet, [], setup_seconds=1.0)
    assert step.plan is not None and step.create
    assert [c.rank for c in step.create] == list(range(len(step.create)))
    assert {c.ratio for c in step.create} == {step.plan.share_ratio}


def test_a_later_pass_ranks_its_migrations_after_every_earlier_one_of_the_drain() -> None:
    fleet = fleet_of([("a", 0), ("b", 0), ("c", 0), ("d", 0)], moved=("a",))
    earlier = [attempt("a", MigrationPhase.Succeeded), attempt("b", MigrationPhase.Transferring)]
    step = evacuation_step(ALL, EP, fleet, earlier, setup_seconds=1.0)
    assert step.create, step
    # b (rank 1) still sends: whatever this pass starts must rank after it, so it never takes b's link
    assert min(c.rank for c in step.create) == len(earlier)


def test_a_move_started_beside_the_drains_own_ones_shares_the_link_as_the_drain_planned() -> None:
    """Two of the drain's moves hold both slots of a source whose streams cannot fill its link: the plan of
    this pass sees one slot at most, one at a time, but the move it queues will send beside them, as the
    drain planned (two at once, equal shares), not trickle behind them (bench: 938 vs 1,276 MiB/s)."""
    base = fleet_of([(n, 0) for n in "abcdef"], targets=3)
    src = replace(base.hosts["src"], bandwidth_mbps=25_000.0, stream_mbps=12_330.0, outbound_migrations=2)
    fleet = base.with_host(src)
    for t in ("t0", "t1", "t2"):
        fleet = fleet.with_host(replace(fleet.hosts[t], bandwidth_mbps=25_000.0))
    first = evacuation_step(ALL, EP, fleet.with_host(replace(src, outbound_migrations=0)), [])
    assert first.plan is not None and first.plan.parallelism == 2 and first.plan.share_ratio == 1.0
    under_way = [attempt("a", MigrationPhase.Transferring), attempt("b", MigrationPhase.Transferring, target="t1")]
    step = evacuation_step(ALL, EP, fleet, under_way)
    assert step.plan is not None and step.plan.parallelism == 1  # both slots are taken
    assert len(step.create) == 1 and step.create[0].ratio == 1.0
    # a drain that sends one at a time keeps the ratio that makes the move set up ahead trickle
    one_at_a_time = evacuation_step(ALL, EP, base.with_host(replace(base.hosts["src"], outbound_migrations=2)),
                                    under_way)
    assert [c.ratio for c in one_at_a_time.create] == [READY_RATIO]
