"""The alert book: every health signal about every host, with when it began and when it resolved. Pure: no I/O.

No clocks either: every call takes ``now`` (seconds since the epoch). The webhook receiver records
Alertmanager's alerts here (:meth:`AlertBook.record`); the remediation controller replaces a host's
sensor alerts after each agent report (:meth:`AlertBook.sensors`) and reads
:meth:`AlertBook.signals` to feed ``decide``. A remediation in force when the operator restarts is
seeded back (:meth:`AlertBook.seed`) from ``Host.status.remediation.alerts`` as still firing, so a
restart never ends an action only because the operator forgot why it started: sensor alerts
resolve at the next agent report if the hardware healed, Alertmanager's when it says so.

Also here: the conversions between RemediationPolicy specs and host status and ``decide``'s views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from vmshift.api.host import AlertSource
from vmshift.api.labels import RELEASE_ANNOTATION
from vmshift.api.remediationpolicy import ReleaseMode, RemediationAction
from vmshift.remediation.alerts import Alert, fingerprint
from vmshift.remediation.decide import CorrelationRule, Remediation, RemediationPolicyView, SignalState
from vmshift.timestamps import unix_seconds

#: Resolved alerts are forgotten this long after they resolved (longer than any holdSeconds).
FORGET_RESOLVED_SECONDS = 8 * 24 * 3600.0
#: At most this many alerts are kept per host; the oldest resolved go first.
MAX_ALERTS_PER_HOST = 512


@dataclass(frozen=True)
class Entry:
    """One alert about one host, as the book keeps it."""

    source: AlertSource
    fingerprint: str
    state: SignalState


class AlertBook:
    """Alerts per host, keyed by source and fingerprint (the same labels are the same alert)."""

    def __init__(self, *, max_per_host: int = MAX_ALERTS_PER_HOST) -> None:
        self._hosts: dict[str, dict[tuple[AlertSource, str], Entry]] = {}
        self._max = max_per_host

    def record(self, host: str, alert: Alert, now: float) -> bool:
        """Record one Alertmanager alert about ``host``; True when it changed what the book knows.

        A firing alert starts at its ``startsAt`` (when that is in the past) or at ``now``; seen
        again, it keeps its start. A resolved alert resolves at its ``endsAt`` (not later than
        ``now``), or at ``now``.
        """
        book = self._hosts.setdefault(host, {})
        fp = alert.fingerprint or fingerprint(alert.labels)
        key = (AlertSource.Alertmanager, fp)
        old = book.get(key)
        labels = dict(alert.labels)
        if alert.firing:
            if old is not None and old.state.active:
                return False
            started = _clamp(alert.starts_at.timestamp(), now)
            book[key] = Entry(AlertSource.Alertmanager, fp, SignalState(labels, started, None))
        else:
            ended = _clamp(alert.ends_at.timestamp(), now) if alert.ends_at is not None else now
            if old is not None and not old.state.active:
                return False
            first = old.state.first_seen if old is not None else _clamp(alert.starts_at.timestamp(), ended)
            book[key] = Entry(AlertSource.Alertmanager, fp, SignalState(labels, first, max(ended, first)))
        self._trim(host)
        return True

    def sensors(self, host: str, alerts: Iterable[Alert], now: float) -> bool:
        """Replace ``host``'s sensor alerts by ``alerts`` (those firing now); True when anything changed.

        New ones start at ``now``; ones that stopped firing resolve at ``now``; the rest keep their start.
        """
        book = self._hosts.setdefault(host, {})
        firing = {}
        for alert in alerts:
            fp = alert.fingerprint or fingerprint(alert.labels)
            firing[fp] = alert
        changed = False
        for (source, fp), entry in list(book.items()):
            if source is AlertSource.Agent and entry.state.active and fp not in firing:
                book[(source, fp)] = replace(entry, state=replace(entry.state, resolved_at=now))
                changed = True
        for fp, alert in firing.items():
            old = book.get((AlertSource.Agent, fp))
            if old is None or not old.state.active:
                book[(AlertSource.Agent, fp)] = Entry(AlertSource.Agent, fp, SignalState(dict(alert.labels), now))
                changed = True
        self._trim(host)
        return changed

    def seed(self, host: str, source: AlertSource, labels: Mapping[str, str], first_seen: float) -> None:
        """An alert known from the Host's status (after a restart): firing until told otherwise."""
        book = self._hosts.setdefault(host, {})
        fp = fingerprint(labels)
        if not any(e.state.active and e.state.labels.get("alertname") == labels.get("alertname")
                   and e.source is source for e in book.values()):
            book[(source, fp)] = Entry(source, fp, SignalState(dict(labels), first_seen))

    def entries(self, host: str) -> list[Entry]:
        return sorted(self._hosts.get(host, {}).values(), key=lambda e: (e.state.first_seen, e.fingerprint))

    def signals(self, host: str) -> tuple[SignalState, ...]:
        """Every alert about ``host``, oldest first: what ``decide`` reads."""
        return tuple(e.state for e in self.entries(host))

    def forget_host(self, host: str) -> None:
        self._hosts.pop(host, None)

    def prune(self, now: float, *, keep_resolved_seconds: float = FORGET_RESOLVED_SECONDS) -> None:
        """Forget alerts resolved longer ago than ``keep_resolved_seconds``."""
        for host, book in list(self._hosts.items()):
            for key, entry in list(book.items()):
                resolved = entry.state.resolved_at
                if resolved is not None and now - resolved > keep_resolved_seconds:
                    del book[key]
            if not book:
                del self._hosts[host]

    def _trim(self, host: str) -> None:
        book = self._hosts[host]
        if len(book) <= self._max:
            return
        resolved = sorted((e.state.resolved_at or 0.0, key) for key, e in book.items() if not e.state.active)
        for _, key in resolved[: len(book) - self._max]:
            del book[key]


