"""The drain's plan decides how the source's link is shared; each migration it creates carries its share."""

from __future__ import annotations

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
