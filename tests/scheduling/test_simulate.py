"""The drain simulator: agrees with predict_precopy, shares links fairly, follows the ladder, deterministic."""

from __future__ import annotations

import math

import pytest

from vmshift.precopy.model import mbps_to_mibps, predict_precopy
from vmshift.scheduling.policy import MigrationPolicyView, Rung
from vmshift.scheduling.simulate import SimMigration, SimResult, allocate, simulate

LINK = 10_000.0
FORCED = MigrationPolicyView("forced", ladder=(Rung.PreCopy, Rung.Quick))


def run(migrations: list[SimMigration], *, parallelism: int = 4, ahead: int = 0, setup: float = 0.0,
        link: float = LINK) -> SimResult:
    targets = {m.target for m in migrations}
    capacity = {"out:s": mbps_to_mibps(link), **{f"in:{t}": mbps_to_mibps(LINK) for t in targets}}
    return simulate(
        migrations, parallelism=parallelism, prepare_ahead=ahead, capacity_mibps=capacity,
        resources=lambda m: ("out:s", f"in:{m.target}"), target_slots=dict.fromkeys(targets, 2),
        setup_seconds=setup,
    )


@pytest.mark.parametrize(
    ("memory", "dirty", "working_set", "mbps"),
    [(4096, 0, 0, 10_000), (4096, 100, 1024, 10_000), (16_384, 900, 4096, 10_000), (2048, 50, 512, 1_000),
     (8192, 2000, 2048, 10_000)],
)
def test_one_migration_at_a_constant_rate_is_predict_precopy(memory: int, dirty: float, working_set: float,
                                                             mbps: float) -> None:
    predicted = predict_precopy(memory, dirty, working_set, mbps)
    result = run([SimMigration("vm", "s", "t", memory, dirty, working_set, policy=FORCED)], link=mbps)
    assert result.finish["vm"] == pytest.approx(predicted.total_seconds, rel=1e-9)
    assert result.transferred_mib["vm"] == pytest.approx(predicted.transferred_mib, rel=1e-9)
    assert result.downtime_ms["vm"] == pytest.approx(predicted.downtime_ms, rel=1e-6, abs=1e-9)
    assert result.outcome["vm"] == ("Live" if predicted.converges else "Quick")


def test_allocate_is_weighted_max_min_fair() -> None:
    cap = {"src": 100.0, "t1": 30.0, "t2": 1000.0}
    assert allocate([(1, math.inf, ("src", "t2")), (1, math.inf, ("src", "t2"))], cap) == [50.0, 50.0]
    # The first is held to 30 by its target; the second gets the rest of the source link.
    assert allocate([(1, math.inf, ("src", "t1")), (1, math.inf, ("src", "t2"))], cap) == [30.0, 70.0]
    assert allocate([(3, math.inf, ("src", "t2")), (1, math.inf, ("src", "t2"))], cap) == [75.0, 25.0]
    assert allocate([(1, 10.0, ("src",)), (1, math.inf, ("src",))], cap) == [10.0, 90.0]


def test_concurrent_moves_share_the_source_link() -> None:
    a = SimMigration("a", "s", "t1", 4096)
    b = SimMigration("b", "s", "t2", 4096)
    together = run([a, b], parallelism=2)
    alone = run([a], parallelism=1)
    assert together.finish["a"] == pytest.approx(2 * alone.finish["a"])
    assert together.first_rate_mbps["a"] == pytest.approx(LINK / 2)
    serial = run([a, b], parallelism=1)
    assert serial.makespan_seconds == pytest.approx(together.makespan_seconds)


def test_quick_move_pauses_for_the_whole_copy() -> None:
    m = SimMigration("q", "s", "t", 4096, dirty_rate_mibps=500, quick=True, extra_copy_mib=1024)
    result = run([m])
    seconds = 5120 / mbps_to_mibps(LINK)
    assert result.finish["q"] == pytest.approx(seconds)
    assert result.downtime_ms["q"] == pytest.approx(seconds * 1000)
    assert result.outcome["q"] == "Quick"


def test_a_ladder_ending_in_postcopy_finishes_with_the_rest_crossing_while_the_guest_runs() -> None:
    busy = SimMigration("p", "s", "t", memory_mib=8192, dirty_rate_mibps=3000, working_set_mib=4096,
                        policy=MigrationPolicyView("pc", ladder=(Rung.PreCopy, Rung.PostCopy)))
    result = run([busy])
    assert result.outcome["p"] == "PostCopy"
    assert result.downtime_ms["p"] == 0.0, "no pause for the rest: the guest runs on the target meanwhile"
    assert result.transferred_mib["p"] > 8192 and result.finish["p"] > 8192 / mbps_to_mibps(LINK)
    failed = run([SimMigration("p", "s", "t", memory_mib=8192, dirty_rate_mibps=3000, working_set_mib=4096,
                               policy=MigrationPolicyView("pre", ladder=(Rung.PreCopy,)))])
    assert failed.outcome["p"] == "Failed"


def test_ladder_auto_converge_or_fail() -> None:
    def busy(policy: MigrationPolicyView) -> SimMigration:
        return SimMigration("a", "s", "t", memory_mib=8192, dirty_rate_mibps=3000, working_set_mib=4096,
                            policy=policy)

    converged = run([busy(MigrationPolicyView("default"))])  # the default ladder: PreCopy, AutoConverge
    assert converged.outcome["a"] == "AutoConverge" and not converged.failed
    failed = run([busy(MigrationPolicyView("strict", ladder=(Rung.PreCopy,)))])
    assert failed.outcome["a"] == "Failed" and failed.failed == ("a",)


def test_prepare_ahead_hides_setup_and_respects_slots() -> None:
    moves = [SimMigration(f"v{i}", "s", f"t{i % 2}", 8192) for i in range(6)]  # 6.9 s each, > setup
    plain = run(moves, parallelism=1, setup=2.0)
    ahead = run(moves, parallelism=1, ahead=1, setup=2.0)
    assert ahead.makespan_seconds == pytest.approx(plain.makespan_seconds - 5 * 2.0)
    assert ahead.peak_outbound == 2 and max(ahead.peak_inbound.values()) <= 2


def test_deterministic() -> None:
    moves = [SimMigration(f"v{i}", "s", f"t{i % 3}", 1024 * (i + 1), 40.0 * i, 512, weight=1 + i) for i in range(8)]
    assert run(moves, parallelism=3) == run(moves, parallelism=3)
