"""The RemediationPolicy state machine: start, keep, end or ignore. Pure: no I/O, no clocks.

What RemediationPolicies do about one host's health signals right now; ``now`` is an argument, in
seconds. The remediation controller gathers a host's alerts (from Alertmanager's webhook and from
its agent's sensors, see ``alerts.py``) with the times it first saw each fire and saw it resolve,
plus the remediation acting on the host (or the last one), calls :func:`decide`, and applies the
decisions in order: quarantine, evacuate (``plan_drain`` with ``only=priority >= threshold``),
drain, or return the host to service. Each decision carries ``wait_until``, the time at which the
answer may change by itself (a debounce, hold or cooldown ends), so the controller sets one timer
instead of polling.

Rules, per policy (policies in name order, so input order never matters):

* *Match*: an alert matches when it fires, names the host in the policy's host label, and carries
  every label the match gives (alertname, severity, others).
* *Correlation* (optional): every listed signal (an alertname, or a sensor kind such as ``Fan``
  carried in the ``signal`` label) must fire on the host, all started within ``window_seconds``.
* *Debounce*: the condition must have held for ``debounce_seconds`` before the action starts.
* *Cooldown*: after this policy's remediation on this host ends, it does not act there again for
  ``cooldown_seconds``.
* One remediation acts on a host at a time. A stronger action (Quarantine < EvacuateCritical <
  Maintenance) that becomes due supersedes a weaker one (end it, start the stronger); equal or
  weaker ones are ignored while it lasts. Among several due at once the strongest wins, then the
  first by name.
* *Release*: ``AlertResolved`` ends the action when none of the policy's matched alerts fires and
  the last one resolved at least ``hold_seconds`` ago; ``Annotation`` ends it when a person sets
  the release annotation on the Host. A remediation whose policy was deleted ends. A suspended
  policy starts nothing, but what it started runs to its release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

from vmshift.api.common import Selector
from vmshift.api.labels import RELEASE_ANNOTATION
from vmshift.api.remediationpolicy import ReleaseMode, RemediationAction

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_TIMES: Mapping[str, float] = MappingProxyType({})

#: How strong each action is: a stronger one supersedes a weaker one on the same host.
STRENGTH = {RemediationAction.Quarantine: 1, RemediationAction.EvacuateCritical: 2, RemediationAction.Maintenance: 3}


@dataclass(frozen=True)
class CorrelationRule:
    signals: tuple[str, ...]
    window_seconds: float = 300.0


@dataclass(frozen=True)
class RemediationPolicyView:
    """A RemediationPolicy as the decision sees it (seconds everywhere)."""

    name: str
    action: RemediationAction
    alertname: str | None = None
    severity: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    host_label: str = "host"
    priority_threshold: int | None = None
    correlation: CorrelationRule | None = None
    debounce_seconds: float = 60.0
    cooldown_seconds: float = 600.0
    release: ReleaseMode = ReleaseMode.AlertResolved
    hold_seconds: float = 300.0
    release_annotation: str = RELEASE_ANNOTATION
    suspend: bool = False

    def matches(self, labels: Mapping[str, str], host: str) -> bool:
        """True when an alert with ``labels`` is one this policy reacts to, about ``host``."""
        if labels.get(self.host_label) != host:
            return False
        return self.selector.matches(labels)

    @cached_property
    def selector(self) -> Selector:
        """The match as a label selector over the alert's labels (alertname, severity, the others)."""
        named = [("alertname", self.alertname), ("severity", self.severity)]
        pairs = [(k, v) for k, v in named if v is not None] + sorted(self.labels.items())
        return Selector(tuple(pairs))

    def describe_match(self) -> str:
        parts = [f"alertname={self.alertname}"] if self.alertname else []
        parts += [f"severity={self.severity}"] if self.severity else []
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        return ", ".join(parts) or "any alert"


@dataclass(frozen=True)
class SignalState:
    """One alert (or sensor signal) about the host: its labels, when it was first seen firing, and
    when it was seen resolved (None while it fires)."""

    labels: Mapping[str, str]
    first_seen: float
    resolved_at: float | None = None

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "(unnamed)")


@dataclass(frozen=True)
class Remediation:
    """The remediation acting on a host (``ended_at`` None), or the last one that did."""

    policy: str
    action: RemediationAction
    started_at: float
    ended_at: float | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class HostState:
    """What the decision needs to know about one host.

    ``last_ended``: per policy, when its last remediation on this host ended (for cooldowns;
    ``remediation`` counts too when it has ended). ``annotations``: the Host's annotations (for
    release by annotation).
    """

    host: str
    alerts: tuple[SignalState, ...] = ()
    remediation: Remediation | None = None
    last_ended: Mapping[str, float] = field(default_factory=lambda: _NO_TIMES, hash=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)


class DecisionKind(StrEnum):
    Start = "Start"
    Keep = "Keep"
    End = "End"
    Ignore = "Ignore"


