"""The pre-copy model of live migration: how many rounds, how long, how many bytes, what downtime.

Pure: no I/O. The operator uses it for ETAs and for choosing a mode; the agents' benchmark checks
itself against it. After each round it asks the same convergence rule the agents follow
(:func:`vmshift.precopy.convergence.next_action`).

The model is the classic one (Clark et al., and the analytic models after them): round 0 sends
the whole memory M at bandwidth B; round i+1 sends what the guest dirtied while round i was on the
wire. A guest writing D MiB/s uniformly inside a hot set of W MiB (and a small share of its writes
over the rest of memory) dirties W·(1 − e^(−D·t/W)) distinct MiB in t seconds, so the rounds
shrink like M·ρ^i with ρ = D/B while D·t is small against W, and stop shrinking at the working-set
cap when ρ ≥ 1. Switchover happens when the remaining set would move in less than the
threshold; the downtime is that last transfer plus the fixed cost of pausing and resuming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vmshift.precopy.convergence import DEFAULTS, MIB, ActionKind, ConvergencePolicy, RoundStats, next_action

#: Share of the guest's writes that land inside its hot set (the rest fall anywhere in memory).
DEFAULT_HOT_FRACTION = 0.95


@dataclass(frozen=True)
class PrecopyRound:
    """One predicted round: what it sends and how long it takes."""

    index: int
    sent_mib: float
    seconds: float


@dataclass(frozen=True)
class PrecopyPrediction:
    """What the model expects a live migration to do.

    ``converges`` is False when the remaining set stops shrinking above the threshold before
    ``max_rounds``; then ``downtime_ms`` is what a forced switchover (or a quick migration of the
    remaining set) would cost, and ``total_seconds`` covers the rounds up to the limit.
    """

    converges: bool
    rounds: tuple[PrecopyRound, ...]
    total_seconds: float
    transferred_mib: float
    downtime_ms: float
    final_set_mib: float

    @property
    def round_count(self) -> int:
        return len(self.rounds)


def mbps_to_mibps(mbps: float) -> float:
    """Convert a link rate in megabits per second (10^6 bit/s) to MiB per second."""
    return mbps * 1_000_000 / 8 / MIB


def distinct_dirtied_mib(
    seconds: float,
    dirty_rate_mibps: float,
    working_set_mib: float,
    memory_mib: float,
    hot_fraction: float = DEFAULT_HOT_FRACTION,
) -> float:
    """Distinct MiB a guest dirties in ``seconds`` when it writes uniformly at random.

    Writes at ``dirty_rate_mibps`` go to the hot set with probability ``hot_fraction`` and to the
    rest of memory otherwise; each region saturates at its own size (coupon collector).
    """
    if seconds <= 0 or dirty_rate_mibps <= 0:
        return 0.0
    hot = min(working_set_mib, memory_mib)
    cold = max(memory_mib - hot, 0.0)
    hot_share = hot_fraction if cold > 0 else 1.0
    total = 0.0
    if hot > 0:
        total += hot * -math.expm1(-hot_share * dirty_rate_mibps * seconds / hot)
    if cold > 0:
        total += cold * -math.expm1(-(1 - hot_share) * dirty_rate_mibps * seconds / cold)
    return total


def predict_precopy(
    memory_mib: float,
    dirty_rate_mibps: float,
    working_set_mib: float,
    bandwidth_mbps: float,
    *,
    threshold_ms: float = DEFAULTS.threshold_ms,
    max_rounds: int = DEFAULTS.max_rounds,
    stall_rounds: int = DEFAULTS.stall_rounds,
    switchover_overhead_ms: float = 0.0,
    hot_fraction: float = DEFAULT_HOT_FRACTION,
) -> PrecopyPrediction:
    """Predict the rounds, time, bytes and downtime of a pre-copy live migration.

    ``stall_rounds``: give up (``converges=False``) when that many consecutive rounds fail to
    shrink the remaining set by at least 5 %, as the agents' stall detection does.
    """
    if memory_mib <= 0 or bandwidth_mbps <= 0:
        raise ValueError("memory_mib and bandwidth_mbps must be positive")
    rate = mbps_to_mibps(bandwidth_mbps)
    rounds: list[PrecopyRound] = []
    remaining = float(memory_mib)
    stalled = 0
    converges = False
    policy = ConvergencePolicy(threshold_ms=threshold_ms, max_rounds=max_rounds, stall_rounds=stall_rounds)
    for index in range(max_rounds):
        seconds = remaining / rate
        rounds.append(PrecopyRound(index=index, sent_mib=remaining, seconds=seconds))
        dirtied = distinct_dirtied_mib(seconds, dirty_rate_mibps, working_set_mib, memory_mib, hot_fraction)
        action = next_action(RoundStats(round_index=index, remaining_bytes=dirtied * MIB, sent_bytes=remaining * MIB,
                                        link_rate=rate * MIB, write_rate=dirty_rate_mibps * MIB, stalled=stalled),
                             policy)
        remaining, stalled = dirtied, action.stalled
        if action.kind is ActionKind.SwitchOver:
            converges = True
            break
        if action.kind is not ActionKind.Continue:
            break
    downtime_ms = remaining / rate * 1000 + switchover_overhead_ms
    sent = sum(r.sent_mib for r in rounds) + remaining
    total = sum(r.seconds for r in rounds) + downtime_ms / 1000
    return PrecopyPrediction(
        converges=converges,
        rounds=tuple(rounds),
        total_seconds=total,
        transferred_mib=sent,
        downtime_ms=downtime_ms,
        final_set_mib=remaining,
    )


def quick_migration_seconds(memory_mib: float, bandwidth_mbps: float) -> float:
    """A quick migration's downtime: the whole state crosses the link while the guest is saved."""
    return memory_mib / mbps_to_mibps(bandwidth_mbps)