def _clamp(when: float, now: float) -> float:
    """A time from a payload, never in the future."""
    return min(when, now)


# --- conversions -----------------------------------------------------------------------------------


def policy_view(name: str, spec: Mapping[str, Any]) -> RemediationPolicyView:
    """A RemediationPolicy's spec as ``decide`` sees it (API defaults where a field is absent)."""
    match = spec.get("match") or {}
    release = spec.get("release") or {}
    correlation = spec.get("correlation")
    threshold = spec.get("priorityThreshold")
    return RemediationPolicyView(
        name=name,
        action=RemediationAction(spec.get("action", RemediationAction.Quarantine)),
        alertname=match.get("alertname"),
        severity=match.get("severity"),
        labels=dict(match.get("labels") or {}),
        host_label=match.get("hostLabel") or "host",
        priority_threshold=int(threshold) if threshold is not None else None,
        correlation=CorrelationRule(tuple(correlation.get("signals") or ()),
                                    float(correlation.get("windowSeconds", 300))) if correlation else None,
        debounce_seconds=float(spec.get("debounceSeconds", 60)),
        cooldown_seconds=float(spec.get("cooldownSeconds", 600)),
        release=ReleaseMode(release.get("mode", ReleaseMode.AlertResolved)),
        hold_seconds=float(release.get("holdSeconds", 300)),
        release_annotation=release.get("annotation") or RELEASE_ANNOTATION,
        suspend=bool(spec.get("suspend", False)),
    )


def remediation_of(status: Mapping[str, Any] | None) -> Remediation | None:
    """The remediation acting on a host, from ``Host.status.remediation``."""
    if not status or not status.get("action") or not status.get("policy"):
        return None
    return Remediation(policy=str(status["policy"]), action=RemediationAction(status["action"]),
                       started_at=unix_seconds(status.get("since")) or 0.0)


def last_ended_of(status: Mapping[str, Any] | None) -> dict[str, float]:
    """Policy -> when its last remediation on the host ended, from ``Host.status.lastRemediation``."""
    if not status or not status.get("policy"):
        return {}
    ended = unix_seconds(status.get("endedAt"))
    return {str(status["policy"]): ended} if ended is not None else {}


def seed_labels(alert: Mapping[str, Any], host: str, policy: RemediationPolicyView | None) -> dict[str, str]:
    """Labels for an alert known only from ``status.remediation.alerts`` (name, severity): enough for
    the policy that started the remediation to match it again."""
    labels = {"alertname": str(alert.get("alertname", "")), "host": host}
    if alert.get("severity"):
        labels["severity"] = str(alert["severity"])
    if policy is not None:
        labels[policy.host_label] = host
        labels.update(policy.labels)
        if policy.severity and "severity" not in labels:
            labels["severity"] = policy.severity
    return labels
