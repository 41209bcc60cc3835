"""The RemediationPolicy state machine: debounce, correlation, cooldown, release, escalation, determinism."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.remediationpolicy import ReleaseMode, RemediationAction
from vmshift.remediation.decide import (
    CorrelationRule,
    Decision,
    DecisionKind,
    HostState,
    Remediation,
    RemediationPolicyView,
    SignalState,
    decide,
)

FAN = RemediationPolicyView("fan-evacuate", RemediationAction.EvacuateCritical, alertname="FanFailure",
                            severity="critical", priority_threshold=100, debounce_seconds=60, cooldown_seconds=600,
                            hold_seconds=300)
HOT = RemediationPolicyView("overheat-drain", RemediationAction.Maintenance, alertname="HighTemperature",
                 debounce_seconds=30, correlation=CorrelationRule(("Fan", "HighTemperature"), 120))
ECC = RemediationPolicyView("ecc-quarantine", RemediationAction.Quarantine, alertname="CorrectedMemoryErrors",
                 debounce_seconds=0, release=ReleaseMode.Annotation)


def alert(name: str, first_seen: float, *, severity: str = "critical", host: str = "h1",
          resolved_at: float | None = None, signal: str | None = None) -> SignalState:
    labels = {"alertname": name, "severity": severity, "host": host}
    if signal:
        labels["signal"] = signal
    return SignalState(labels, first_seen, resolved_at)


def kinds(decisions: list[Decision]) -> list[tuple[DecisionKind, str, str]]:
    return [(d.kind, d.policy, d.reason) for d in decisions]


def test_debounce_then_start() -> None:
    state = HostState("h1", (alert("FanFailure", 1000, signal="Fan"),))
    [waiting] = decide([FAN], state, 1030)
    assert (waiting.kind, waiting.reason, waiting.wait_until) == (DecisionKind.Ignore, "Debouncing", 1060)
    assert "RemediationPolicy fan-evacuate saw FanFailure on h1 30 s ago" in waiting.message
    [start] = decide([FAN], state, 1060)
    assert (start.kind, start.action, start.priority_threshold) == (DecisionKind.Start,
                                                                    RemediationAction.EvacuateCritical, 100)
    assert "starts EvacuateCritical on h1" in start.message and "priority >= 100" in start.message


def test_non_matching_alerts_do_nothing() -> None:
    state = HostState("h1", (alert("FanFailure", 0, severity="warning"), alert("FanFailure", 0, host="h2")))
    assert decide([FAN], state, 10_000) == []


def test_correlation_needs_every_signal_within_the_window() -> None:
    hot_only = HostState("h1", (alert("HighTemperature", 0),))
    [d] = decide([HOT], hot_only, 1000)
    assert d.reason == "CorrelationNotMet" and "waits on h1 for Fan together with HighTemperature" in d.message
    far_apart = HostState("h1", (alert("HighTemperature", 0), alert("FanFailure", 500, signal="Fan")))
    [d] = decide([HOT], far_apart, 1000)
    assert d.reason == "CorrelationNotMet" and "500 s apart" in d.message
    close = HostState("h1", (alert("HighTemperature", 0), alert("FanFailure", 100, signal="Fan")))
    [d] = decide([HOT], close, 120)
    assert d.reason == "Debouncing" and d.wait_until == 130  # debounce counts from the last signal
    starts = [x for x in decide([HOT], close, 130) if x.kind is DecisionKind.Start]
    assert [s.policy for s in starts] == ["overheat-drain"]


def test_release_after_hold_and_cooldown() -> None:
    current = Remediation("fan-evacuate", RemediationAction.EvacuateCritical, started_at=100)
    firing = HostState("h1", (alert("FanFailure", 0),), current)
    assert kinds(decide([FAN], firing, 500)) == [(DecisionKind.Keep, "fan-evacuate", "AlertsFiring")]
    resolved = HostState("h1", (alert("FanFailure", 0, resolved_at=1000),), current)
    [hold] = decide([FAN], resolved, 1100)
    assert (hold.kind, hold.reason, hold.wait_until) == (DecisionKind.Keep, "Holding", 1300)
    [end] = decide([FAN], resolved, 1300)
    assert (end.kind, end.reason) == (DecisionKind.End, "AlertsResolved")
    ended = Remediation("fan-evacuate", RemediationAction.EvacuateCritical, started_at=100, ended_at=1300)
    again = HostState("h1", (alert("FanFailure", 1400),), ended)
    [cool] = decide([FAN], again, 1500)
    assert (cool.reason, cool.wait_until) == ("CoolingDown", 1900)
    assert decide([FAN], again, 1900)[0].kind is DecisionKind.Start


def test_release_by_annotation() -> None:
    current = Remediation("ecc-quarantine", RemediationAction.Quarantine, started_at=0)
    state = HostState("h1", (alert("CorrectedMemoryErrors", 0, resolved_at=10),), current)
    [keep] = decide([ECC], state, 10_000)
    assert keep.reason == "AwaitingRelease" and "vmshift.io/release-remediation" in keep.message
    released = HostState("h1", state.alerts, current, annotations={"vmshift.io/release-remediation": ""})
    assert decide([ECC], released, 10_000)[0].reason == "ReleasedByAnnotation"


def test_stronger_action_supersedes_weaker_and_ties_go_by_name() -> None:
    current = Remediation("ecc-quarantine", RemediationAction.Quarantine, started_at=0)
    state = HostState("h1", (alert("CorrectedMemoryErrors", 0), alert("FanFailure", 0, signal="Fan")), current)
    assert kinds(decide([ECC, FAN], state, 100)) == [
        (DecisionKind.End, "ecc-quarantine", "Superseded"),
        (DecisionKind.Start, "fan-evacuate", "Escalated"),
    ]
    # A weaker or equal policy does not displace the acting one.
    acting = Remediation("fan-evacuate", RemediationAction.EvacuateCritical, started_at=0)
    state = HostState("h1", state.alerts, acting)
    assert kinds(decide([ECC, FAN], state, 100)) == [
        (DecisionKind.Keep, "fan-evacuate", "AlertsFiring"),
        (DecisionKind.Ignore, "ecc-quarantine", "AlreadyRemediating"),
    ]
    twin = RemediationPolicyView("a-fan", RemediationAction.EvacuateCritical, alertname="FanFailure",
                                 priority_threshold=1, debounce_seconds=0)
    fresh = HostState("h1", (alert("FanFailure", 0),))
    assert kinds(decide([FAN, twin], fresh, 100)) == [
        (DecisionKind.Start, "a-fan", "Triggered"),
        (DecisionKind.Ignore, "fan-evacuate", "Superseded"),
    ]


def test_deleted_policy_ends_and_suspended_starts_nothing() -> None:
    orphan = Remediation("gone", RemediationAction.Quarantine, started_at=0)
    [end] = decide([FAN], HostState("h1", (), orphan), 100)
    assert (end.kind, end.reason, end.policy) == (DecisionKind.End, "PolicyDeleted", "gone")
    paused = RemediationPolicyView("paused", RemediationAction.Quarantine, alertname="FanFailure", suspend=True)
    [ignored] = decide([paused], HostState("h1", (alert("FanFailure", 0),)), 1000)
    assert ignored.reason == "Suspended"


POLICIES = [FAN, HOT, ECC,
            RemediationPolicyView("temp-quarantine", RemediationAction.Quarantine, alertname="HighTemperature",
                       debounce_seconds=10, cooldown_seconds=100)]


@settings(max_examples=80, deadline=None)
@given(
    alerts=st.lists(
        st.tuples(st.sampled_from(["FanFailure", "HighTemperature", "CorrectedMemoryErrors"]),
                  st.integers(0, 1000), st.sampled_from([None, None, 900, 1100]), st.sampled_from(["critical",
                                                                                                   "warning"])),
        max_size=5,
    ),
    current=st.sampled_from([None, *[p.name for p in POLICIES], "gone"]),
    ended=st.booleans(),
    now=st.integers(0, 3000),
    rng=st.randoms(use_true_random=False),
)
def test_decisions_are_deterministic_and_consistent(
    alerts: list[tuple[str, int, int | None, str]], current: str | None, ended: bool, now: int, rng: Random
) -> None:
    signals = tuple(alert(n, t, resolved_at=r, severity=s, signal="Fan" if n == "FanFailure" else None)
                    for n, t, r, s in alerts)
    action = next((p.action for p in POLICIES if p.name == current), RemediationAction.Quarantine)
    remediation = Remediation(current, action, 0, 500 if ended else None) if current else None
    state = HostState("h1", signals, remediation)
    first = decide(POLICIES, state, now)
    shuffled = list(POLICIES)
    rng.shuffle(shuffled)
    shuffled_alerts = list(signals)
    rng.shuffle(shuffled_alerts)
    assert decide(shuffled, HostState("h1", tuple(shuffled_alerts), remediation), now) == first
    starts = [d for d in first if d.kind is DecisionKind.Start]
    assert len(starts) <= 1  # one remediation per host
    active = remediation is not None and remediation.active
    if starts and active:  # only by escalation, ending the current one first
        assert first[0].kind is DecisionKind.End and first[0].policy == current
    assert len({d.policy for d in first}) == len(first)
