"""The convergence rule (precopy.next_step): switch over, go on, throttle, fall back, fail. Pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmshift.hypervisor.precopy import MIB, Decision, Ladder, RoundFacts, Step, next_step

LINK = 2.5 * MIB  # ~20 Mbit/s
DEFAULT = Ladder(threshold_ms=1, max_rounds=30, stall_rounds=3, auto_converge=True, throttle_initial=20,
                 throttle_step=10, throttle_max=99, fallback_to_quick=True, max_downtime_ms=1)


def run(ladder: Ladder, write_rate: float, hot: float, first: float) -> list[Decision]:
    """Rounds of a guest whose every round re-dirties ``hot`` bytes (saturated) unless throttled below the link."""
    decisions: list[Decision] = []
    sent, stalled, throttle = first, 0, 0.0
    for index in range(ladder.max_rounds):
        rate = write_rate * (1 - throttle / 100)
        remaining = min(hot, rate * sent / LINK)
        decision = next_step(RoundFacts(index, remaining, sent, LINK, rate, throttle, stalled), ladder)
        decisions.append(decision)
        if decision.step not in (Step.Continue, Step.Throttle):
            break
        stalled, throttle, sent = decision.stalled, decision.throttle_percent, remaining
    return decisions


def test_a_hot_guest_no_throttle_can_tame_fails_after_the_stall_rounds() -> None:
    decisions = run(DEFAULT, write_rate=400 * MIB, hot=4 * MIB, first=8 * MIB)
    assert [d.step for d in decisions] == [Step.Continue] * 3 + [Step.Fail]
    assert "maxDowntimeMs=1" in decisions[-1].why and "99 % throttle" in decisions[-1].why


def test_without_a_downtime_budget_the_hot_guest_falls_back_to_quick() -> None:
    ladder = Ladder(**{**DEFAULT.__dict__, "max_downtime_ms": None})
    assert [d.step for d in run(ladder, 400 * MIB, 4 * MIB, 8 * MIB)][-1] is Step.Quick


def test_a_guest_throttling_can_tame_climbs_a_step_every_round_that_does_not_shrink() -> None:
    decisions = run(DEFAULT, write_rate=100 * MIB, hot=4 * MIB, first=8 * MIB)
    steps = [d.step for d in decisions]
    assert steps[:4] == [Step.Continue] * 3 + [Step.Throttle]
    throttles = [d.throttle_percent for d in decisions if d.step is Step.Throttle]
    assert throttles[:3] == [20, 30, 40], throttles
    assert steps[-1] is Step.SwitchOver, steps


def test_a_small_remaining_set_switches_over() -> None:
    facts = RoundFacts(round_index=5, remaining_bytes=LINK / 1000, sent_bytes=MIB, link_rate=LINK, write_rate=MIB)
    assert next_step(facts, DEFAULT).step is Step.SwitchOver


@given(st.integers(0, 40), st.floats(0, 1e9), st.floats(1, 1e9), st.floats(1, 1e10), st.floats(0, 1e10),
       st.floats(0, 99), st.integers(0, 100), st.booleans(), st.booleans())
def test_the_rule_always_answers_and_never_throttles_past_the_maximum(
        index: int, remaining: float, sent: float, link: float, rate: float, throttle: float, stalled: int,
        auto: bool, quick: bool) -> None:
    ladder = Ladder(auto_converge=auto, fallback_to_quick=quick, throttle_max=90, max_rounds=30)
    decision = next_step(RoundFacts(index, remaining, sent, link, rate, throttle, stalled), ladder)
    assert decision.throttle_percent <= max(90, throttle)
    if decision.step is Step.Throttle:
        assert auto and decision.throttle_percent > throttle
    if decision.step is Step.Quick:
        assert quick
    if index + 1 >= 30:
        assert decision.step not in (Step.Continue, Step.Throttle)
