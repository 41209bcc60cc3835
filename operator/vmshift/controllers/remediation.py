"""Remediation controller: RemediationPolicies act on hosts' health alerts; the Alertmanager receiver feeds them.

Thin: the decisions are ``remediation.decide`` over the alert book (``remediation.signals``); this
module gathers the inputs, applies the decisions (``Host.status.remediation``, which the Host's
supervisor writes with the rest of its status; events; the consumed release annotation) and keeps
each RemediationPolicy's status. It never moves a VM itself: an EvacuateCritical or Maintenance
remediation is a goal the drain pass (``drains``) of the same supervisor reads as decided, and
every action quarantines the host through the same field (the indexes read it as unschedulable).

Inputs: the agents' sensors (as the host controller last polled them) become alerts with the
labels alertname, host, severity, signal and source=agent; Alertmanager's alerts arrive through the
webhook receiver started here (``--webhook-port``). Both land in one :class:`AlertBook`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from vmshift import metrics
from vmshift.api import conditions as cond
from vmshift.api.host import AlertSource
from vmshift.api.remediationpolicy import RemediationAction
from vmshift.controllers import events, kubeapi
from vmshift.controllers.indexes import GROUP, HOSTS, REMEDIATION_POLICIES, VERSION, Store, host_index, ready, values
from vmshift.controllers.runtime import runtime, until_woken
from vmshift.controllers.views import HostEntry
from vmshift.remediation.alerts import Alert, host_signals_from_sensors
from vmshift.remediation.decide import Decision, DecisionKind, HostState, RemediationPolicyView, decide
from vmshift.remediation.signals import (
    AlertBook,
    Entry,
    last_ended_of,
    policy_view,
    remediation_of,
    seed_labels,
)
from vmshift.remediation.webhook import WebhookConfig, WebhookConfigError, load_token, serve
from vmshift.timestamps import rfc3339, unix_seconds

log = logging.getLogger("vmshift.remediation")

#: Longest sleep of a host's remediation pass when nothing is due sooner (events wake it earlier).
IDLE_SECONDS = 30.0
#: Alerts listed in status.remediation.alerts.
MAX_ALERT_REFS = 16
#: Unknown-host notices kept per policy until its daemon posts them.
MAX_NOTICES = 20


@dataclass(frozen=True)
class ActiveEntry:
    """A host some policy acts on (from the Host's status): what the policy's status lists."""

    host: str
    since: str | None
    alerts: tuple[str, ...]


@REMEDIATION_POLICIES.index
def remediation_policy_index(body: Mapping[str, Any]) -> dict[str, RemediationPolicyView]:
    name = body["metadata"]["name"]
    return {name: policy_view(name, body.get("spec") or {})}


@HOSTS.index
def remediation_by_policy(body: Mapping[str, Any]) -> dict[str, ActiveEntry]:
    """Hosts under a remediation, by the policy acting on them."""
    remediation = (body.get("status") or {}).get("remediation") or {}
    if not remediation.get("policy"):
        return {}
    names = tuple(sorted({str(a.get("alertname")) for a in remediation.get("alerts") or []}))
    return {remediation["policy"]: ActiveEntry(body["metadata"]["name"], remediation.get("since"), names)}


# --- the shared state: the alert book and the webhook's view of the fleet --------------------------


class Receiver:
    """The webhook's sink and the book every host's pass reads (one per operator process)."""

    def __init__(self, hosts: Store[HostEntry], policies: Store[RemediationPolicyView]) -> None:
        self.book = AlertBook()
        self.hosts = hosts
        self.policies = policies
        self.notices: dict[str, list[str]] = {}
        self.policy_wakers: dict[str, asyncio.Event] = {}

    def ready(self) -> bool:
        """Both caches hold their first listing (until then an alert could not be matched)."""
        return HOSTS.synced.is_set() and REMEDIATION_POLICIES.synced.is_set()

    def _policies(self) -> list[RemediationPolicyView]:
        return values(self.policies)

    def hosts_named(self, alert: Alert) -> list[str]:
        labels = {"host"} | {p.host_label for p in self._policies()}
        return sorted({alert.labels[k] for k in labels if alert.labels.get(k) and alert.labels[k] in self.hosts})

    def accept(self, host: str, alert: Alert) -> None:
        if self.book.record(host, alert, time.time()):
            self.wake_host(host)

    def unknown(self, alert: Alert) -> None:
        named = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k != "alertname") or "no labels"
        text = (f"Alert {alert.alertname or '(no alertname)'} ({alert.status}; {named}) names no known Host, so "
                f"nothing was done. Check the alert's host label (or the policy's match.hostLabel).")
        matched = [p for p in self._policies() if p.matches({**alert.labels, p.host_label: "?"}, "?")]
        if not matched:
            log.info("webhook: %s", text)
        for policy in matched:
            queue = self.notices.setdefault(policy.name, [])
            if len(queue) < MAX_NOTICES:
                queue.append(text)
            self.wake_policy(policy.name)

    def wake_host(self, host: str) -> None:
        runtime().wake_host(host)

    def wake_policy(self, policy: str) -> None:
        event = self.policy_wakers.get(policy)
        if event is not None:
            event.set()

    def wake_all_hosts(self) -> None:
        runtime().wake_all_hosts()


receiver = Receiver(host_index, remediation_policy_index)
_server: dict[str, web.AppRunner] = {}


@kopf.on.startup()
async def start_webhook(logger: kopf.Logger, **_: Any) -> None:
    """Serve Alertmanager's webhook when VMSHIFT_WEBHOOK_PORT is set (``--webhook-port``)."""
    port = int(os.environ.get("VMSHIFT_WEBHOOK_PORT") or 0)
    if not port:
        return
    try:
        token = load_token()
    except WebhookConfigError as exc:
        raise kopf.PermanentError(str(exc)) from None
    config = WebhookConfig(token=token, max_bytes=int(os.environ.get("VMSHIFT_WEBHOOK_MAX_BYTES") or 1024 * 1024))
    _server["runner"] = await serve(config, receiver, os.environ.get("VMSHIFT_WEBHOOK_ADDRESS", "0.0.0.0"), port)
    logger.info(f"Alertmanager webhook receiver on port {port}")


@kopf.on.cleanup()
async def stop_webhook(**_: Any) -> None:
    runner = _server.pop("runner", None)
    if runner is not None:
        await runner.cleanup()


@REMEDIATION_POLICIES.listen
def wake_remediation_on_policy_event(_type: str, body: Mapping[str, Any]) -> None:
    receiver.wake_all_hosts()
    receiver.wake_policy(body["metadata"]["name"])


@HOSTS.listen
def wake_policy_on_host_event(_type: str, body: Mapping[str, Any]) -> None:
    status = body.get("status") or {}
    for key in ("remediation", "lastRemediation"):
        policy = (status.get(key) or {}).get("policy")
        if policy:
            receiver.wake_policy(policy)


# --- a host's remediation -----------------------------------------------------------------------


def _ref(entry: Entry) -> dict[str, Any]:
    labels = entry.state.labels
    ref: dict[str, Any] = {"alertname": labels.get("alertname") or "(unnamed)",
                           "startsAt": rfc3339(entry.state.first_seen), "source": entry.source.value}
    if labels.get("severity"):
        ref["severity"] = labels["severity"]
    return ref


class HostRemediator:
    """One host's remediation: the status it last wrote, the events it last told, the decisions."""

    def __init__(self, host: str, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        self.host = host
        self.body = body
        self.remediation: dict[str, Any] | None = dict(status["remediation"]) if status.get("remediation") else None
        self.last: dict[str, Any] | None = dict(status["lastRemediation"]) if status.get("lastRemediation") else None
        self.last_ended: dict[str, float] = last_ended_of(self.last)
        self.told: dict[str, str] = {}
        self.exported: set[tuple[str, str, str, str]] = set()
        #: Status fields decided but not written yet: the Host's supervisor writes them in its patch.
        self.staged: dict[str, Any] = {}
        #: The agent report (its monotonic time) whose sensors the book last took.
        self.observed_report: float | None = None

    def seed(self, policies: Mapping[str, RemediationPolicyView]) -> None:
        """After a restart: the alerts behind the remediation in force count as firing until the
        agent's next report or Alertmanager says otherwise."""
        if self.remediation is None:
            return
        policy = policies.get(str(self.remediation.get("policy")))
        for alert in self.remediation.get("alerts") or []:
            source = AlertSource(alert.get("source") or AlertSource.Alertmanager)
            started = unix_seconds(alert.get("startsAt")) or time.time()
            receiver.book.seed(self.host, source, seed_labels(alert, self.host, policy), started)

    def observe_sensors(self, now: float) -> None:
        """Feed the agent's sensor alerts to the book, once per report: a report read again at a
        later pass would make an alert a person has just released fire again from readings taken
        before the release."""
        link = runtime().agents.get(self.host)
        if link is None or not link.reachable or link.info is None or link.reported_at == self.observed_report:
            return
        self.observed_report = link.reported_at
        alerts = host_signals_from_sensors(self.host, link.info.sensors, now=datetime.fromtimestamp(now, UTC))
        receiver.book.sensors(self.host, alerts, now)

    def export_alerts(self) -> None:
        """Firing alerts as the vmshift_host_alerts gauge (alertname, host, severity, source)."""
        active = {(self.host, e.state.labels.get("alertname", ""), e.state.labels.get("severity", ""),
                   e.source.value) for e in receiver.book.entries(self.host) if e.state.active}
        for labels in self.exported - active:
            with contextlib.suppress(KeyError):
                metrics.HOST_ALERTS.remove(*labels)
        for labels in active - self.exported:
            metrics.HOST_ALERTS.labels(*labels).set(1)
        self.exported = active

    async def run_pass(self, annotations: Mapping[str, str], policies: list[RemediationPolicyView]) -> float:
        """One pass; returns how long to sleep before the next unless woken."""
        now = time.time()
        self.observe_sensors(now)
        self.export_alerts()
        if not policies and self.remediation is None:
            return IDLE_SECONDS
        state = HostState(
            host=self.host,
            alerts=receiver.book.signals(self.host),
            remediation=remediation_of(self.remediation),
            last_ended=dict(self.last_ended),
            annotations=dict(annotations),
        )
        by_name = {p.name: p for p in policies}
        decisions = decide(policies, state, now)
        for decision in decisions:
            await self.apply(decision, by_name.get(decision.policy), now)
        waits = [d.wait_until - now for d in decisions if d.wait_until is not None]
        return min([IDLE_SECONDS, *waits]) if waits else IDLE_SECONDS

    def _alert_refs(self, policy: RemediationPolicyView | None, decision: Decision) -> list[dict[str, Any]]:
        names = set(decision.signals)
        refs = [
            _ref(e) for e in receiver.book.entries(self.host)
            if e.state.active and ((policy is not None and policy.matches(e.state.labels, self.host))
                                   or e.state.labels.get("alertname") in names
                                   or e.state.labels.get("signal") in names)
        ]
        return refs[:MAX_ALERT_REFS]

    async def apply(self, decision: Decision, policy: RemediationPolicyView | None, now: float) -> None:
        if decision.kind is DecisionKind.End:
            await self._end(decision, policy, now)
        elif decision.kind is DecisionKind.Start:
            await self._start(decision, policy, now)
        elif decision.kind is DecisionKind.Keep:
            await self._keep(decision, policy)
        elif self.told.get(decision.policy) != decision.reason:
            self.told[decision.policy] = decision.reason
            events.info(self.body, reason=f"Remediation{decision.reason}", message=decision.message)

    async def _start(self, decision: Decision, policy: RemediationPolicyView | None, now: float) -> None:
        remediation: dict[str, Any] = {
            "policy": decision.policy, "action": decision.action.value, "since": rfc3339(now),
            "alerts": self._alert_refs(policy, decision), "reason": decision.reason, "message": decision.message,
            "priorityThreshold": decision.priority_threshold
            if decision.action is RemediationAction.EvacuateCritical else None,
        }
        self.staged["remediation"] = remediation
        self.remediation = remediation
        self.told[decision.policy] = decision.reason
        events.warn(self.body, reason=f"Remediation{decision.reason}", message=decision.message)
        metrics.REMEDIATIONS.labels(policy=decision.policy, action=decision.action.value, decision="Start").inc()

    async def _keep(self, decision: Decision, policy: RemediationPolicyView | None) -> None:
        if self.remediation is None:
            return
        current = {**self.remediation, "reason": decision.reason, "message": decision.message}
        refs = self._alert_refs(policy, decision)
        if refs:
            current["alerts"] = refs
        if _comparable(current) != _comparable(self.remediation):
            self.staged["remediation"] = current
            self.remediation = current
        if self.told.get(decision.policy) != decision.reason:
            self.told[decision.policy] = decision.reason
            events.info(self.body, reason=f"Remediation{decision.reason}", message=decision.message)

    async def _end(self, decision: Decision, policy: RemediationPolicyView | None, now: float) -> None:
        since = (self.remediation or {}).get("since")
        last = {"policy": decision.policy, "action": decision.action.value, "since": since,
                "endedAt": rfc3339(now), "reason": decision.reason, "message": decision.message}
        self.staged.update({"remediation": None, "lastRemediation": last})
        self.remediation, self.last = None, last
        self.last_ended[decision.policy] = now
        self.told[decision.policy] = decision.reason
        events.info(self.body, reason=f"Remediation{decision.reason}", message=decision.message)
        metrics.REMEDIATIONS.labels(policy=decision.policy, action=decision.action.value, decision="End").inc()
        if decision.reason == "ReleasedByAnnotation":
            # A person says the hardware is fixed: the agent's alerts count as resolved until its next
            # report says otherwise, so the same policy does not start again at once from old readings.
            receiver.book.sensors(self.host, [], now)
        if decision.reason == "ReleasedByAnnotation" and policy is not None:
            # The release is consumed, so it cannot end the next remediation at once.
            await kubeapi.patch("hosts", None, self.host,
                                {"metadata": {"annotations": {policy.release_annotation: None}}})
            events.info(self.body, reason="RemediationReleaseConsumed",
                        message=f"Removed annotation {policy.release_annotation} from {self.host}: it released "
                                f"{decision.action.value} of RemediationPolicy {decision.policy}.")


def _comparable(remediation: Mapping[str, Any]) -> Any:
    """A remediation without the alerts' times (they do not warrant a patch on their own)."""
    alerts = sorted((a.get("alertname"), a.get("severity"), a.get("source")) for a in remediation.get("alerts") or [])
    return {**remediation, "alerts": alerts}


async def remediation_pass(remediator: HostRemediator, annotations: Mapping[str, str],
                           logger: kopf.Logger | logging.Logger) -> float:
    """One remediation pass of a Host's supervisor; returns how long until the next one unless woken."""
    try:
        return await remediator.run_pass(annotations, values(remediation_policy_index))
    except ApiException as exc:
        metrics.RECONCILE_ERRORS.labels(kind="Remediation").inc()
        logger.warning(f"remediation pass of {remediator.host} failed, retrying: {exc.status} {exc.reason}")
        return 2.0
    except Exception:  # a bug must not end the host's supervisor: log it and try again
        metrics.RECONCILE_ERRORS.labels(kind="Remediation").inc()
        logger.exception(f"remediation pass of {remediator.host} failed, retrying")
        return 5.0


def firing_from_alertmanager(host: str) -> tuple[str, ...]:
    """The alerts Alertmanager reports firing for ``host``, as "alertname (severity)", oldest first."""
    out = []
    for e in receiver.book.entries(host):
        if e.state.active and e.source is AlertSource.Alertmanager:
            labels = e.state.labels
            severity = labels.get("severity")
            out.append(f"{labels.get('alertname') or '(unnamed)'}" + (f" ({severity})" if severity else ""))
    return tuple(out)


def remediation_ended(remediator: HostRemediator) -> None:
    """The Host is gone: forget its alerts and their gauges."""
    receiver.book.forget_host(remediator.host)
    for labels in remediator.exported:
        with contextlib.suppress(KeyError):
            metrics.HOST_ALERTS.remove(*labels)


# --- a policy's status ----------------------------------------------------------------------------


def policy_status(name: str, spec: Mapping[str, Any], generation: int, previous: Mapping[str, Any],
                  active: list[ActiveEntry]) -> dict[str, Any]:
    """A RemediationPolicy's status from the hosts it acts on (pure)."""
    hosts = sorted(active, key=lambda a: a.host)
    triggered = [t for t in [previous.get("lastTriggeredAt"), *(a.since for a in hosts)] if t]
    last = max(triggered, key=lambda t: unix_seconds(t) or 0.0) if triggered else None
    if spec.get("suspend"):
        reason, message = "Suspended", f"RemediationPolicy {name} is suspended: it starts nothing."
    elif hosts:
        reason = "Acting"
        message = f"RemediationPolicy {name} acts on {len(hosts)} host(s): {', '.join(a.host for a in hosts[:10])}."
    else:
        reason, message = "Watching", f"RemediationPolicy {name} is accepted and acts on no host now."
    conditions = cond.ready(previous.get("conditions") or [], True, reason, message, observed_generation=generation)
    conditions = cond.reconciling(conditions, False, reason, message, observed_generation=generation)
    conditions = cond.stalled(conditions, False, reason, message, observed_generation=generation)
    return {
        "observedGeneration": generation,
        "active": [{"host": a.host, "since": a.since, "alerts": list(a.alerts)} for a in hosts],
        "lastTriggeredAt": last,
        "conditions": cond.dump(conditions),
    }


@kopf.daemon(GROUP, VERSION, "remediationpolicies", cancellation_backoff=5.0, cancellation_timeout=5.0)
async def report_policy(
    name: str, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
    stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any,
) -> None:
    """Keep the policy's status (hosts it acts on) and post its unknown-host notices as events."""
    await ready()
    woken = receiver.policy_wakers.setdefault(name, asyncio.Event())
    written: Any = None
    while not stopped:
        woken.clear()
        new = policy_status(name, spec, int(meta.get("generation") or 0), status,
                            list(remediation_by_policy.get(name) or []))
        try:
            if cond.without_timestamps(new) != written:
                await kubeapi.patch_status("remediationpolicies", None, name, new)
                written = cond.without_timestamps(new)
        except ApiException as exc:
            logger.warning(f"status of RemediationPolicy {name} not written: {exc.status} {exc.reason}")
        for text in receiver.notices.pop(name, []):
            events.warn(body, reason="UnknownHost", message=text)
        await until_woken(woken, stopped, IDLE_SECONDS)
    receiver.policy_wakers.pop(name, None)