@dataclass(frozen=True)
class Decision:
    """One thing to do (or not) about the host. ``reason`` is a CamelCase word for events and
    conditions; ``message`` a sentence naming the policy; ``wait_until`` when to look again."""

    kind: DecisionKind
    policy: str
    host: str
    action: RemediationAction
    reason: str
    message: str
    signals: tuple[str, ...] = ()
    priority_threshold: int | None = None
    wait_until: float | None = None


@dataclass(frozen=True)
class _Verdict:
    due: bool
    reason: str
    message: str
    signals: tuple[str, ...] = ()
    since: float | None = None
    wait_until: float | None = None


def _what(policy: RemediationPolicyView, host: str) -> str:
    if policy.action is RemediationAction.Quarantine:
        return f"{host} takes no new VMs and no inbound migrations"
    if policy.action is RemediationAction.EvacuateCritical:
        return (
            f"VMs with priority >= {policy.priority_threshold} move off {host}, highest first, and {host} "
            f"takes no new VMs"
        )
    return f"{host} is drained of every VM and put in maintenance"


def _active_signal(state: HostState, policy: RemediationPolicyView, signal: str) -> SignalState | None:
    """The latest-started firing alert about the host whose alertname or ``signal`` label is ``signal``."""
    found = [
        a for a in state.alerts
        if a.active and a.labels.get(policy.host_label) == state.host
        and signal in (a.labels.get("alertname"), a.labels.get("signal"))
    ]
    return max(found, key=lambda a: a.first_seen) if found else None


def _last_end(policy: RemediationPolicyView, state: HostState) -> float | None:
    times = [t for t in (state.last_ended.get(policy.name),) if t is not None]
    if state.remediation is not None and state.remediation.policy == policy.name and state.remediation.ended_at:
        times.append(state.remediation.ended_at)
    return max(times) if times else None


def _evaluate(policy: RemediationPolicyView, state: HostState, now: float) -> _Verdict | None:
    """Whether ``policy`` is due to act on the host now; None when no alert matches it at all."""
    matched = [a for a in state.alerts if a.active and policy.matches(a.labels, state.host)]
    if not matched:
        return None
    names = tuple(sorted({a.name for a in matched}))
    since = min(a.first_seen for a in matched)
    if policy.suspend:
        return _Verdict(False, "Suspended", f"RemediationPolicy {policy.name} is suspended and starts nothing "
                        f"on {state.host} (matched {', '.join(names)}).", names)
    if policy.correlation is not None:
        seen = {s: _active_signal(state, policy, s) for s in policy.correlation.signals}
        missing = sorted(s for s, a in seen.items() if a is None)
        present = {s: a for s, a in seen.items() if a is not None}
        if missing:
            have = ", ".join(sorted(present)) or "none"
            return _Verdict(
                False, "CorrelationNotMet",
                f"RemediationPolicy {policy.name} waits on {state.host} for {', '.join(missing)} together with "
                f"{', '.join(names)} within {policy.correlation.window_seconds:.0f} s (signals seen: {have}).",
                names,
            )
        starts = [a.first_seen for a in present.values()]
        span = max(starts) - min(starts)
        if span > policy.correlation.window_seconds:
            return _Verdict(
                False, "CorrelationNotMet",
                f"RemediationPolicy {policy.name} does not act on {state.host}: its signals "
                f"{', '.join(sorted(present))} started {span:.0f} s apart, more than the "
                f"{policy.correlation.window_seconds:.0f} s window.",
                names,
            )
        since = max(since, max(starts))
        names = tuple(sorted(set(names) | set(present)))
    due_at = since + policy.debounce_seconds
    if now < due_at:
        return _Verdict(
            False, "Debouncing",
            f"RemediationPolicy {policy.name} saw {', '.join(names)} on {state.host} {now - since:.0f} s ago and "
            f"waits until it has held for {policy.debounce_seconds:.0f} s before acting.",
            names, since, due_at,
        )
    ended = _last_end(policy, state)
    if ended is not None and now < ended + policy.cooldown_seconds:
        return _Verdict(
            False, "CoolingDown",
            f"RemediationPolicy {policy.name} ended its last action on {state.host} {now - ended:.0f} s ago and "
            f"does not act there again for {policy.cooldown_seconds:.0f} s.",
            names, since, ended + policy.cooldown_seconds,
        )
    return _Verdict(
        True, "Triggered",
        f"RemediationPolicy {policy.name} starts {policy.action.value} on {state.host}: {', '.join(names)} "
        f"({policy.describe_match()}) active for {now - since:.0f} s; {_what(policy, state.host)}.",
        names, since,
    )


