"""The convergence decision of a live migration: after each pre-copy round, what next.

Pure: no I/O, no clocks. One rule, :func:`next_action`, that the source agent follows round by round,
that the pre-copy model (:func:`vmshift.precopy.model.predict_precopy`) plays forward, and that the
drain planner's simulator (``vmshift.scheduling.simulate``) plays while links are shared. Its
parameters (:class:`ConvergencePolicy`) are the MigrationPolicy's, as the agent receives them in
its migration request; their defaults are the API model's (``MigrationPolicySpec``), read here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from vmshift.api.migrationpolicy import MigrationPolicySpec

MIB = 1024 * 1024
#: A round that leaves more than this share of what it sent dirty again did not shrink the remaining set.
STALL_SHRINK = 0.95

#: The API's defaults (switchover threshold, rounds, stall rounds, AutoConverge's throttle): the one
#: place they are written is the model the CRD is generated from.
_API_DEFAULTS = MigrationPolicySpec()


class ActionKind(StrEnum):
    """What a live migration does after a round."""

    Continue = "Continue"  # send the pages dirtied meanwhile, one more round
    SwitchOver = "SwitchOver"  # pause, send the rest, resume on the target
    Throttle = "Throttle"  # auto-converge: slow the guest's writes (more), then another round
    Quick = "Quick"  # fall back: pause and copy what remains (a quick migration of the rest)
    PostCopy = "PostCopy"  # fall back: run the guest on the target now; it pulls what it still lacks
    Fail = "Fail"  # NotConverging: the VM stays on the source


@dataclass(frozen=True)
class ConvergencePolicy:
    """The rules one live migration converges by, in the units the rule works in.

    ``auto_converge``, ``fallback_to_quick`` and ``fallback_to_postcopy`` say whether the policy's
    ladder holds AutoConverge, Quick and PostCopy; ``max_downtime_ms`` (None: no budget) caps every
    pause the rule may decide on.
    """

    threshold_ms: float = float(_API_DEFAULTS.switchoverThresholdMs)
    max_rounds: int = _API_DEFAULTS.maxRounds
    stall_rounds: int = _API_DEFAULTS.stallRounds
    auto_converge: bool = False
    throttle_initial_percent: float = float(_API_DEFAULTS.autoConverge.initialPercent)
    throttle_step_percent: float = float(_API_DEFAULTS.autoConverge.stepPercent)
    throttle_max_percent: float = float(_API_DEFAULTS.autoConverge.maxPercent)
    fallback_to_quick: bool = False
    fallback_to_postcopy: bool = False
    max_downtime_ms: float | None = None

    @property
    def switchover_ms(self) -> float:
        """The longest final transfer a switchover may take: the threshold, within the downtime budget."""
        if self.max_downtime_ms is None:
            return self.threshold_ms
        return min(self.threshold_ms, self.max_downtime_ms)

    def stall_bound(self) -> int:
        """Rounds (counting round 0) after which rounds that never shrink the remaining set have surely
        ended pre-copy (switched over, fallen back or failed): the stall rounds, every throttle step,
        and the stall rounds again at the highest throttle."""
        steps = 0
        if self.auto_converge and self.throttle_max_percent > self.throttle_initial_percent:
            steps = math.ceil((self.throttle_max_percent - self.throttle_initial_percent)
                              / max(self.throttle_step_percent, 1e-9))
        return 1 + self.stall_rounds + steps + self.stall_rounds  # round 0 counted


#: What applies where nothing else is said (the API's defaults; no AutoConverge, no Quick, no budget).
DEFAULTS = ConvergencePolicy()


@dataclass(frozen=True)
class RoundStats:
    """What the source knows after round ``round_index``: rates in bytes per second, sizes in bytes."""

    round_index: int
    remaining_bytes: float  # dirty now: what the next round (or the switchover) must send
    sent_bytes: float  # what the round that just ended sent
    link_rate: float  # bytes per second the link carries
    write_rate: float  # bytes per second the guest wrote during the round (after any throttle)
    throttle_percent: float = 0.0
    stalled: int = 0  # rounds in a row, before this one, that did not shrink the remaining set
    rung_started: int = 0  # the first round of the ladder's current rung (0: PreCopy; later: AutoConverge)


@dataclass(frozen=True)
class Action:
    """The rule's answer: what to do, the stall count and rung start to carry into the next round's
    stats, the throttle to apply from now on, and why (for a log line or a failure's message)."""

    kind: ActionKind
    stalled: int
    throttle_percent: float = 0.0
    why: str = ""
    rung_started: int = 0


def _unthrottled_rate(stats: RoundStats) -> float:
    share = 1.0 - min(stats.throttle_percent, 99.99) / 100.0
    return stats.write_rate / share


def _on_pace(stats: RoundStats, policy: ConvergencePolicy) -> bool:
    """True when the round shrank the remaining set fast enough that, shrinking at that pace, it would
    cross within the switchover threshold in the rounds left."""
    rounds_left = policy.max_rounds - (stats.round_index - stats.rung_started + 1)
    target = stats.link_rate * policy.switchover_ms / 1000
    if rounds_left <= 0 or target <= 0 or stats.sent_bytes <= 0:
        return False
    needed = (target / stats.remaining_bytes) ** (1 / rounds_left)
    return stats.remaining_bytes <= needed * stats.sent_bytes


def next_action(stats: RoundStats, policy: ConvergencePolicy) -> Action:
    """The convergence rule: switch over, go on, throttle, fall back to quick, or fail (pure).

    - Switch over once the remaining set crosses the link within the threshold (and the downtime
      budget, when one is set).
    - A round that leaves more than 95 % of what it sent dirty again did not shrink the set; after
      ``stall_rounds`` such rounds in a row, or after ``max_rounds`` rounds on one rung (PreCopy,
      then AutoConverge), the ladder steps down.
    - AutoConverge throttles the guest, then raises the throttle by a step after every further round
      that does not converge: that does not shrink the remaining set at a pace that would reach the
      threshold within the rounds left (QEMU likewise raises its throttle whenever the guest dirties
      memory faster than the stream converges), up to its maximum; at the maximum the stall rounds
      count again. It is skipped (or left) at once when even the maximum throttle would leave the
      guest writing faster than the link carries: then it cannot converge, and waiting rounds for it
      would only run into the timeout.
    - Quick, when allowed, pauses the guest and copies the rest, unless that pause would exceed
      ``max_downtime_ms``; PostCopy, when allowed, runs the guest on the target at once (its pause is
      the device state's, not the remaining memory's, so no budget refuses it); otherwise the
      migration fails NotConverging and the VM stays.
    """
    rung = stats.rung_started
    if stats.remaining_bytes <= stats.link_rate * policy.switchover_ms / 1000:
        return Action(ActionKind.SwitchOver, 0, stats.throttle_percent, rung_started=rung)
    shrank = stats.round_index < 1 or stats.remaining_bytes <= STALL_SHRINK * stats.sent_bytes
    stalled = 0 if shrank else stats.stalled + 1
    at_limit = stats.round_index - rung + 1 >= policy.max_rounds
    # Auto-converge under way with room left: every round must keep pace, not merely shrink.
    raising = policy.auto_converge and 0 < stats.throttle_percent < policy.throttle_max_percent
    if not at_limit:
        if raising and shrank and _on_pace(stats, policy):
            return Action(ActionKind.Continue, stalled, stats.throttle_percent, rung_started=rung)
        if not raising and stalled < policy.stall_rounds:
            return Action(ActionKind.Continue, stalled, stats.throttle_percent, rung_started=rung)
    # The ladder: pre-copy alone stalled (or ran out of rounds), or a throttle did not help.
    entering = stats.throttle_percent == 0  # from PreCopy down to AutoConverge: a new rung, its own rounds
    if policy.auto_converge and (not at_limit or entering) and stats.throttle_percent < policy.throttle_max_percent:
        at_max = _unthrottled_rate(stats) * (1 - policy.throttle_max_percent / 100)
        if at_max < stats.link_rate:
            current = stats.throttle_percent
            throttle = min(current + policy.throttle_step_percent if current else policy.throttle_initial_percent,
                           policy.throttle_max_percent)
            return Action(ActionKind.Throttle, 0, throttle, f"auto-converge throttles the guest to {throttle:.0f} %",
                          rung_started=stats.round_index + 1 if entering else rung)
        hopeless = (f"even a {policy.throttle_max_percent:g} % throttle leaves the guest writing "
                    f"{at_max / MIB:.0f} MiB/s, more than the link's {stats.link_rate / MIB:.0f} MiB/s")
    else:
        hopeless = ""
    why = f"{stalled} rounds in a row did not shrink the remaining set" if not at_limit else \
        f"the limit of {policy.max_rounds} rounds {'with auto-converge ' if rung else ''}was reached"
    if raising and not at_limit and stalled < policy.stall_rounds:
        why = "the remaining set did not shrink fast enough to converge in the rounds left"
    if hopeless:
        why += f"; {hopeless}"
    if policy.fallback_to_postcopy:
        return Action(ActionKind.PostCopy, stalled, stats.throttle_percent, why)
    if policy.fallback_to_quick:
        predicted_ms = stats.remaining_bytes / stats.link_rate * 1000
        if policy.max_downtime_ms is not None and predicted_ms > policy.max_downtime_ms:
            return Action(ActionKind.Fail, stalled, stats.throttle_percent,
                          f"{why}; a quick switchover would pause the guest ~{predicted_ms:.0f} ms, over "
                          f"maxDowntimeMs={policy.max_downtime_ms:g}")
        return Action(ActionKind.Quick, stalled, stats.throttle_percent, why)
    return Action(ActionKind.Fail, stalled, stats.throttle_percent, why)
