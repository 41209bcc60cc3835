"""The alert book (firing, resolving, sensors, seeds after a restart) and the spec/status conversions."""

from __future__ import annotations

from datetime import UTC, datetime

from vmshift.api.host import AlertSource
from vmshift.api.remediationpolicy import ReleaseMode, RemediationAction
from vmshift.hypervisor.protocol import FanStatus, Sensors
from vmshift.remediation.alerts import Alert, host_signals_from_sensors
from vmshift.remediation.decide import DecisionKind, HostState, decide
from vmshift.remediation.signals import (
    AlertBook,
    last_ended_of,
    policy_view,
    remediation_of,
    seed_labels,
)
from vmshift.timestamps import rfc3339, unix_seconds

T0 = datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def am(status: str, starts: float, ends: float | None = None, **labels: str) -> Alert:
    return Alert.model_validate({
        "status": status, "labels": {"alertname": "PsuLost", "host": "h1", **labels},
        "startsAt": datetime.fromtimestamp(starts, UTC).isoformat(),
        "endsAt": datetime.fromtimestamp(ends, UTC).isoformat() if ends else "0001-01-01T00:00:00Z",
    })


def test_firing_then_resolved_keeps_the_first_start() -> None:
    book = AlertBook()
    assert book.record("h1", am("firing", T0 - 30), T0)
    assert not book.record("h1", am("firing", T0 - 10), T0 + 5)  # a repeat changes nothing
    [signal] = book.signals("h1")
    assert signal.first_seen == T0 - 30 and signal.active
    assert book.record("h1", am("resolved", T0 - 30, T0 + 20), T0 + 25)
    [signal] = book.signals("h1")
    assert signal.resolved_at == T0 + 20 and signal.first_seen == T0 - 30


def test_times_from_the_future_are_clamped_to_now() -> None:
    book = AlertBook()
    book.record("h1", am("firing", T0 + 3600), T0)
    assert book.signals("h1")[0].first_seen == T0


def test_a_resolved_alert_never_seen_firing_is_kept_as_resolved() -> None:
    book = AlertBook()
    book.record("h1", am("resolved", T0 - 100, T0 - 50), T0)
    [signal] = book.signals("h1")
    assert (signal.first_seen, signal.resolved_at) == (T0 - 100, T0 - 50)


def test_sensor_alerts_start_and_resolve_with_the_readings() -> None:
    book = AlertBook()
    failed = Sensors.model_validate({"fans": [{"index": 0, "ok": False}, {"index": 1, "ok": True}],
                                     "powerSupplies": [], "temperatureC": 30, "correctedMemoryErrors": 0})
    healthy = failed.model_copy(update={"fans": [FanStatus(index=0, ok=True), FanStatus(index=1, ok=True)]})
    assert book.sensors("h1", host_signals_from_sensors("h1", failed), T0)
    assert not book.sensors("h1", host_signals_from_sensors("h1", failed), T0 + 2)
    [fan] = book.signals("h1")
    assert fan.labels["alertname"] == "FanFailure" and fan.labels["severity"] == "warning"
    assert fan.first_seen == T0 and fan.active
    assert book.sensors("h1", host_signals_from_sensors("h1", healthy), T0 + 9)
    assert book.signals("h1")[0].resolved_at == T0 + 9
    book.prune(T0 + 9 + 10, keep_resolved_seconds=5)
    assert book.signals("h1") == ()


def test_a_seed_after_a_restart_holds_an_alert_resolved_release() -> None:
    policy = policy_view("psu", {"match": {"alertname": "PsuLost", "labels": {"team": "hw"}},
                                 "action": "EvacuateCritical", "priorityThreshold": 100,
                                 "release": {"mode": "AlertResolved", "holdSeconds": 60}})
    status = {"policy": "psu", "action": "EvacuateCritical", "since": rfc3339(T0 - 3600),
              "alerts": [{"alertname": "PsuLost", "severity": "critical", "source": "Alertmanager"}]}
    remediation = remediation_of(status)
    assert remediation is not None and remediation.started_at == T0 - 3600
    forgetful = HostState("h1", (), remediation)
    assert decide([policy], forgetful, T0)[0].kind is DecisionKind.End  # what a restart would do unseeded
    book = AlertBook()
    book.seed("h1", AlertSource.Alertmanager, seed_labels(status["alerts"][0], "h1", policy), T0 - 3600)
    [keep] = decide([policy], HostState("h1", book.signals("h1"), remediation), T0)
    assert (keep.kind, keep.reason) == (DecisionKind.Keep, "AlertsFiring")


def test_policy_view_reads_the_spec_with_api_defaults() -> None:
    view = policy_view("p", {"match": {"severity": "critical", "hostLabel": "instance"}, "action": "Maintenance",
                             "correlation": {"signals": ["Fan", "HighTemperature"]}, "suspend": True,
                             "release": {"mode": "Annotation"}})
    assert view.action is RemediationAction.Maintenance and view.host_label == "instance"
    assert view.correlation is not None and view.correlation.signals == ("Fan", "HighTemperature")
    assert view.correlation.window_seconds == 300 and view.debounce_seconds == 60 and view.cooldown_seconds == 600
    assert view.release is ReleaseMode.Annotation and view.release_annotation == "vmshift.io/release-remediation"
    assert view.suspend


def test_times_round_trip_and_last_ended() -> None:
    assert unix_seconds(rfc3339(T0)) == T0
    assert unix_seconds("2030-01-01T00:00:00.250000Z") == T0 + 0.25
    assert unix_seconds(None) is None
    assert last_ended_of({"policy": "p", "endedAt": rfc3339(T0)}) == {"p": T0}
    assert last_ended_of(None) == {} and remediation_of({}) is None
