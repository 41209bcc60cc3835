"""The ``bench/drain.py --real`` set-up: every guest it creates fits on its hosts (the default run used
to leave VMs Pending for want of cpus), and the overhead it reports is measured between the right events."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "drain.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_drain", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_drain"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.mark.parametrize("vms", [8, bench.REAL_VMS, 40, 100])
def test_every_guest_fits_its_source_and_the_targets(vms: int) -> None:
    guests = bench.real_guests(vms)
    (src_cores, src_memory), (t_cores, t_memory) = bench.real_host_sizes(guests, targets=3)
    assert src_cores >= sum(g.cpus for g in guests), (src_cores, vms)
    assert src_memory >= sum(g.memory_mib for g in guests), (src_memory, vms)
    # both sources' guests may land on one target
    assert t_cores >= 2 * sum(g.cpus for g in guests)
    assert t_memory >= 2 * sum(g.memory_mib for g in guests)


def test_host_sizes_refuse_no_targets() -> None:
    with pytest.raises(ValueError, match="--targets must be at least 1"):
        bench.real_host_sizes(bench.real_guests(3), targets=0)


def test_migration_gaps_measure_from_the_latest_finish_to_the_next_start() -> None:
    # two at once from t=0; the third starts 0.4 s after the first ends; the fourth 0.1 s after the second
    spans = [(0.0, 5.0), (0.0, 7.0), (5.4, 9.0), (7.1, 12.0)]
    assert bench.migration_gaps(spans) == pytest.approx([0.4, 0.1])


def test_migration_gaps_of_migrations_all_started_at_once_are_empty() -> None:
    assert bench.migration_gaps([(0.0, 3.0), (0.0, 4.0)]) == []
