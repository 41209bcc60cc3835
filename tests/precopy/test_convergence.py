"""The convergence rule (precopy.convergence.next_action): switch over, go on, throttle, fall back, fail. Pure."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmshift.api.migrationpolicy import MigrationPolicySpec
from vmshift.hypervisor.protocol import AutoConvergeSettings, MigrationRequest, MigrationTarget
from vmshift.precopy.convergence import (
    DEFAULTS,
    MIB,
    Action,
    ActionKind,
    ConvergencePolicy,
    RoundStats,
    next_action,
)
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView, Rung

LINK = 2.5 * MIB  # ~20 Mbit/s
DEFAULT = ConvergencePolicy(threshold_ms=1, max_rounds=30, stall_rounds=3, auto_converge=True,
                            throttle_initial_percent=20, throttle_step_percent=10, throttle_max_percent=99,
                            fallback_to_quick=True, max_downtime_ms=1)
TERMINAL = (ActionKind.SwitchOver, ActionKind.Quick, ActionKind.PostCopy, ActionKind.Fail)


def run(policy: ConvergencePolicy, write_rate: float, hot: float, first: float) -> list[Action]:
    """Rounds of a guest whose every round re-dirties ``hot`` bytes (saturated) unless throttled below the link."""
    actions: list[Action] = []
    sent, stalled, throttle, rung = first, 0, 0.0, 0
    for index in range(2 * policy.max_rounds):
        rate = write_rate * (1 - throttle / 100)
        remaining = min(hot, rate * sent / LINK)
        action = next_action(RoundStats(index, remaining, sent, LINK, rate, throttle, stalled, rung), policy)
        actions.append(action)
        if action.kind not in (ActionKind.Continue, ActionKind.Throttle):
            break
        stalled, throttle, sent, rung = action.stalled, action.throttle_percent, remaining, action.rung_started
    return actions


def test_a_hot_guest_no_throttle_can_tame_fails_after_the_stall_rounds() -> None:
    actions = run(DEFAULT, write_rate=400 * MIB, hot=4 * MIB, first=8 * MIB)
    assert [a.kind for a in actions] == [ActionKind.Continue] * 3 + [ActionKind.Fail]
    assert "maxDowntimeMs=1" in actions[-1].why and "99 % throttle" in actions[-1].why


def test_without_a_downtime_budget_the_hot_guest_falls_back_to_quick() -> None:
    policy = dataclasses.replace(DEFAULT, max_downtime_ms=None)
    assert [a.kind for a in run(policy, 400 * MIB, 4 * MIB, 8 * MIB)][-1] is ActionKind.Quick


def test_a_guest_throttling_can_tame_climbs_a_step_every_round_that_does_not_shrink() -> None:
    actions = run(DEFAULT, write_rate=100 * MIB, hot=4 * MIB, first=8 * MIB)
    kinds = [a.kind for a in actions]
    assert kinds[:4] == [ActionKind.Continue] * 3 + [ActionKind.Throttle]
    throttles = [a.throttle_percent for a in actions if a.kind is ActionKind.Throttle]
    assert throttles[:3] == [20, 30, 40], throttles
    assert kinds[-1] is ActionKind.SwitchOver, kinds


# (what happened in the round, the policy, what the rule must answer)
CASES: list[tuple[str, RoundStats, ConvergencePolicy, ActionKind, float]] = [
    ("the rest crosses within the threshold", RoundStats(5, LINK / 1000, MIB, LINK, MIB), DEFAULT,
     ActionKind.SwitchOver, 0),
    ("round 0 never counts as a stall", RoundStats(0, 8 * MIB, 8 * MIB, LINK, 100 * MIB), DEFAULT,
     ActionKind.Continue, 0),
    ("a shrinking round goes on", RoundStats(4, 4 * MIB, 8 * MIB, LINK, MIB, stalled=2), DEFAULT,
     ActionKind.Continue, 0),
    ("the third stalled round throttles at the initial percent", RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB,
                                                                            stalled=2),
     DEFAULT, ActionKind.Throttle, 20),
    ("a throttled round that does not shrink raises the throttle by a step",
     RoundStats(6, 8 * MIB, 8 * MIB, LINK, 8 * MIB, throttle_percent=20), DEFAULT, ActionKind.Throttle, 30),
    ("a throttled round that shrinks too slowly for the rounds left raises the throttle",
     RoundStats(6, 7.5 * MIB, 8 * MIB, LINK, 8 * MIB, throttle_percent=20), DEFAULT, ActionKind.Throttle, 30),
    ("a throttled round on pace keeps the throttle", RoundStats(6, 2 * MIB, 8 * MIB, LINK, MIB, throttle_percent=20),
     DEFAULT, ActionKind.Continue, 20),
    ("the step stops at the maximum", RoundStats(6, 8 * MIB, 8 * MIB, LINK, MIB, throttle_percent=95), DEFAULT,
     ActionKind.Throttle, 99),
    ("at the maximum throttle the stall rounds count again",
     RoundStats(8, 8 * MIB, 8 * MIB, LINK, MIB, throttle_percent=99), DEFAULT, ActionKind.Continue, 99),
    ("without AutoConverge a stall fails when Quick is not allowed",
     RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB, stalled=2),
     dataclasses.replace(DEFAULT, auto_converge=False, fallback_to_quick=False), ActionKind.Fail, 0),
    ("without AutoConverge a stall falls back to quick within the budget",
     RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB, stalled=2),
     dataclasses.replace(DEFAULT, auto_converge=False, max_downtime_ms=10_000), ActionKind.Quick, 0),
    ("a quick fallback over the budget fails instead", RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB, stalled=2),
     dataclasses.replace(DEFAULT, auto_converge=False, max_downtime_ms=100), ActionKind.Fail, 0),
    ("PreCopy's round limit steps down to AutoConverge even while it shrinks",
     RoundStats(29, 4 * MIB, 8 * MIB, LINK, MIB), DEFAULT, ActionKind.Throttle, 20),
    ("PreCopy's round limit ends pre-copy without AutoConverge", RoundStats(29, 4 * MIB, 8 * MIB, LINK, MIB),
     dataclasses.replace(DEFAULT, auto_converge=False), ActionKind.Fail, 0),
    ("AutoConverge's own round limit ends it", RoundStats(44, 2 * MIB, 8 * MIB, LINK, MIB, throttle_percent=50,
                                                          rung_started=15), DEFAULT, ActionKind.Fail, 50),
    ("a threshold above the budget switches over only within the budget",
     RoundStats(5, LINK * 0.05, MIB, LINK, MIB), dataclasses.replace(DEFAULT, threshold_ms=100, max_downtime_ms=10),
     ActionKind.Continue, 0),
    ("no throttle can tame a guest writing 100x the link", RoundStats(4, 8 * MIB, 8 * MIB, LINK, 250 * LINK,
                                                                        stalled=2),
     dataclasses.replace(DEFAULT, max_downtime_ms=None), ActionKind.Quick, 0),
    ("a ladder ending in PostCopy switches to it when pre-copy stalls",
     RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB, stalled=2),
     dataclasses.replace(DEFAULT, auto_converge=False, fallback_to_quick=False, fallback_to_postcopy=True),
     ActionKind.PostCopy, 0),
    ("a downtime budget does not refuse post-copy (its pause is the device state's)",
     RoundStats(4, 8 * MIB, 8 * MIB, LINK, 10 * MIB, stalled=2),
     dataclasses.replace(DEFAULT, auto_converge=False, fallback_to_quick=False, fallback_to_postcopy=True,
                         max_downtime_ms=1), ActionKind.PostCopy, 0),
    ("PostCopy comes after AutoConverge's round limit", RoundStats(44, 2 * MIB, 8 * MIB, LINK, MIB,
                                                                   throttle_percent=50, rung_started=15),
     dataclasses.replace(DEFAULT, fallback_to_quick=False, fallback_to_postcopy=True), ActionKind.PostCopy, 50),
]


@pytest.mark.parametrize(("stats", "policy", "kind", "throttle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_rule_in_a_table(stats: RoundStats, policy: ConvergencePolicy, kind: ActionKind, throttle: float) -> None:
    action = next_action(stats, policy)
    assert (action.kind, action.throttle_percent) == (kind, throttle), action


def test_defaults_are_the_api_models_and_every_layer_agrees() -> None:
    """The policy's defaults are written once (the API model); the agent's request, the scheduler's
    view and the model read them from there."""
    spec = MigrationPolicySpec()
    assert (DEFAULTS.threshold_ms, DEFAULTS.max_rounds, DEFAULTS.stall_rounds) == (
        spec.switchoverThresholdMs, spec.maxRounds, spec.stallRounds)
    assert (DEFAULTS.throttle_initial_percent, DEFAULTS.throttle_step_percent, DEFAULTS.throttle_max_percent) == (
        spec.autoConverge.initialPercent, spec.autoConverge.stepPercent, spec.autoConverge.maxPercent)
    request = MigrationRequest(migration_id="m", vm_id="v", target=MigrationTarget(
        host="h", port=1, ticket="t", bandwidth_mbps=0), auto_converge=AutoConvergeSettings(enabled=True))
    assert request.convergence() == dataclasses.replace(DEFAULTS, auto_converge=True)
    assert DEFAULT_POLICY.convergence() == dataclasses.replace(DEFAULTS, auto_converge=True)


def test_a_postcopy_rung_reaches_the_rule_as_the_agent_receives_it() -> None:
    view = MigrationPolicyView("p", ladder=(Rung.PreCopy, Rung.PostCopy))
    assert view.allows_postcopy and not view.allows_quick
    request = MigrationRequest(migration_id="m", vm_id="v", target=MigrationTarget(
        host="h", port=1, ticket="t", bandwidth_mbps=0), fallback_to_postcopy=True, max_downtime_ms=40)
    assert view.convergence(max_downtime_ms=40) == request.convergence()
    assert request.convergence().fallback_to_postcopy


def test_a_policy_reaches_the_rule_as_the_agent_receives_it() -> None:
    view = MigrationPolicyView("p", threshold_ms=5, max_rounds=12, stall_rounds=2, ladder=(Rung.PreCopy, Rung.Quick),
                      throttle=(30, 5, 80))
    request = MigrationRequest(
        migration_id="m", vm_id="v", target=MigrationTarget(host="h", port=1, ticket="t", bandwidth_mbps=0),
        threshold_ms=5, max_rounds=12, stall_rounds=2, fallback_to_quick=True, max_downtime_ms=40,
        auto_converge=AutoConvergeSettings(enabled=False, initial_percent=30, step_percent=5, max_percent=80))
    assert view.convergence(max_downtime_ms=40) == request.convergence()


policies = st.builds(
    ConvergencePolicy,
    threshold_ms=st.floats(0.5, 500),
    max_rounds=st.integers(1, 60),
    stall_rounds=st.integers(1, 10),
    auto_converge=st.booleans(),
    throttle_initial_percent=st.floats(1, 99),
    throttle_step_percent=st.floats(1, 99),
    throttle_max_percent=st.floats(1, 99),
    fallback_to_quick=st.booleans(),
    fallback_to_postcopy=st.booleans(),
    max_downtime_ms=st.none() | st.floats(1, 10_000),
)


@given(st.integers(0, 40), st.floats(0, 1e9), st.floats(1, 1e9), st.floats(1, 1e10), st.floats(0, 1e10),
       st.floats(0, 99), st.integers(0, 100), st.integers(0, 40), policies)
def test_the_rule_always_answers_within_its_limits(
        index: int, remaining: float, sent: float, link: float, rate: float, throttle: float, stalled: int,
        rung: int, policy: ConvergencePolicy) -> None:
    rung = min(rung, index) if throttle > 0 else 0
    action = next_action(RoundStats(index, remaining, sent, link, rate, throttle, stalled, rung), policy)
    assert action.throttle_percent <= max(policy.throttle_max_percent, throttle)
    if action.kind is ActionKind.Throttle:
        assert policy.auto_converge and action.throttle_percent > throttle
    if action.kind is ActionKind.Quick:
        assert policy.fallback_to_quick and not policy.fallback_to_postcopy
    if action.kind is ActionKind.PostCopy:
        assert policy.fallback_to_postcopy
    if index - rung + 1 >= policy.max_rounds:  # a rung's round limit: step down the ladder
        assert action.kind in TERMINAL or (action.kind is ActionKind.Throttle and throttle == 0
                                           and action.rung_started == index + 1)
    # Never a pause over the downtime budget: a switchover or a quick fallback moves the remaining
    # set while the guest is paused. Only a policy without a budget may pause longer.
    if action.kind in (ActionKind.SwitchOver, ActionKind.Quick) and policy.max_downtime_ms is not None:
        assert remaining / link * 1000 <= policy.max_downtime_ms * (1 + 1e-9)


@given(policies, st.floats(1e5, 1e10), st.floats(1e3, 1e12), st.lists(st.floats(0.96, 10), min_size=200,
                                                                      max_size=200))
def test_a_stall_always_ends_within_the_bound(policy: ConvergencePolicy, link: float, first: float,
                                              growth: list[float]) -> None:
    """However the guest writes, rounds that never shrink end pre-copy (switch over, fall back or
    fail) within ``stall_bound()`` rounds, counting round 0."""
    sent, stalled, throttle, rung = first, 0, 0.0, 0
    for index, factor in enumerate(growth):
        remaining = sent * factor if index else sent * min(factor, 1.0)
        remaining = max(remaining, link * policy.switchover_ms / 1000 * 1.01)  # never small enough by itself
        action = next_action(RoundStats(index, remaining, sent, link, remaining / max(sent / link, 1e-9),
                                        throttle, stalled, rung), policy)
        if action.kind in TERMINAL:
            assert index + 1 <= policy.stall_bound(), (index, policy)
            return
        stalled, throttle, sent, rung = action.stalled, action.throttle_percent, remaining, action.rung_started
    raise AssertionError(f"pre-copy still going after {len(growth)} rounds that never shrank: {policy}")
