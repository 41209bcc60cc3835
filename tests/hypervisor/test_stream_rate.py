"""What one migration stream out of an agent really carries: the pure bookkeeping, then real agents that
report it (or not, when the link's shaper held every round)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.hypervisor.helpers import finished, running_vm
from vmshift.api.reasons import MigrationPhase
from vmshift.hypervisor.client import begin_migration
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.migration.streamrate import (
    MAX_AGE_SECONDS,
    MIN_SAMPLE_SECONDS,
    WINDOW,
    RoundSample,
    StreamRates,
)

MIB = 2**20


def test_only_long_rounds_the_shaper_hardly_held_tell_the_stream_rate() -> None:
    assert RoundSample(1470 * MIB, 1.0).unshaped_rate == pytest.approx(1470 * MIB)
    assert RoundSample(1470 * MIB, 1.0, held_seconds=0.05).unshaped_rate == pytest.approx(1470 * MIB)
    assert RoundSample(1470 * MIB, 1.0, held_seconds=0.5).unshaped_rate is None  # the bucket set the pace
    assert RoundSample(MIB, MIN_SAMPLE_SECONDS / 2).unshaped_rate is None  # too short to tell
    assert RoundSample(0, 1.0).unshaped_rate is None


def test_epochs_with_several_streams_sending_tell_what_they_carry_together() -> None:
    rates = StreamRates()
    rates.round_started(0.0)
    rates.sent(1470 * MIB)
    rates.round_ended(1.0)
    assert rates.record(RoundSample(1470 * MIB, 1.0), 1.0)
    assert rates.together_mbps(1.0) is None  # never several at once
    # two streams on two busy cores from t=10: 1,800 MiB/s together while both send (10.5 to 11.5)
    rates.round_started(10.0)
    rates.sent(450 * MIB)
    rates.round_started(10.5)
    rates.sent(1800 * MIB)
    rates.round_ended(11.5)
    rates.sent(450 * MIB)
    rates.round_ended(12.0)
    assert rates.together_mbps(12.0) == round(1800 * MIB * 8 / 1e6)
    assert rates.figure_mbps(12.0) == round(1470 * MIB * 8 / 1e6)
    # an epoch the shaper held (each stream waited half of it) tells nothing
    rates.round_started(20.0)
    rates.round_started(20.0)
    rates.sent(5000 * MIB)
    rates.held(1.0)
    rates.round_ended(21.0)
    rates.round_ended(21.0)
    assert rates.together_mbps(21.0) == round(1800 * MIB * 8 / 1e6)
    # together is never below what one stream carried alone (another stream may have been held)
    fresh = StreamRates()
    _two_streams_send(fresh, 1000 * MIB, 0.0, 1.0)
    fresh.record(RoundSample(1600 * MIB, 1.0), 2.0)
    assert fresh.together_mbps(2.0) == fresh.figure_mbps(2.0)
    with pytest.raises(ValueError, match="never started"):
        StreamRates().round_ended(1.0)


def _two_streams_send(rates: StreamRates, sent: int, start: float, end: float) -> None:
    """Two rounds send ``sent`` bytes together from ``start`` to ``end``, unheld."""
    rates.round_started(start)
    rates.round_started(start)
    rates.sent(sent)
    rates.round_ended(end)
    rates.round_ended(end)


def test_the_figure_is_the_best_of_the_recent_rounds_in_mbit_per_second() -> None:
    rates = StreamRates()
    assert rates.figure_mbps(0.0) is None  # nothing sent yet: unknown
    assert not rates.record(RoundSample(2000 * MIB, 1.0, held_seconds=0.9), 1.0)
    assert rates.figure_mbps(1.0) is None
    assert rates.record(RoundSample(1470 * MIB, 1.0), 2.0)
    assert rates.record(RoundSample(900 * MIB, 1.0), 3.0)  # two streams at once on two busy cores
    assert rates.figure_mbps(3.0) == round(1470 * MIB * 8 / 1e6)
    for i in range(WINDOW):  # the machine became slower for good: the old best ages out
        rates.record(RoundSample(700 * MIB, 1.0), 4.0 + i)
    assert rates.figure_mbps(20.0) == round(700 * MIB * 8 / 1e6)


def test_rounds_older_than_the_age_limit_no_longer_count() -> None:
    """A figure measured on a quiet machine long ago would steer plans for ever: after MAX_AGE_SECONDS
    without a new round it is unknown again (the planner plans as it does before any measure)."""
    rates = StreamRates()
    _two_streams_send(rates, 1800 * MIB, 0.0, 1.0)
    rates.record(RoundSample(1470 * MIB, 1.0), 1.0)
    rates.record(RoundSample(700 * MIB, 1.0), 100.0)  # a slower round later
    assert rates.figure_mbps(1.0 + MAX_AGE_SECONDS) == round(1470 * MIB * 8 / 1e6)
    assert rates.together_mbps(1.0 + MAX_AGE_SECONDS) == round(1800 * MIB * 8 / 1e6)
    # the best round is too old now: the figure is the best of those that are not
    assert rates.figure_mbps(2.0 + MAX_AGE_SECONDS) == round(700 * MIB * 8 / 1e6)
    assert rates.together_mbps(2.0 + MAX_AGE_SECONDS) is None  # no epoch with several streams is recent
    assert rates.figure_mbps(101.0 + MAX_AGE_SECONDS) is None  # none is recent: unknown
    assert rates.record(RoundSample(900 * MIB, 1.0), 2000.0)  # the next migration's first round
    assert rates.figure_mbps(2000.0) == round(900 * MIB * 8 / 1e6)


def test_bad_samples_and_windows_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        RoundSample(-1, 1.0)
    with pytest.raises(ValueError, match="at least one round"):
        StreamRates(window=0)


async def test_an_agent_reports_what_an_unshaped_stream_carried_and_nothing_for_a_shaped_one(
    spawn: Callable[..., AgentProcess],
) -> None:
    # no shaper between these two: the stream goes as fast as its sender's and receiver's CPUs let it; 4 GiB
    # take longer than MIN_SAMPLE_SECONDS even at the raw socket limit of a quiet machine (about 6 GiB/s)
    fast, other = spawn("stream-h1", bandwidth_mbps=0.0), spawn("stream-h2", bandwidth_mbps=0.0)
    slow = spawn("stream-h3", bandwidth_mbps=400.0)  # every round out of it held to 400 Mbit/s by the shaper
    async with fast.client() as h1, other.client() as h2, slow.client() as h3:
        assert (await h1.host()).migration_stream_mbps is None
        await running_vm(h1, "quick", memory_mib=4096, prefill=4096)
        await begin_migration(h1, h2, "quick", "mig-fast")
        assert (await finished(h1, "mig-fast")).phase is MigrationPhase.Succeeded
        carried = (await h1.host()).migration_stream_mbps
        assert carried is not None and carried > 400, carried
        report = await h1.report()
        assert report.host.migration_stream_mbps == carried
        assert report.host.migration_streams_together_mbps is None  # one stream at a time so far

        await running_vm(h1, "one", memory_mib=4096, prefill=4096)
        await running_vm(h1, "two", memory_mib=4096, prefill=4096)
        await begin_migration(h1, h2, "one", "mig-one")
        await begin_migration(h1, h2, "two", "mig-two")
        one, two = await finished(h1, "mig-one"), await finished(h1, "mig-two")
        assert one.phase is two.phase is MigrationPhase.Succeeded, (one, two)
        info = await h1.host()
        assert info.migration_streams_together_mbps is not None and info.migration_stream_mbps is not None
        assert info.migration_streams_together_mbps >= info.migration_stream_mbps

        await running_vm(h3, "held", memory_mib=64, prefill=64)
        await begin_migration(h3, h2, "held", "mig-held")
        assert (await finished(h3, "mig-held")).phase is MigrationPhase.Succeeded
        assert (await h3.host()).migration_stream_mbps is None  # it carried what the shaper let through