def _release(policy: RemediationPolicyView, state: HostState, current: Remediation, now: float) -> Decision:
    """Keep or End the remediation ``policy`` owns on the host."""
    def decision(kind: DecisionKind, reason: str, message: str, wait_until: float | None = None) -> Decision:
        return Decision(kind, policy.name, state.host, current.action, reason, message,
                        priority_threshold=policy.priority_threshold, wait_until=wait_until)

    if policy.release is ReleaseMode.Annotation:
        if policy.release_annotation in state.annotations:
            return decision(DecisionKind.End, "ReleasedByAnnotation",
                            f"RemediationPolicy {policy.name} ends {current.action.value} on {state.host}: "
                            f"annotation {policy.release_annotation} is set.")
        return decision(DecisionKind.Keep, "AwaitingRelease",
                        f"RemediationPolicy {policy.name} keeps {current.action.value} on {state.host} until a "
                        f"person sets annotation {policy.release_annotation} on the Host.")
    mine = [a for a in state.alerts if policy.matches(a.labels, state.host)]
    firing = sorted({a.name for a in mine if a.active})
    if firing:
        return decision(DecisionKind.Keep, "AlertsFiring",
                        f"RemediationPolicy {policy.name} keeps {current.action.value} on {state.host}: "
                        f"{', '.join(firing)} still firing.")
    resolved = [a.resolved_at for a in mine if a.resolved_at is not None]
    last = max(resolved) if resolved else current.started_at
    if now - last >= policy.hold_seconds:
        return decision(DecisionKind.End, "AlertsResolved",
                        f"RemediationPolicy {policy.name} ends {current.action.value} on {state.host}: its alerts "
                        f"resolved {now - last:.0f} s ago (hold {policy.hold_seconds:.0f} s); the host returns "
                        f"to service.")
    return decision(DecisionKind.Keep, "Holding",
                    f"RemediationPolicy {policy.name} keeps {current.action.value} on {state.host}: its alerts "
                    f"resolved {now - last:.0f} s ago and must stay resolved for {policy.hold_seconds:.0f} s.",
                    last + policy.hold_seconds)


def _start(policy: RemediationPolicyView, state: HostState, verdict: _Verdict, reason: str, message: str) -> Decision:
    return Decision(DecisionKind.Start, policy.name, state.host, policy.action, reason, message,
                    verdict.signals, policy.priority_threshold)


def _strongest(policies: Sequence[RemediationPolicyView]) -> RemediationPolicyView:
    """The strongest action among ``policies``; on a tie the first by name."""
    return sorted(policies, key=lambda p: (-STRENGTH[p.action], p.name))[0]


def decide(policies: Sequence[RemediationPolicyView], host_state: HostState, now: float) -> list[Decision]:
    """Every decision the policies make about ``host_state.host`` at ``now`` (see the module rules).

    Order: End decisions first, then Start, then Keep, then Ignore (each by policy name); apply them
    in that order. Policies none of whose alerts fire on the host produce nothing.
    """
    ordered = sorted(policies, key=lambda p: p.name)
    by_name = {p.name: p for p in ordered}
    current = host_state.remediation if host_state.remediation and host_state.remediation.active else None
    verdicts = {p.name: v for p in ordered if (v := _evaluate(p, host_state, now)) is not None}
    due = [p for p in ordered if p.name in verdicts and verdicts[p.name].due]
    decisions: list[Decision] = []
    winner: RemediationPolicyView | None = None
    if current is not None:
        owner = by_name.get(current.policy)
        stronger = [p for p in due if p.name != current.policy and STRENGTH[p.action] > STRENGTH[current.action]]
        if stronger:
            winner = _strongest(stronger)
            decisions.append(Decision(
                DecisionKind.End, current.policy, host_state.host, current.action, "Superseded",
                f"RemediationPolicy {current.policy} ends {current.action.value} on {host_state.host}: "
                f"RemediationPolicy {winner.name} escalates to {winner.action.value}.",
            ))
            v = verdicts[winner.name]
            decisions.append(_start(winner, host_state, v, "Escalated", v.message))
        elif owner is None:
            decisions.append(Decision(
                DecisionKind.End, current.policy, host_state.host, current.action, "PolicyDeleted",
                f"RemediationPolicy {current.policy} no longer exists, so its {current.action.value} on "
                f"{host_state.host} ends; the host returns to service.",
            ))
        else:
            decisions.append(_release(owner, host_state, current, now))
    elif due:
        winner = _strongest(due)
        v = verdicts[winner.name]
        decisions.append(_start(winner, host_state, v, v.reason, v.message))
    acting, acting_action, lost = "", RemediationAction.Quarantine, "Superseded"
    if winner is not None:
        acting, acting_action = winner.name, winner.action
    elif current is not None:
        acting, acting_action, lost = current.policy, current.action, "AlreadyRemediating"
    for policy in ordered:
        v = verdicts.get(policy.name)
        if v is None or policy is winner or (current is not None and policy.name == current.policy):
            continue
        if v.due:  # due, but another policy acts on the host (``acting`` is set whenever one is due)
            message = (
                f"RemediationPolicy {policy.name} ({policy.action.value}) does not act on {host_state.host}: "
                f"RemediationPolicy {acting} acts there with {acting_action.value}."
            )
            decisions.append(Decision(DecisionKind.Ignore, policy.name, host_state.host, policy.action, lost,
                                      message, v.signals, policy.priority_threshold))
        else:
            decisions.append(Decision(DecisionKind.Ignore, policy.name, host_state.host, policy.action, v.reason,
                                      v.message, v.signals, policy.priority_threshold, v.wait_until))
    rank = {DecisionKind.End: 0, DecisionKind.Start: 1, DecisionKind.Keep: 2, DecisionKind.Ignore: 3}
    return sorted(decisions, key=lambda d: (rank[d.kind], d.policy))
