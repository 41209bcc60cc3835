"""The pre-copy model of live migration: how many rounds, how long, how many bytes, what downtime.

Pure: no I/O. The operator uses it for ETAs and for choosing a mode; the agents' benchmark checks
itself against it. The model is the classic one (Clark et al., and the analytic models after them):
round 0 sends the whole memory M at bandwidth B; round i+1 sends what the guest dirtied while
round i was on the wire. A guest writing D MiB/s uniformly inside a hot set of W MiB (and a small
share of its writes over the rest of memory) dirties W·(1 − e^(−D·t/W)) distinct MiB in t seconds,
so the rounds shrink like M·ρ^i with ρ = D/B while D·t is small against W, and stop shrinking at the
working-set cap when ρ ≥ 1. Switchover happens when the remaining set would move in less than the
threshold; the downtime is that last transfer plus the fixed cost of pausing and resuming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

PAGE_SIZE = 4096
MIB = 1024 * 1024
#: A round that leaves more than this share of what it sent dirty again did not shrink the remaining set.
STALL_SHRINK = 0.95

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


class Step(StrEnum):
    """What a live migration does after a round (the convergence rule's answer)."""

    Continue = "Continue"  # send the pages dirtied meanwhile, one more round
    SwitchOver = "SwitchOver"  # pause, send the rest, resume on the target
    Throttle = "Throttle"  # auto-converge: slow the guest's writes, then another round
    Quick = "Quick"  # fall back: pause and copy what remains (a quick migration of the rest)
    Fail = "Fail"  # NotConverging: the VM stays on the source


@dataclass(frozen=True)
class Ladder:
    """The policy's rules for one live migration, in the units the rule works in."""

    threshold_ms: float = 1.0
    max_rounds: int = 30
    stall_rounds: int = 3
    auto_converge: bool = False
    throttle_initial: float = 20.0
    throttle_step: float = 20.0
    throttle_max: float = 90.0
    fallback_to_quick: bool = False
    max_downtime_ms: float | None = None


@dataclass(frozen=True)
class RoundFacts:
    """What the source knows after round ``round_index``: rates in bytes per second, sizes in bytes."""

    round_index: int
    remaining_bytes: float  # dirty now: what the next round (or the switchover) must send
    sent_bytes: float  # what the round that just ended sent
    link_rate: float  # bytes per second the link carries
    write_rate: float  # bytes per second the guest wrote during the round (after any throttle)
    throttle_percent: float = 0.0
    stalled: int = 0  # rounds in a row, before this one, that did not shrink the remaining set


@dataclass(frozen=True)
class Decision:
    step: Step
    stalled: int  # carry into the next round's facts
    throttle_percent: float = 0.0
    why: str = ""


def _unthrottled_rate(facts: RoundFacts) -> float:
    share = 1.0 - min(facts.throttle_percent, 99.99) / 100.0
    return facts.write_rate / share


def next_step(facts: RoundFacts, ladder: Ladder) -> Decision:
    """The convergence rule: switch over, go on, throttle, fall back to quick, or fail (pure).

    The agents, the model (:func:`predict_precopy`) and the planner call this one function.

    - Switch over once the remaining set crosses the link within the threshold.
    - A round that leaves more than 95 % of what it sent dirty again did not shrink the set; after
      ``stall_rounds`` such rounds in a row (or at ``max_rounds``) the ladder steps in.
    - AutoConverge throttles the guest, then raises the throttle by a step after every further round
      that does not shrink, up to its maximum; it is skipped (or left) at once when even the maximum
      throttle would leave the guest writing faster than the link carries: then it cannot converge,
      and waiting rounds for it would only run into the timeout.
    - Quick, when allowed, pauses the guest and copies the rest, unless that pause would exceed
      ``max_downtime_ms``; otherwise the migration fails NotConverging and the VM stays.
    """
    if facts.remaining_bytes <= facts.link_rate * ladder.threshold_ms / 1000:
        return Decision(Step.SwitchOver, 0, facts.throttle_percent)
    shrank = facts.round_index < 1 or facts.remaining_bytes <= STALL_SHRINK * facts.sent_bytes
    stalled = 0 if shrank else facts.stalled + 1
    at_limit = facts.round_index + 1 >= ladder.max_rounds
    throttling = facts.throttle_percent > 0
    if not at_limit and (stalled == 0 or (stalled < ladder.stall_rounds and (
            not throttling or facts.throttle_percent >= ladder.throttle_max))):
        return Decision(Step.Continue, stalled, facts.throttle_percent)
    # The ladder: pre-copy alone stalled (or ran out of rounds), or a throttle did not help.
    if ladder.auto_converge and not at_limit and facts.throttle_percent < ladder.throttle_max:
        at_max = _unthrottled_rate(facts) * (1 - ladder.throttle_max / 100)
        if at_max < facts.link_rate:
            current = facts.throttle_percent
            throttle = min(current + ladder.throttle_step if current else ladder.throttle_initial,
                           ladder.throttle_max)
            return Decision(Step.Throttle, 0, throttle,
                            f"auto-converge throttles the guest to {throttle:.0f} %")
        hopeless = (f"even a {ladder.throttle_max:g} % throttle leaves the guest writing "
                    f"{at_max / MIB:.0f} MiB/s, more than the link's {facts.link_rate / MIB:.0f} MiB/s")
    else:
        hopeless = ""
    why = f"{stalled} rounds in a row did not shrink the remaining set" if not at_limit else \
        f"the limit of {ladder.max_rounds} rounds was reached"
    if hopeless:
        why += f"; {hopeless}"
    if ladder.fallback_to_quick:
        predicted_ms = facts.remaining_bytes / facts.link_rate * 1000
        if ladder.max_downtime_ms is not None and predicted_ms > ladder.max_downtime_ms:
            return Decision(Step.Fail, stalled, facts.throttle_percent,
                            f"{why}; a quick switchover would pause the guest ~{predicted_ms:.0f} ms, over "
                            f"maxDowntimeMs={ladder.max_downtime_ms:g}")
        return Decision(Step.Quick, stalled, facts.throttle_percent, why)
    return Decision(Step.Fail, stalled, facts.throttle_percent, why)


def predict_precopy(
    memory_mib: float,
    dirty_rate_mibps: float,
    working_set_mib: float,
    bandwidth_mbps: float,
    *,
    threshold_ms: float = 1.0,
    max_rounds: int = 30,
    stall_rounds: int = 3,
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
    ladder = Ladder(threshold_ms=threshold_ms, max_rounds=max_rounds, stall_rounds=stall_rounds)
    for index in range(max_rounds):
        seconds = remaining / rate
        rounds.append(PrecopyRound(index=index, sent_mib=remaining, seconds=seconds))
        dirtied = distinct_dirtied_mib(seconds, dirty_rate_mibps, working_set_mib, memory_mib, hot_fraction)
        decision = next_step(RoundFacts(round_index=index, remaining_bytes=dirtied * MIB, sent_bytes=remaining * MIB,
                                        link_rate=rate * MIB, write_rate=dirty_rate_mibps * MIB, stalled=stalled),
                             ladder)
        remaining, stalled = dirtied, decision.stalled
        if decision.step is Step.SwitchOver:
            converges = True
            break
        if decision.step is not Step.Continue:
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
