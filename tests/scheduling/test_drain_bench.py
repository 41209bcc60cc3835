"""The ``bench/drain.py --real`` set-up: every guest it creates fits on its hosts (the default run used
to leave VMs Pending for want of cpus), and the overhead it reports is measured between the right events."""

from __future__ import annotations

import pytest

from tests.benches import load_bench

bench = load_bench("drain")


@pytest.mark.parametrize("vms", [8, bench.REAL_VMS, 40, 100])
def test_every_guest_fits_its_source_and_the_targets(vms: int) -> None:
    guests = bench.real_guests(vms)
    (src_cores, src_memory), (t_cores, t_memory) = bench.real_host_sizes(guests, targets=3)
    assert src_cores >= sum(g.cpus for g in guests), (src_cores, vms)
    assert src_memory >= sum(g.memory_mib for g in guests), (src_memory, vms)
    # each drain has targets of its own, and the planner may send every guest to one of them
    assert t_cores >= sum(g.cpus for g in guests)
    assert t_memory >= sum(g.memory_mib for g in guests)


def test_host_sizes_refuse_no_targets() -> None:
    with pytest.raises(ValueError, match="--targets must be at least 1"):
        bench.real_host_sizes(bench.real_guests(3), targets=0)


def test_migration_gaps_measure_from_the_latest_finish_to_the_next_start() -> None:
    # two at once from t=0; the third starts 0.4 s after the first ends; the fourth 0.1 s after the second
    spans = [(0.0, 5.0), (0.0, 7.0), (5.4, 9.0), (7.1, 12.0)]
    assert bench.migration_gaps(spans) == pytest.approx([0.4, 0.1])


def test_migration_gaps_of_migrations_all_started_at_once_are_empty() -> None:
    assert bench.migration_gaps([(0.0, 3.0), (0.0, 4.0)]) == []


def test_a_hand_over_to_a_migration_already_sending_leaves_the_link_busy() -> None:
    # b was prepared ahead and trickles from 0.5: a's end hands the link over with no idle time; c then
    # starts 0.3 s after b's end with nothing else sending
    spans = [(0.0, 5.0), (0.5, 9.0), (9.3, 12.0)]
    assert bench.idle_handovers(spans) == pytest.approx([0.0, 0.3])


def test_busy_time_is_the_union_of_the_spans() -> None:
    assert bench.busy_seconds([(0.0, 5.0), (1.0, 6.0), (8.0, 9.0)]) == pytest.approx(7.0)
    assert bench.busy_seconds([]) == 0.0


def test_the_data_plane_floor_takes_the_best_rate_and_the_fewest_bytes_never_above_the_link() -> None:
    planner = bench.RealRun(makespan=12.0, spans=[(0.0, 10.0)], mib=1000.0, failed=0)  # 100 MiB/s
    fixed = bench.RealRun(makespan=11.0, spans=[(0.0, 4.0), (4.0, 8.0)], mib=1200.0, failed=0)  # 150 MiB/s
    assert bench.data_plane_floor(planner, fixed, link_mbps=25_000) == pytest.approx(1000.0 / 150.0)
    # a 1 Gbit/s link (119 MiB/s) is slower than the data plane: the link decides
    assert bench.data_plane_floor(planner, fixed, link_mbps=1000) == pytest.approx(1000.0 / (1e9 / 8 / 2**20))


def _round(planner: float, fixed: float) -> bench.RealRound:
    run = bench.RealRun(makespan=planner, spans=[(0.0, 10.0)], mib=1000.0, failed=0)  # floor: 10 s
    base = bench.RealRun(makespan=fixed, spans=[(0.0, 10.0)], mib=1000.0, failed=0)
    return bench.RealRound(run, base, bound=4.0, planned=5.0, strategy="s", planner_first=True)


def _table(capsys: pytest.CaptureFixture[str], *rounds: tuple[float, float]) -> str:
    bench.print_real_table(vms=12, memory_mib=1000, link_mbps=25_000, targets=3,
                           rounds=[_round(planner, fixed) for planner, fixed in rounds])
    return capsys.readouterr().out


def _line(out: str, start: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(start))


def test_the_table_says_where_no_schedule_can_be_15_percent_shorter(capsys: pytest.CaptureFixture[str]) -> None:
    out = _table(capsys, (10.5, 11.0))  # the floor (10 s) is within 10 % of fixed-2
    assert "no schedule can here: best possible 9.1%" in _line(out, "planner shorter than fixed-2"), out
    floor = _line(out, "planner / data-plane floor")
    assert floor.split()[-1] == "meets" and "1.050" in floor, out


def test_the_table_marks_a_miss(capsys: pytest.CaptureFixture[str]) -> None:
    out = _table(capsys, (19.0, 20.0))
    assert _line(out, "planner shorter than fixed-2").split()[-1] == "MISSES", out


def test_the_verdict_is_on_the_median_round_not_the_luckiest(capsys: pytest.CaptureFixture[str]) -> None:
    # one round 25 % shorter than fixed-2 (noise on a shared machine), two about even
    out = _table(capsys, (15.0, 20.0), (20.0, 20.0), (20.4, 20.0))
    shorter = _line(out, "planner shorter than fixed-2")
    assert shorter.split()[4] == "0.0%" and shorter.split()[-1] == "MISSES", out
    assert "-2.0% to 25.0%" in shorter, out  # the range over the rounds beside the median
    floor = _line(out, "planner / data-plane floor")
    assert "2.000" in floor and "1.500 to 2.040" in floor and floor.split()[-1] == "MISSES", out
